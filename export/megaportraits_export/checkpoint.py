"""Training checkpoints: the one format that training writes and export (and evaluation) read.

A checkpoint is self-describing, so a model can be rebuilt from it without knowing how it was
trained. Two containers hold the same three parts:

* ``*.safetensors``: the tensors are the model's ``state_dict``; the file's metadata holds
  ``format`` = ``"megaportraits-checkpoint"``, ``format_version`` = ``"1"``, and ``config`` and
  ``provenance`` as JSON strings.
* any other name (``*.pt``): a ``torch.save`` dict loadable with ``torch.load(weights_only=True)``::

      {"format": "megaportraits-checkpoint", "format_version": 1,
       "config": {"preset": "small256", **ModelConfig.to_dict()},
       "model": MegaPortraits.state_dict(),
       "provenance": {"data": ..., "steps": ..., "metrics": {...}, ...},
       ...}                                  # other keys (optimizer state, ...) are ignored here

``config`` is the preset name plus every field of ``ModelConfig`` (``ModelConfig.to_dict``); fields
missing from an older checkpoint take the preset's values (``matte``, added later: False). ``provenance`` is free-form JSON that says where the weights
came from (data set, steps, metrics); the exporter copies it into the bundle's manifest.
``model`` is the plain ``state_dict`` of :class:`megaportraits_export.model.MegaPortraits`
(not of a DDP or EMA wrapper), loaded strictly.

:func:`save_checkpoint` writes this format; :func:`load_model_from_checkpoint` reads it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

FORMAT = "megaportraits-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The file is not a megaportraits checkpoint this version can read."""


def save_checkpoint(path: str | os.PathLike,
                    model: torch.nn.Module,
                    config,
                    preset: str,
                    provenance: dict,
                    extra: dict | None = None) -> Path:
    """Write ``model``'s weights with its configuration and provenance (see the module doc).

    ``extra`` (optimizer state, step counters, ...) is kept in ``.pt`` checkpoints only.
    """
    path = Path(path)
    config_dict = {"preset": preset, **config.to_dict()}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    json.dumps(provenance)  # provenance goes into a JSON manifest: fail here, not at export time
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                    "config": json.dumps(config_dict), "provenance": json.dumps(provenance)}
        save_file(state, str(tmp), metadata=metadata)
    else:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "config": config_dict,
                    "model": state, "provenance": provenance, **(extra or {})}, tmp)
    os.replace(tmp, path)
    return path


def load_model_from_checkpoint(path: str | os.PathLike):
    """Rebuild the model a checkpoint holds: ``(model in eval mode, ModelConfig, provenance)``.

    The returned provenance is the checkpoint's own, plus ``preset`` and ``checkpoint`` (the
    file's name and sha256), so a bundle can say exactly which weights it was made from.
    """
    from megaportraits.manifest import sha256_file
    from megaportraits_export.model import build_model

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    config_dict, state, provenance = _read(path)
    preset, config = _config_from_dict(config_dict, path)
    model = build_model(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # missing, unexpected or differently shaped weights
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:3])
        raise CheckpointError(
            f"checkpoint {path.name} does not fit the {preset!r} architecture ({detail} ...); "
            "was it written by another version of megaportraits_export?") from None
    provenance = {**provenance, "preset": preset,
                  "checkpoint": {"file": path.name, "sha256": sha256_file(path)}}
    return model.eval(), config, provenance


def _read(path: Path) -> tuple[dict, dict, dict]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        _check_format(metadata.get("format"), metadata.get("format_version"), path)
        try:
            config, provenance = json.loads(metadata["config"]), json.loads(metadata.get("provenance", "{}"))
        except (KeyError, json.JSONDecodeError) as e:
            raise CheckpointError(f"checkpoint {path.name}: metadata 'config'/'provenance' is not valid JSON ({e})") from None
        return config, load_file(str(path)), provenance
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and unsafe-type errors all mean "not our format"
        raise CheckpointError(f"{path.name} cannot be read as a torch checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path.name} holds a {type(ckpt).__name__}, not a megaportraits checkpoint dict")
    _check_format(ckpt.get("format"), ckpt.get("format_version"), path)
    for key in ("config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path.name} lacks its {key!r} entry")
    return ckpt["config"], ckpt["model"], dict(ckpt.get("provenance") or {})


def _check_format(fmt, version, path: Path) -> None:
    if fmt != FORMAT:
        raise CheckpointError(f"{path.name} is not a megaportraits checkpoint (format {fmt!r}); "
                              "write checkpoints with megaportraits_export.checkpoint.save_checkpoint")
    if version is None or int(version) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path.name} has format version {version}; this version reads "
                              f"up to {FORMAT_VERSION}: upgrade megaportraits_export")


def _config_from_dict(config_dict: dict, path: Path):
    from megaportraits_export.config import PRESETS, ModelConfig

    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    values = {k: v for k, v in config_dict.items() if k != "preset"}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise CheckpointError(f"checkpoint {path.name} config has unknown field(s) {', '.join(unknown)}; "
                              "it was written by a newer megaportraits_export")
    preset = config_dict.get("preset") or values.get("name") or "custom"
    base = PRESETS[preset].to_dict() if preset in PRESETS else {}
    base["matte"] = False  # added later than the rest: a checkpoint without the field has no matte
    try:
        return preset, ModelConfig.from_dict({**base, **values})
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path.name}: its {preset!r} config is incomplete or invalid ({e})") from None


def initialise_from_checkpoint(model: torch.nn.Module, path: str | os.PathLike) -> dict:
    """Start ``model`` from the weights of another run (fine-tuning), not an exact resume.

    The architectures may differ where a fine-tuning changes them: a weight of the same shape is
    copied; a weight whose output channels (dimension 0) grew, such as G2D's last conv when a
    matte channel is added, gets the old channels copied and keeps its fresh initialisation for
    the new ones; anything else keeps its initialisation. Returns what was done (for the
    provenance and the log): ``{"checkpoint", "sha256", "provenance", "copied", "grown", "kept"}``.
    """
    from megaportraits.manifest import sha256_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"init_from checkpoint {str(path)!r} does not exist; train the run it comes from "
                              "first, or point [model] init_from at its model_*.pt (relative to the working directory)")
    _, old, provenance = _read(path)
    copied, grown, kept = 0, [], []
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            source = old.get(name)
            if source is not None and source.shape == tensor.shape:
                tensor.copy_(source)
                copied += 1
            elif (source is not None and source.dim() == tensor.dim() and source.shape[1:] == tensor.shape[1:]
                  and source.shape[0] < tensor.shape[0]):
                tensor[:source.shape[0]].copy_(source)
                grown.append(name)
            else:
                kept.append(name)
    if not copied:
        raise CheckpointError(f"init_from checkpoint {path.name} shares no weights with this model; "
                              "fine-tune from a checkpoint of the same preset")
    return {"checkpoint": path.name, "sha256": sha256_file(path), "provenance": provenance,
            "copied": copied, "grown": grown, "kept": kept}
