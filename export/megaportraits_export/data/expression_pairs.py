"""Where a face's expression shows, and training pairs that say so.

Why: on the synthetic heads the eyes, brows and mouth cover a few per cent of the image, so a
whole-image pixel loss barely notices whether the driver's expression was carried over (the
bundled demo model learned to render a smooth face whatever the expression code said). The
renderer can show one person with one pose and *another* expression, which gives, per pair, the
exact pixels that the expression changes:

- :func:`expression_region`: the pixels where two renderings of the same person with the same
  pose but different expressions differ (slightly dilated: a feature that lands a pixel off
  still counts as the feature);
- :func:`face_feature_region`: the pixels of one rendering's eyes, brows, mouth, nose and
  glasses (where it differs from the same head drawn without them), so that features can be
  learnt in every self-reconstruction, not only where two expressions differ;
- :func:`strong_expression`: a clearly visible expression (open mouth, closed eyes, raised
  brows, a smile), what the expression evaluation drives neutral sources with;
- :class:`ExpressionPairHeads`: self-reenactment pairs like ``SyntheticTalkingHeads`` plus
  ``driver_expression_region``, the region where the driver's expression differs from the
  source's, seen in the driver's pose (:mod:`megaportraits_export.losses.region` weighs the
  reconstruction there), and ``driver_feature_region``, the driver's face features. Half the
  drivers (``strong_fraction``) show a strong expression to a mild source, so the expression
  path has something to carry in most batches.

Both the training set and the evaluation (:mod:`megaportraits_export.expression_eval`) derive
their regions with the same function, so "the expression region" means one thing.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np
import torch

from .synthetic import Expression, HeadMotion, Identity, identity_seeds, render
from .synthetic.correspondence import skull_correspondence

REGION_THRESHOLD = 8
"""Two uint8 renderings differ at a pixel when a channel differs by more than this (of 255):
above the renderer's anti-aliasing noise, below any feature's contrast."""

REGION_DILATION_PX = 1
"""Pixels the region grows by at 128 px (scaled with the image size)."""

STRONG_EXPRESSIONS = ("mouth_open", "eyes_closed", "brows_raised", "smile")
"""The kinds of :func:`strong_expression`, one per moving part of the face."""

_STREAM = 0xE4E5  # the item RNG's stream: other pairs than SyntheticTalkingHeads' for the same seed


def expression_region(image: np.ndarray, other: np.ndarray) -> np.ndarray:
    """(H, W) bool: where two (H, W, 3) uint8 renderings differ, dilated by
    :data:`REGION_DILATION_PX` (scaled to the image size)."""
    if image.shape != other.shape or image.ndim != 3:
        raise ValueError(f"expression_region needs two (H, W, 3) images of one shape, got {image.shape} and {other.shape}")
    differs = (np.abs(image.astype(np.int16) - other.astype(np.int16)).max(axis=-1) > REGION_THRESHOLD)
    radius = max(1, round(REGION_DILATION_PX * image.shape[0] / 128))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(differs.astype(np.uint8), kernel).astype(bool)


def face_feature_region(identity: Identity, pose, expression: Expression, size: int,
                        image: np.ndarray | None = None) -> np.ndarray:
    """(size, size) bool: the eyes, brows, mouth, nose and glasses of ``identity`` rendered with
    ``pose`` and ``expression`` (``image``, that rendering, when the caller already has it),
    as :func:`expression_region` of it against the same head drawn without its features."""
    if image is None:
        image = render(identity, pose, expression, size)
    return expression_region(image, render(identity, pose, expression, size, face_features=False))


def neutral_expression(rng: np.random.Generator) -> Expression:
    """A resting face: mouth closed, eyes open, brows at rest, a faint smile at most."""
    return Expression(mouth_open=0.0, smile=float(rng.uniform(-0.1, 0.15)), eye_closure=float(rng.uniform(0.0, 0.1)),
                      brow_raise=float(rng.uniform(-0.1, 0.1)), gaze_x=float(rng.uniform(-0.2, 0.2)),
                      gaze_y=float(rng.uniform(-0.1, 0.1)))


def strong_expression(rng: np.random.Generator, kind: str | None = None) -> Expression:
    """A clearly visible expression of ``kind`` (one of :data:`STRONG_EXPRESSIONS`, drawn when
    None), the other parts at rest; a second part joins in a third of the time."""
    kind = kind or STRONG_EXPRESSIONS[int(rng.integers(len(STRONG_EXPRESSIONS)))]
    if kind not in STRONG_EXPRESSIONS:
        raise ValueError(f"unknown expression kind {kind!r}; choose one of {', '.join(STRONG_EXPRESSIONS)}")
    values = dict(mouth_open=0.0, smile=0.0, eye_closure=0.05, brow_raise=0.0,
                  gaze_x=float(rng.uniform(-0.3, 0.3)), gaze_y=float(rng.uniform(-0.2, 0.2)))
    kinds = [kind]
    if rng.uniform() < 1 / 3:
        kinds.append(STRONG_EXPRESSIONS[int(rng.integers(len(STRONG_EXPRESSIONS)))])
    for part in kinds:
        if part == "mouth_open":
            values["mouth_open"] = float(rng.uniform(0.6, 1.0))
        elif part == "eyes_closed":
            values["eye_closure"] = float(rng.uniform(0.85, 1.0))
        elif part == "brows_raised":
            values["brow_raise"] = float(rng.uniform(0.7, 1.0))
        else:
            values["smile"] = float(rng.uniform(0.7, 1.0))
    return Expression(**values)


@functools.lru_cache(maxsize=20_000)
def _identity(seed: int) -> Identity:
    return Identity.sample(seed)


def _tensor(image: np.ndarray) -> torch.Tensor:
    if image.ndim == 2:
        image = image[..., None]
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


class ExpressionPairHeads(torch.utils.data.Dataset):
    """Self-reenactment pairs of synthetic heads with the driver's expression region.

    Item ``index`` (deterministic in ``(seed, index)``): identity ``index % num_identities``,
    a source and a driver motion. With probability ``strong_fraction`` the source is at rest
    (:func:`neutral_expression`) and the driver shows a :func:`strong_expression`; otherwise
    both are ``HeadMotion.random``. Keys as ``SyntheticTalkingHeads``' first pair (``source``,
    ``driver``, ``driver_input``, masks, ``*_pose_params``, ``*_expression_params``,
    ``identity``) plus ``driver_expression_region`` (1, S, S) in {0, 1}: where the driver
    differs from the same person in the driver's pose with the source's expression,
    ``driver_feature_region`` (1, S, S) in {0, 1}: the driver's face features
    (:func:`face_feature_region`), ``source_edit_target`` (3, S, S): the source in its own pose
    with the driver's expression (what the expression edit, networks/expression_edit.py, should
    draw), ``source_edit_region`` (1, S, S) in {0, 1}: where that differs from the source, and
    ``driver_correspondence`` (2, S, S) with ``driver_correspondence_seen`` (1, S, S) in {0, 1}:
    the source point (x, y) each driver pixel shows, where the skull's surface gives it
    (data/synthetic/correspondence.py). No second pair: the recipes that use this set train without
    the cycle loss.

    With probability ``same_pose_fraction`` the driver keeps the source's head pose, so only the
    expression moves: what the SDK's relative motion gives on the first frames of a clip (the
    avatar driven by its own pose), and the pairs where the source's own pixels, moved by the
    expression alone, are the right answer (the source-pixel path, networks/source_pixels.py).
    """

    def __init__(self, num_identities: int, size: int = 128, seed: int = 0, split: str = "train",
                 length: int | None = None, strong_fraction: float = 0.5, same_pose_fraction: float = 0.0):
        for name, fraction in (("strong_fraction", strong_fraction), ("same_pose_fraction", same_pose_fraction)):
            if not 0.0 <= fraction <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {fraction}")
        self.identity_seeds = identity_seeds(split, num_identities)
        self.size = size
        self.seed = seed
        self.length = length if length is not None else num_identities * 100
        self.strong_fraction = strong_fraction
        self.same_pose_fraction = same_pose_fraction

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        rng = np.random.default_rng([_STREAM, self.seed, index])
        seed = self.identity_seeds[index % len(self.identity_seeds)]
        identity = _identity(seed)
        source_motion, driver_motion = HeadMotion.random(rng), HeadMotion.random(rng)
        if rng.uniform() < self.strong_fraction:
            source_motion = HeadMotion(source_motion.pose, neutral_expression(rng))
            driver_motion = HeadMotion(driver_motion.pose, strong_expression(rng))
        # drawn only when asked for, so the pairs of a run without it are unchanged
        if self.same_pose_fraction and rng.uniform() < self.same_pose_fraction:
            driver_motion = HeadMotion(source_motion.pose, driver_motion.expression)
        source, source_mask = render(identity, source_motion.pose, source_motion.expression, self.size, True)
        driver, driver_mask = render(identity, driver_motion.pose, driver_motion.expression, self.size, True)
        counterfactual = render(identity, driver_motion.pose, source_motion.expression, self.size)
        region = expression_region(driver, counterfactual)
        features = face_feature_region(identity, driver_motion.pose, driver_motion.expression, self.size, driver)
        edit_target = render(identity, source_motion.pose, driver_motion.expression, self.size)
        edit_region = expression_region(edit_target, source)
        correspondence, seen = skull_correspondence(identity, source_motion.pose, driver_motion.pose, self.size)
        driver_t = _tensor(driver)
        return {
            "source": _tensor(source),
            "driver": driver_t,
            "driver_input": driver_t,
            "source_mask": _tensor(source_mask),
            "driver_mask": _tensor(driver_mask),
            "driver_expression_region": torch.from_numpy(region[None].astype(np.float32)),
            "driver_feature_region": torch.from_numpy(features[None].astype(np.float32)),
            "source_edit_target": _tensor(edit_target),
            "source_edit_region": torch.from_numpy(edit_region[None].astype(np.float32)),
            "driver_correspondence": torch.from_numpy(np.ascontiguousarray(correspondence.transpose(2, 0, 1))),
            "driver_correspondence_seen": torch.from_numpy(seen[None].astype(np.float32)),
            "source_pose_params": torch.from_numpy(source_motion.pose.model_parameters()),
            "driver_pose_params": torch.from_numpy(driver_motion.pose.model_parameters()),
            "source_expression_params": torch.from_numpy(source_motion.expression.as_array()),
            "driver_expression_params": torch.from_numpy(driver_motion.expression.as_array()),
            "identity": torch.tensor(seed),
        }
