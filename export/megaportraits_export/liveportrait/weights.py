"""Loading LivePortrait's published ``.pth`` files into our modules, key by key.

Their files are plain state dicts (the stitching file: three of them, with a DDP ``module.``
prefix). Our modules keep their attribute names, so almost every key loads as it is; the
exceptions are the SPADE decoder's spectral-norm convolutions, stored as ``weight_orig`` with
the power-iteration vectors ``weight_u`` and ``weight_v``. In evaluation spectral norm does no
further iteration: the weight is ``weight_orig / sigma`` with ``sigma = u . (W v)``, W the
original weight flattened to (out, in * k * k). We fold that once here, so the exported graph
holds plain convolutions.

Every key of every file is accounted for: loaded as is, folded, or refused. A file with a key
we do not know, or lacking one we need, is refused with the names, never loaded partially.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .appearance import AppearanceFeatureExtractor
from .config import RETARGETING_ENTRIES, WEIGHT_FILES, LivePortraitConfig
from .motion_extractor import MotionExtractor
from .spade_decoder import SPADEDecoder
from .stitching import StitchingRetargetingNetwork
from .warping import WarpingNetwork

SPECTRAL_SUFFIXES = ("weight_orig", "weight_u", "weight_v")
DDP_PREFIX = "module."


class WeightsError(ValueError):
    """A LivePortrait weights directory or file is missing, unreadable or of another layout."""


class LivePortraitNetworks(nn.Module):
    """The five networks of LivePortrait's inference (plus the two retargeting MLPs)."""

    def __init__(self, config: LivePortraitConfig = LivePortraitConfig()):
        super().__init__()
        self.config = config
        self.appearance_feature_extractor = AppearanceFeatureExtractor(config)
        self.motion_extractor = MotionExtractor(config)
        self.warping_module = WarpingNetwork(config)
        self.spade_generator = SPADEDecoder(config)
        self.stitching = StitchingRetargetingNetwork(config.stitching)
        self.lip = StitchingRetargetingNetwork(config.lip)
        self.eye = StitchingRetargetingNetwork(config.eye)

    def network(self, name: str) -> nn.Module:
        return getattr(self, name)


# Which of our modules each published state dict fills: (file key, entry in the file or None).
STATE_DICTS = {
    "appearance_feature_extractor": ("appearance_feature_extractor", None),
    "motion_extractor": ("motion_extractor", None),
    "warping_module": ("warping_module", None),
    "spade_generator": ("spade_generator", None),
    **{name: ("stitching_retargeting_module", entry) for name, entry in RETARGETING_ENTRIES.items()},
}


@dataclass
class KeyReport:
    """How the keys of one published state dict were used."""

    network: str
    loaded: list = field(default_factory=list)   # keys taken as they are
    folded: list = field(default_factory=list)   # spectral-norm keys folded into plain weights
    renamed: list = field(default_factory=list)  # keys whose DDP prefix was stripped

    @property
    def total(self) -> int:
        return len(self.loaded) + len(self.folded)

    def summary(self) -> str:
        return (f"{self.network}: {self.total} keys, {len(self.loaded)} loaded as they are, "
                f"{len(self.folded)} spectral-norm keys folded into {len(self.folded) // 3} weights")


def fold_spectral_norm(weight_orig: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The weight spectral norm uses at inference: W / (u . (W_mat v))."""
    matrix = weight_orig.reshape(weight_orig.shape[0], -1).double()
    sigma = torch.dot(u.double(), matrix @ v.double())
    return (weight_orig.double() / sigma).to(weight_orig.dtype)


def convert_state_dict(network: str, state: dict) -> tuple[dict, KeyReport]:
    """One published state dict -> our module's state dict, and how each key was used."""
    report = KeyReport(network)
    out = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(f"{network}: entry {key!r} is not a named tensor; is this a LivePortrait state dict?")
        name = key
        if name.startswith(DDP_PREFIX):
            name = name[len(DDP_PREFIX):]
            report.renamed.append(key)
        stem, _, leaf = name.rpartition(".")
        if leaf in SPECTRAL_SUFFIXES:
            report.folded.append(key)
            if leaf == "weight_orig":
                try:
                    u, v = (state[key[:-len("orig")] + s] for s in ("u", "v"))
                except KeyError:
                    raise WeightsError(f"{network}: {key} has no weight_u/weight_v beside it") from None
                out[f"{stem}.weight"] = fold_spectral_norm(value, u, v)
            continue
        report.loaded.append(key)
        out[name] = value
    return out, report


def load_into(module: nn.Module, network: str, state: dict) -> KeyReport:
    """Load one published state dict into ``module`` strictly (every key, every shape)."""
    converted, report = convert_state_dict(network, state)
    expected = module.state_dict()
    unknown = sorted(set(converted) - set(expected))
    missing = sorted(set(expected) - set(converted))
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} unknown key(s) (first: {', '.join(unknown[:3])})")
        if missing:
            parts.append(f"{len(missing)} missing key(s) (first: {', '.join(missing[:3])})")
        raise WeightsError(f"{network}: the state dict does not match LivePortrait's layout: {'; '.join(parts)}")
    for name, value in converted.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise WeightsError(f"{network}: {name} has shape {tuple(value.shape)}, the network needs "
                               f"{tuple(expected[name].shape)}; is this another model size?")
    module.load_state_dict(converted, strict=True)
    return report


def read_weight_file(path: Path) -> dict:
    """torch.load a published file (tensors only: ``weights_only``, nothing executed)."""
    if not path.is_file():
        raise WeightsError(f"{path} is missing; --weights must be LivePortrait's pretrained_weights/liveportrait "
                           f"directory (with {', '.join(sorted(set(WEIGHT_FILES.values())))})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path} is not a readable PyTorch weights file ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:160]})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def load_networks(weights_dir: str | os.PathLike, config: LivePortraitConfig = LivePortraitConfig(),
                  progress=None) -> tuple[LivePortraitNetworks, list[KeyReport]]:
    """Build the networks and fill them from a weights directory laid out as published."""
    weights_dir = Path(weights_dir)
    if not weights_dir.is_dir():
        raise WeightsError(f"--weights {weights_dir} is not a directory")
    networks = LivePortraitNetworks(config).eval()
    files = {}
    reports = []
    for network, (file_key, entry) in STATE_DICTS.items():
        if file_key not in files:
            if progress:
                progress(f"reading {WEIGHT_FILES[file_key]}")
            files[file_key] = read_weight_file(weights_dir / WEIGHT_FILES[file_key])
        state = files[file_key]
        if entry is not None:
            if entry not in state or not isinstance(state[entry], dict):
                raise WeightsError(f"{weights_dir / WEIGHT_FILES[file_key]} has no {entry!r} state dict "
                                   f"(it has: {', '.join(map(str, state))})")
            state = state[entry]
        reports.append(load_into(networks.network(network), network, state))
    if "stitching_retargeting_module" in files:
        extra = sorted(set(files["stitching_retargeting_module"]) - set(RETARGETING_ENTRIES.values()))
        if extra:
            raise WeightsError(f"{WEIGHT_FILES['stitching_retargeting_module']} has unknown entries: {', '.join(extra)}")
    return networks, reports
