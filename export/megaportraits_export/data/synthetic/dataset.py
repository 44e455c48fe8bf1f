"""The torch dataset of synthetic training pairs, and the split of identities into train and eval."""
from __future__ import annotations

import functools

import numpy as np
import torch

from megaportraits_export.data.synthetic.parameters import EVAL_IDENTITY_SEED_OFFSET, HeadMotion, Identity
from megaportraits_export.data.synthetic.rendering import render


def identity_seeds(split: str, count: int) -> list[int]:
    """Seeds of the ``count`` identities of ``split`` ("train" or "eval"); the two never meet."""
    if split == "train":
        if count > EVAL_IDENTITY_SEED_OFFSET:
            raise ValueError(f"at most {EVAL_IDENTITY_SEED_OFFSET} training identities; got {count}")
        return list(range(count))
    if split == "eval":
        return list(range(EVAL_IDENTITY_SEED_OFFSET, EVAL_IDENTITY_SEED_OFFSET + count))
    raise ValueError(f"split must be 'train' or 'eval', got {split!r}")


@functools.lru_cache(maxsize=100_000)
def _identity(seed: int) -> Identity:
    return Identity.sample(seed)


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


class SyntheticTalkingHeads(torch.utils.data.Dataset):
    """Training pairs rendered on the fly, the same items as the real-video datasets plus the
    ground truth behind them.

    Item ``index`` is deterministic (seeded by ``(seed, index)``): identity ``index % num_identities``
    gives ``source`` and ``driver`` (two independent random motions), another identity gives the
    cross pair ``source2``/``driver2`` for the cycle loss. Images are float32 (3, size, size) in
    [0, 1]. ``driver_input``/``driver2_input`` are what the motion encoder should see: the
    driver after the driver-only augmentation (equal to ``driver`` without augmentation); the
    reconstruction target stays ``driver``. ``*_mask`` (1, size, size) in [0, 1] are the
    foreground masks of ``source``/``driver``/... (the paper computes its losses on the
    foreground). ``*_pose_params`` are (scale, yaw, pitch, roll, tx,
    ty, tz) of the model's theta (:meth:`Pose.model_parameters`), ``*_expression_params`` follow :data:`EXPRESSION_PARAMETER_NAMES`; both describe the
    images as returned (a flip mirrors them too).
    """

    def __init__(
        self,
        num_identities: int,
        size: int = 128,
        seed: int = 0,
        split: str = "train",
        length: int | None = None,
        augmentation=None,
    ):
        if num_identities < 2:
            raise ValueError(f"need at least 2 identities for the cross pair, got {num_identities}")
        self.identity_seeds = identity_seeds(split, num_identities)
        self.size = size
        self.seed = seed
        self.split = split
        self.length = length if length is not None else num_identities * 100
        self.augmentation = augmentation

    def __len__(self) -> int:
        return self.length

    def _pair(self, identity: Identity, rng: np.random.Generator, prefix: str, second: str) -> dict:
        source_motion, driver_motion = HeadMotion.random(rng), HeadMotion.random(rng)
        source, source_mask = render(identity, source_motion.pose, source_motion.expression, self.size, True)
        driver, driver_mask = render(identity, driver_motion.pose, driver_motion.expression, self.size, True)
        source_t, driver_t = _to_tensor(source), _to_tensor(driver)
        source_mask_t, driver_mask_t = _to_tensor(source_mask[..., None]), _to_tensor(driver_mask[..., None])
        driver_input_t, flipped = driver_t, False
        if self.augmentation is not None:
            source_t, driver_t, driver_input_t, flipped = self.augmentation(source_t, driver_t, rng)
        if flipped:
            source_motion, driver_motion = source_motion.mirrored(), driver_motion.mirrored()
            source_mask_t, driver_mask_t = source_mask_t.flip(-1), driver_mask_t.flip(-1)
        return {
            prefix: source_t,
            second: driver_t,
            f"{second}_input": driver_input_t,
            f"{prefix}_mask": source_mask_t,
            f"{second}_mask": driver_mask_t,
            f"{prefix}_pose_params": torch.from_numpy(source_motion.pose.model_parameters()),
            f"{second}_pose_params": torch.from_numpy(driver_motion.pose.model_parameters()),
            f"{prefix}_expression_params": torch.from_numpy(source_motion.expression.as_array()),
            f"{second}_expression_params": torch.from_numpy(driver_motion.expression.as_array()),
        }

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        rng = np.random.default_rng([self.seed, index])
        first = index % len(self.identity_seeds)
        other = (first + 1 + int(rng.integers(len(self.identity_seeds) - 1))) % len(self.identity_seeds)
        item = self._pair(_identity(self.identity_seeds[first]), rng, "source", "driver")
        item.update(self._pair(_identity(self.identity_seeds[other]), rng, "source2", "driver2"))
        item["identity"] = torch.tensor(self.identity_seeds[first])
        item["identity2"] = torch.tensor(self.identity_seeds[other])
        return item
