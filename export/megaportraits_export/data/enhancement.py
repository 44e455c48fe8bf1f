"""Super-resolution pairs for the enhancer: a high-resolution portrait and the same at half its side.

Two sources, one item layout:

- :class:`SyntheticEnhancementPairs`: the synthetic renderer drawn at twice the base size (its
  ground truth at 2x) with the person's mask, plus a cross-driving pair at the base size (a
  source and another identity's driver) for the unsupervised branch;
- :class:`PortraitFolderPairs`: every image under a folder of high-resolution portraits (FFHQ's
  layout, ``images1024x1024/00000/00000.png``, or any tree of .png/.jpg), resized to twice the
  base size; no masks, and cross-driving pairs of two different portraits at the base size.

Items: ``high`` (C, 2S, 2S) and ``low`` (C, S, S) float32 in [0, 1], ``low`` the box-filter
(area) downsample of ``high``; C is 3, or 4 with the mask as a 4th channel (``with_mask``, a
matte model's enhancer). ``cross_source`` / ``cross_driver`` (3, S, S): what the frozen base
model renders a reenacted frame from. In the synthetic pairs the driver performs the motion of
``high`` (half the items the person themself, half another identity), so ``cross_target`` (C, 2S,
2S), ``high`` itself, is the exact truth at 2x of the base model's rendering: supervised pairs
(base output -> truth at 2x) that real video cannot give (the paper's cross-driving branch has no
truth); ``backdrop`` (3, 2S, 2S) is the person's backdrop alone, what a matte frame is shown over. Portrait folders have no such truth and no ``cross_target``.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from megaportraits_export.data.synthetic.dataset import _identity, identity_seeds
from megaportraits_export.data.synthetic.parameters import HeadMotion
from megaportraits_export.data.synthetic.rendering import render, render_backdrop

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) uint8 -> (C, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


def half(image: torch.Tensor) -> torch.Tensor:
    """The box-filter 2x downsample of (C, H, W): the low-resolution half of a pair."""
    return torch.nn.functional.avg_pool2d(image[None], 2)[0]


class SyntheticEnhancementPairs(torch.utils.data.Dataset):
    """Synthetic heads at 2x the base size (see the module docstring); item ``index`` is deterministic."""

    def __init__(self, num_identities: int, base_size: int, seed: int = 0, split: str = "train",
                 with_mask: bool = False, length: int | None = None):
        if num_identities < 2:
            raise ValueError(f"need at least 2 identities for the cross-driving pairs, got {num_identities}")
        self.identity_seeds = identity_seeds(split, num_identities)
        self.base_size = base_size
        self.seed = seed
        self.with_mask = with_mask
        self.length = length if length is not None else num_identities * 100

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        rng = np.random.default_rng([self.seed, index, 0xE2])
        first = index % len(self.identity_seeds)
        other = (first + 1 + int(rng.integers(len(self.identity_seeds) - 1))) % len(self.identity_seeds)
        person, stranger = _identity(self.identity_seeds[first]), _identity(self.identity_seeds[other])
        motion = HeadMotion.random(rng)
        image, mask = render(person, motion.pose, motion.expression, 2 * self.base_size, True)
        high = _tensor(np.concatenate([image, mask[..., None]], axis=2) if self.with_mask else image)
        source_motion = HeadMotion.random(rng)
        driver = person if rng.random() < 0.5 else stranger   # self- or cross-reenactment, same truth
        return {
            "high": high,
            "low": half(high),
            "cross_source": _tensor(render(person, source_motion.pose, source_motion.expression, self.base_size)),
            "cross_driver": _tensor(render(driver, motion.pose, motion.expression, self.base_size)),
            "cross_target": high,
            "backdrop": _tensor(render_backdrop(person, 2 * self.base_size)),
        }


def find_portraits(root: str | Path) -> list[Path]:
    """Every image file under ``root``, sorted (FFHQ's numbered folders keep their order)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"portrait folder {str(root)!r} does not exist; give [data] root = a folder of images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(files) < 2:
        raise ValueError(f"portrait folder {str(root)!r} holds {len(files)} image(s) (.png/.jpg/.webp); "
                         "it needs at least 2")
    return files


class PortraitFolderPairs(torch.utils.data.Dataset):
    """High-resolution photos from a folder (see the module docstring); RGB only."""

    def __init__(self, root: str | Path, base_size: int, seed: int = 0):
        self.files = find_portraits(root)
        self.base_size = base_size
        self.seed = seed

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, path: Path, side: int) -> torch.Tensor:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read the image {str(path)!r}; remove it from the portrait folder")
        image = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (side, side), interpolation=cv2.INTER_AREA)
        return _tensor(image)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index, 0xE2])
        high = self._read(self.files[index], 2 * self.base_size)
        other = (index + 1 + int(rng.integers(len(self.files) - 1))) % len(self.files)
        return {"high": high, "low": half(high),
                "cross_source": half(high),
                "cross_driver": self._read(self.files[other], self.base_size)}
