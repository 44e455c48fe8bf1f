"""What a synthetic person is and does: identity, pose and expression, the renderer's inputs.

Coordinates (shared with the model's normalised volume coordinates): x to the right, y down, z
away from the camera, the image spanning [-1, 1] in x and y. A head-frame point ``P`` lands at
``X = scale * HEAD_UNIT * R(yaw, pitch, roll) @ P + (tx, ty, tz)`` before projection, with
``R = Ry(yaw) @ Rx(pitch) @ Rz(roll)`` (:func:`rotation_matrix`). :meth:`Pose.model_parameters`
gives the model's theta (camera -> canonical), the inverse of that transform.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

EVAL_IDENTITY_SEED_OFFSET = 1_000_000
"""Identity seeds at or above this are held out for evaluation."""

POSE_PARAMETER_NAMES = ("scale", "yaw", "pitch", "roll", "tx", "ty", "tz")
"""Order of :meth:`Pose.as_array` and :meth:`Pose.model_parameters` (and ``*_pose_params``)."""
EXPRESSION_PARAMETER_NAMES = ("mouth_open", "smile", "eye_closure", "brow_raise", "gaze_x", "gaze_y")

# Streams of the identity RNG: one per purpose, so that adding a new attribute later does not
# change the ones already sampled.
_IDENTITY_STREAM = 0x1D

Colour = tuple[int, int, int]


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """``Ry(yaw) @ Rx(pitch) @ Rz(roll)``, angles in radians, standard right-handed rotations.

    Yaw is applied last (about the camera's vertical axis): its transpose is exactly the model's
    ``R_roll R_pitch R_yaw`` with negated angles."""
    cy, sy = math.cos(yaw), math.sin(yaw)
    cp, sp = math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    rz = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return ry @ rx @ rz



_SKIN_LIGHT = np.array([250.0, 222.0, 200.0])
_SKIN_DARK = np.array([78.0, 50.0, 36.0])
_HAIR_COLOURS = [(24, 20, 18), (60, 40, 28), (105, 70, 40), (160, 120, 70), (220, 190, 130),
                 (150, 60, 30), (170, 170, 170), (235, 235, 230)]
_IRIS_COLOURS = [(70, 45, 25), (110, 75, 40), (60, 110, 170), (80, 130, 90), (120, 130, 140)]
HAIR_STYLES = ("short", "long", "bald", "bun", "curly")
BACKGROUND_TEXTURES = ("plain", "stripes", "checker", "blobs", "clouds")


def _jitter(rng: np.random.Generator, colour: Sequence[float], amount: float) -> Colour:
    value = np.asarray(colour, dtype=float) + rng.normal(0.0, amount, size=3)
    return tuple(int(c) for c in np.clip(value, 0, 255))


@dataclasses.dataclass(frozen=True)
class Identity:
    """Appearance of one synthetic person; everything the renderer needs besides the motion.

    Lengths are in head units (normalised volume units at ``Pose.scale == 1``); colours are RGB.
    """

    seed: int
    skin: Colour
    hair: Colour
    iris: Colour
    brows: Colour
    lips: Colour
    clothing: Colour
    background: Colour
    background2: Colour
    background_angle: float
    background_texture: str
    head_width: float
    head_height: float
    head_depth: float
    jaw_width: float
    chin_length: float
    eye_spacing: float
    eye_height: float
    eye_size: float
    brow_thickness: float
    nose_length: float
    nose_width: float
    nose_protrusion: float
    mouth_width: float
    lip_thickness: float
    ear_size: float
    hair_style: str
    hair_coverage: float
    hair_tilt: float
    hair_volume: float
    glasses: bool
    glasses_colour: Colour
    light: tuple[float, float, float]

    @classmethod
    def sample(cls, seed: int) -> "Identity":
        """The identity of ``seed``: the same seed always gives the same person."""
        rng = np.random.default_rng([_IDENTITY_STREAM, int(seed)])
        tone = rng.uniform(0.0, 1.0)
        skin = _jitter(rng, _SKIN_LIGHT * (1 - tone) + _SKIN_DARK * tone, 8.0)
        hair = _jitter(rng, _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))], 10.0)
        if rng.uniform() < 0.08:  # dyed hair
            hair = tuple(int(c) for c in rng.integers(30, 230, size=3))
        light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.1), 1.0])
        light /= np.linalg.norm(light)
        background = tuple(int(c) for c in rng.integers(0, 256, size=3))
        return cls(
            seed=int(seed),
            skin=skin,
            hair=hair,
            iris=_jitter(rng, _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))], 12.0),
            brows=_jitter(rng, np.asarray(hair) * 0.7, 6.0),
            lips=_jitter(rng, np.asarray(skin) * np.array([0.85, 0.55, 0.55]) + np.array([30, 0, 5]), 8.0),
            clothing=tuple(int(c) for c in rng.integers(0, 256, size=3)),
            background=background,
            background2=_jitter(rng, background, 60.0),
            background_angle=float(rng.uniform(0, 2 * math.pi)),
            background_texture=BACKGROUND_TEXTURES[rng.integers(len(BACKGROUND_TEXTURES))],
            head_width=float(rng.uniform(0.30, 0.37)),
            head_height=float(rng.uniform(0.38, 0.44)),
            head_depth=float(rng.uniform(0.38, 0.43)),
            jaw_width=float(rng.uniform(0.45, 0.8)),
            chin_length=float(rng.uniform(0.02, 0.09)),
            eye_spacing=float(rng.uniform(0.10, 0.13)),
            eye_height=float(rng.uniform(-0.04, 0.0)),
            eye_size=float(rng.uniform(0.042, 0.056)),
            brow_thickness=float(rng.uniform(0.010, 0.022)),
            nose_length=float(rng.uniform(0.10, 0.14)),
            nose_width=float(rng.uniform(0.025, 0.04)),
            nose_protrusion=float(rng.uniform(0.05, 0.09)),
            mouth_width=float(rng.uniform(0.065, 0.095)),
            lip_thickness=float(rng.uniform(0.008, 0.02)),
            ear_size=float(rng.uniform(0.065, 0.09)),
            hair_style=HAIR_STYLES[rng.integers(len(HAIR_STYLES))],
            hair_coverage=float(rng.uniform(1.05, 1.4)),
            hair_tilt=float(rng.uniform(0.25, 0.6)),
            hair_volume=float(rng.uniform(1.03, 1.12)),
            glasses=bool(rng.uniform() < 0.25),
            glasses_colour=tuple(int(c) for c in rng.integers(0, 120, size=3)),
            light=tuple(float(v) for v in light),
        )


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


class _Parameters:
    """What :class:`Pose` and :class:`Expression` share: a frozen dataclass of floats that is
    interpolated and flattened field by field, in field order."""

    def lerp(self, other, t: float):
        return type(self)(*(_lerp(a, b, t) for a, b in zip(self.as_array(), other.as_array())))

    def as_array(self) -> np.ndarray:
        """The fields in order (:data:`POSE_PARAMETER_NAMES`, :data:`EXPRESSION_PARAMETER_NAMES`), float32."""
        return np.array(dataclasses.astuple(self), dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Pose(_Parameters):
    """Rigid head pose plus isotropic scale; angles in radians, translation in normalised units."""

    scale: float = 1.0
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    tx: float = 0.0
    ty: float = 0.0
    tz: float = 0.0

    @classmethod
    def random(cls, rng: np.random.Generator, strength: float = 1.0) -> "Pose":
        """A plausible talking-head pose (mostly frontal, up to ~45 degrees of yaw)."""
        return cls(
            scale=float(np.clip(rng.normal(1.0, 0.05 * strength), 0.85, 1.15)),
            yaw=float(np.clip(rng.normal(0.0, 0.3 * strength), -0.8, 0.8)),
            pitch=float(np.clip(rng.normal(0.0, 0.15 * strength), -0.4, 0.4)),
            roll=float(np.clip(rng.normal(0.0, 0.1 * strength), -0.3, 0.3)),
            tx=float(np.clip(rng.normal(0.0, 0.04 * strength), -0.12, 0.12)),
            ty=float(np.clip(rng.normal(0.0, 0.04 * strength), -0.12, 0.12)),
            tz=0.0,
        )

    def mirrored(self) -> "Pose":
        """The pose seen in a horizontally flipped image: yaw, roll and tx change sign."""
        return dataclasses.replace(self, yaw=-self.yaw, roll=-self.roll, tx=-self.tx)

    def rotation(self) -> np.ndarray:
        return rotation_matrix(self.yaw, self.pitch, self.roll)

    def model_parameters(self) -> np.ndarray:
        """The parameters of the model's theta (camera -> canonical) for this pose, float32
        ``(scale, yaw, pitch, roll, tx, ty, tz)``: ``warp.pose_matrix(scale.expand(3), (yaw, pitch,
        roll), (tx, ty, tz))`` is the inverse of the head's transform (see the module docstring)."""
        return np.array([1.0 / self.scale, -self.yaw, -self.pitch, -self.roll, -self.tx, -self.ty, -self.tz],
                        dtype=np.float32)

    @classmethod
    def from_model_parameters(cls, parameters: Sequence[float]) -> "Pose":
        scale, yaw, pitch, roll, tx, ty, tz = (float(v) for v in parameters)
        return cls(1.0 / scale, -yaw, -pitch, -roll, -tx, -ty, -tz)


@dataclasses.dataclass(frozen=True)
class Expression(_Parameters):
    """Facial expression: each value is 0 at rest; ``gaze_*`` in [-1, 1], the rest about [0, 1]."""

    mouth_open: float = 0.0
    smile: float = 0.0
    eye_closure: float = 0.0
    brow_raise: float = 0.0
    gaze_x: float = 0.0
    gaze_y: float = 0.0

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Expression":
        talking = rng.uniform() < 0.65
        blinking = rng.uniform() < 0.15
        return cls(
            mouth_open=float(rng.uniform(0.05, 1.0)) if talking else 0.0,
            smile=float(rng.uniform(-0.3, 1.0)),
            eye_closure=float(rng.uniform(0.5, 1.0) if blinking else rng.uniform(0.0, 0.3)),
            brow_raise=float(rng.uniform(-0.5, 1.0)),
            gaze_x=float(np.clip(rng.normal(0.0, 0.4), -1, 1)),
            gaze_y=float(np.clip(rng.normal(0.0, 0.3), -1, 1)),
        )

    def mirrored(self) -> "Expression":
        return dataclasses.replace(self, gaze_x=-self.gaze_x)


@dataclasses.dataclass(frozen=True)
class HeadMotion:
    """What a driver contributes: pose and expression (the synthetic counterpart of ``Motion``)."""

    pose: Pose = Pose()
    expression: Expression = Expression()

    def lerp(self, other: "HeadMotion", t: float) -> "HeadMotion":
        return HeadMotion(self.pose.lerp(other.pose, t), self.expression.lerp(other.expression, t))

    def mirrored(self) -> "HeadMotion":
        return HeadMotion(self.pose.mirrored(), self.expression.mirrored())

    @classmethod
    def random(cls, rng: np.random.Generator) -> "HeadMotion":
        return cls(Pose.random(rng), Expression.random(rng))
