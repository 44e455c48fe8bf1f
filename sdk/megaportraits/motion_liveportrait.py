"""Motion for the LivePortrait family: implicit keypoints, composed as LivePortrait's inference does.

The source and driver graphs return the motion extractor's raw heads (names in
:data:`megaportraits.schema.LIVEPORTRAIT_MOTION`); this module turns them into the two keypoint
sets the generator graph takes. Per frame:

* angles from bins: each of pitch, yaw, roll is 66 logits over 3-degree bins,
  ``angle = sum_b softmax(logits)_b * b * 3 - 97.5`` degrees;
* rotation: ``R = (R_z(roll) R_y(yaw) R_x(pitch))^T``, applied to row-vector keypoints;
* keypoints: ``x = s * (x_c R + delta) + (t_x, t_y, 0)`` (the depth translation is dropped),
  with the *source's* canonical keypoints x_c for every frame (they carry the identity).

Relative motion (LivePortrait's default for a driving video), with d0 the driver's first frame:

    R = (R_d R_d0^T) R_s,  delta = delta_s + (delta_d - delta_d0),
    s = s_s * s_d / s_d0,  t = t_s + (t_d - t_d0)

so a driver that has not moved since its first frame reproduces the source exactly. Absolute
motion takes the driver's rotation and translation, keeps the source's scale, and copies the
driver's expression only where LivePortrait does (:data:`ABSOLUTE_EXPRESSION`), keeping the
source's elsewhere. Stitching, the MLP correction that keeps the crop's border in place for
paste-back, runs inside the generator graph. The eye/lip retargeting and the lip normalisation of
LivePortrait's pipeline need facial landmarks, which the SDK does not detect; they are not applied.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .motion import MOTION_MODES, OneEuroFilter
from .schema import DRIVER, GENERATOR, LIVEPORTRAIT_GRAPH_IO, LIVEPORTRAIT_MOTION, SOURCE

BIN_DEGREES = 3.0
ANGLE_OFFSET = 97.5  # degrees: bin b covers b * 3 - 97.5 (the published bins' centring)

# Absolute motion: the (keypoint, axes) whose expression delta comes from the driver; the rest
# stays the source's (LivePortrait's pipeline, "pose-friendly" absolute driving).
ABSOLUTE_EXPRESSION = (
    *((k, slice(0, 3)) for k in (1, 2, 6, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20)),
    (3, slice(1, 2)), (4, slice(1, 2)), (5, slice(2, 3)), (8, slice(2, 3)), (9, slice(1, 3)),
)
# the same (keypoint, axis) pairs as two index arrays, so a frame copies them in one assignment
_ABSOLUTE_ROWS, _ABSOLUTE_AXES = (np.array(v, np.intp) for v in zip(
    *((k, a) for k, axes in ABSOLUTE_EXPRESSION for a in range(3)[axes])))


class KeypointMotion(NamedTuple):
    """One frame's motion, decoded: everything float64, batch axis first."""

    rotation: np.ndarray     # (N, 3, 3), right-multiplies row vectors
    expression: np.ndarray   # (N, K, 3) deltas
    scale: np.ndarray        # (N, 1)
    translation: np.ndarray  # (N, 3)
    canonical: np.ndarray    # (N, K, 3) canonical keypoints x_c


def bins_to_degrees(logits: np.ndarray) -> np.ndarray:
    """(N, B) bin logits -> (N,) degrees (the softmax expectation of the bin index, scaled)."""
    logits = np.asarray(logits, np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p @ np.arange(logits.shape[1], dtype=np.float64) * BIN_DEGREES - ANGLE_OFFSET


def rotation_matrix(pitch: np.ndarray, yaw: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Degrees (N,) -> (N, 3, 3) = (R_z(roll) R_y(yaw) R_x(pitch))^T."""
    x, y, z = (np.radians(np.asarray(a, np.float64)) for a in (pitch, yaw, roll))
    n = x.shape[0]
    rx, ry, rz = (np.tile(np.eye(3), (n, 1, 1)) for _ in range(3))
    rx[:, 1, 1], rx[:, 1, 2], rx[:, 2, 1], rx[:, 2, 2] = np.cos(x), -np.sin(x), np.sin(x), np.cos(x)
    ry[:, 0, 0], ry[:, 0, 2], ry[:, 2, 0], ry[:, 2, 2] = np.cos(y), np.sin(y), -np.sin(y), np.cos(y)
    rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1] = np.cos(z), -np.sin(z), np.sin(z), np.cos(z)
    return np.transpose(rz @ ry @ rx, (0, 2, 1))


def decode(outputs) -> KeypointMotion:
    """The graph's motion outputs (a dict by name, or a sequence in schema order) -> KeypointMotion."""
    if not isinstance(outputs, dict):
        outputs = dict(zip(LIVEPORTRAIT_MOTION, outputs))
    o = {k: np.asarray(outputs[k], np.float64) for k in LIVEPORTRAIT_MOTION}
    n = o["pitch"].shape[0]
    rotation = rotation_matrix(bins_to_degrees(o["pitch"]), bins_to_degrees(o["yaw"]), bins_to_degrees(o["roll"]))
    return KeypointMotion(rotation, o["expression"].reshape(n, -1, 3), o["scale"].reshape(n, 1),
                          o["translation"].reshape(n, 3), o["canonical_keypoints"].reshape(n, -1, 3))


def keypoints(canonical: np.ndarray, rotation: np.ndarray, expression: np.ndarray, scale: np.ndarray,
              translation: np.ndarray) -> np.ndarray:
    """x = s (x_c R + delta) + (t_x, t_y, 0) -> (N, K, 3) float32."""
    t = np.array(translation, np.float64)
    t[:, 2] = 0.0
    x = scale[:, :, None] * (canonical @ rotation + expression) + t[:, None, :]
    return x.astype(np.float32)


def own_keypoints(motion: KeypointMotion) -> np.ndarray:
    """An image's keypoints under its own motion (the source's x_s)."""
    return keypoints(motion.canonical, motion.rotation, motion.expression, motion.scale, motion.translation)


class RelativeKeypoints:
    """LivePortrait's relative rule, with the source and the driver's first frame fixed once."""

    def __init__(self, source: KeypointMotion, driver_first: KeypointMotion):
        self.source = source
        self._rotation_tail = np.transpose(driver_first.rotation, (0, 2, 1)) @ source.rotation  # R_d0^T R_s
        self._expression_offset = source.expression - driver_first.expression
        self._scale_ratio = source.scale / driver_first.scale
        self._translation_offset = source.translation - driver_first.translation

    def __call__(self, driver: KeypointMotion) -> np.ndarray:
        return keypoints(self.source.canonical, driver.rotation @ self._rotation_tail,
                         driver.expression + self._expression_offset, driver.scale * self._scale_ratio,
                         driver.translation + self._translation_offset)


def absolute_keypoints(source: KeypointMotion, driver: KeypointMotion) -> np.ndarray:
    """LivePortrait's absolute driving: the driver's rotation and translation, the source's
    scale, the driver's expression at :data:`ABSOLUTE_EXPRESSION` and the source's elsewhere."""
    expression = source.expression.copy()
    expression[:, _ABSOLUTE_ROWS, _ABSOLUTE_AXES] = driver.expression[:, _ABSOLUTE_ROWS, _ABSOLUTE_AXES]
    return keypoints(source.canonical, driver.rotation, expression, source.scale, driver.translation)


class KeypointComposer:
    """Per stream: the driving keypoints of each frame, by the chosen mode, optionally smoothed.

    Smoothing (One-Euro, as for the other family) acts on the composed driving keypoints, so it
    treats pose and expression alike; the first frame passes unchanged.
    """

    def __init__(self, source: KeypointMotion, mode: str = "relative", smooth: bool = False,
                 fps: float = 30.0, min_cutoff: float = 1.0, beta: float = 0.3):
        if mode not in MOTION_MODES:
            raise ValueError(f"motion must be one of {', '.join(MOTION_MODES)}, not {mode!r}")
        self.source = source
        self.mode = mode
        self._relative = None
        self._filter = OneEuroFilter(min_cutoff, beta) if smooth else None
        self._dt = 1.0 / fps

    def set_reference(self, driver_first: KeypointMotion) -> None:
        self._relative = RelativeKeypoints(self.source, driver_first)

    def __call__(self, driver: KeypointMotion) -> np.ndarray:
        if self.mode == "absolute":
            driving = absolute_keypoints(self.source, driver)
        else:
            if self._relative is None:
                self.set_reference(driver)
            driving = self._relative(driver)
        if self._filter is not None:
            driving = self._filter(driving, self._dt).astype(np.float32)
        return driving


# ---- the family's graphs, as the Animator runs them --------------------------------------------
class KeypointAvatar(NamedTuple):
    """What the source graph gives once per avatar: the feature volume, the source's motion and
    its own keypoints x_s (the generator's ``source_keypoints`` for every frame)."""

    feature_volume: np.ndarray  # (1, C, D, H, W) float32
    motion: KeypointMotion
    keypoints: np.ndarray       # (1, K, 3) float32


def read_source(run, source_image: np.ndarray) -> KeypointAvatar:
    """``run(output_names, feeds) -> list`` runs the source graph (the Animator's error handling)."""
    names = list(LIVEPORTRAIT_GRAPH_IO[SOURCE].outputs)
    outputs = dict(zip(names, run(names, {LIVEPORTRAIT_GRAPH_IO[SOURCE].inputs[0]: source_image})))
    motion = decode(outputs)
    return KeypointAvatar(np.ascontiguousarray(outputs["feature_volume"], np.float32), motion, own_keypoints(motion))


def read_driver(run, driver_image: np.ndarray) -> KeypointMotion:
    names = list(LIVEPORTRAIT_GRAPH_IO[DRIVER].outputs)
    return decode(dict(zip(names, run(names, {LIVEPORTRAIT_GRAPH_IO[DRIVER].inputs[0]: driver_image}))))


def generator_feeds(avatar: KeypointAvatar, driving: np.ndarray) -> dict:
    volume, source, driving_name = LIVEPORTRAIT_GRAPH_IO[GENERATOR].inputs
    return {volume: avatar.feature_volume, source: avatar.keypoints,
            driving_name: np.ascontiguousarray(driving, np.float32)}
