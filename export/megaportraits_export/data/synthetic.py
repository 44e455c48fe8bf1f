"""Synthetic talking heads: a procedural 3-D head drawn with OpenCV, needing no download.

Why: real talking-head data (VoxCeleb2) cannot be fetched here, and even where it can, it has no
ground truth for cross-reenactment (person A with the motion of person B never happened). This
renderer gives both, for as many identities as wanted, deterministically by seed:

- an :class:`Identity` (skin, face shape, hair colour and style, eyes, brows, lips, ears, glasses,
  clothing, background) drawn from ``Identity.sample(seed)``;
- a :class:`Pose` (scale, yaw, pitch, roll, translation) and an :class:`Expression` (mouth
  opening, smile, eye closure, brow raise, gaze) that the renderer obeys exactly, so they are the
  ground truth for a head-pose regressor and for evaluation;
- ``render(identity, pose, expression, size)`` -> ``(size, size, 3)`` uint8 RGB.

The head is a real 3-D model: an ellipsoid skull, a jaw, ears, a hair cap and features lying on
the skull's surface, a nose that sticks out of it. Every point is rotated, scaled, translated and
projected with a mild perspective camera, so yaw and pitch produce parallax (the nose tip moves
more than the face outline), foreshortening and occlusion (features facing away are not drawn;
near/far parts are drawn back to front). Drawing uses anti-aliased filled polygons at twice the
output size, then an area downsample.

Coordinates (shared with the model's normalised volume coordinates): x to the right, y down, z
away from the camera, the image spanning [-1, 1] in x and y. A head-frame point ``P`` lands at
``X = scale * HEAD_UNIT * R(yaw, pitch, roll) @ P + (tx, ty, tz)`` before projection, with
``R = Ry(yaw) @ Rx(pitch) @ Rz(roll)`` built from the standard right-handed axis rotations
(:func:`rotation_matrix`). So positive yaw turns the face toward image left, positive pitch tilts
the face down, positive roll turns the top of the head toward image right.

The model's pose theta goes the other way, camera -> canonical (``warp.pose_matrix``:
``theta X = s * R_roll R_pitch R_yaw (X + t)``). Taking the canonical frame to be the camera frame
of the frontal, centred, unit-scale head, theta is the inverse of the transform above (up to the
mild perspective), and its parameters are :meth:`Pose.model_parameters`: ``(1 / scale, -yaw,
-pitch, -roll, -tx, -ty, -tz)``. The datasets' ``*_pose_params`` are these.

Held-out identities: training uses identity seeds below :data:`EVAL_IDENTITY_SEED_OFFSET`,
evaluation uses seeds at or above it, so evaluation never sees a training identity.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import cv2
import numpy as np
import torch

EVAL_IDENTITY_SEED_OFFSET = 1_000_000
"""Identity seeds at or above this are held out for evaluation."""

CAMERA_DISTANCE = 6.0
"""Distance of the pinhole camera from the volume centre, in normalised units; points at depth 0
project unscaled. Large enough that the rigid warp of the model stays nearly affine."""

POSE_PARAMETER_NAMES = ("scale", "yaw", "pitch", "roll", "tx", "ty", "tz")
"""Order of :meth:`Pose.as_array` and :meth:`Pose.model_parameters` (and ``*_pose_params``)."""
EXPRESSION_PARAMETER_NAMES = ("mouth_open", "smile", "eye_closure", "brow_raise", "gaze_x", "gaze_y")

HEAD_UNIT = 1.35
"""Size of one head-model unit in normalised image units at ``Pose.scale == 1``: chosen so that a
frontal head fills the frame like a VoxCeleb crop (face about half the image height)."""

_SUPERSAMPLE = 2
_SHIFT_BITS = 4  # cv2 fixed-point sub-pixel precision for polygon vertices
_SHIFT_SCALE = float(1 << _SHIFT_BITS)

# Streams of the identity RNG: one per purpose, so that adding a new attribute later does not
# change the ones already sampled.
_IDENTITY_STREAM = 0x1D
_BACKGROUND_STREAM = 0xB6

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


# ----------------------------------------------------------------------------------------------
# Parameters: identity, pose, expression
# ----------------------------------------------------------------------------------------------

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


@dataclasses.dataclass(frozen=True)
class Pose:
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

    def lerp(self, other: "Pose", t: float) -> "Pose":
        return Pose(*(_lerp(a, b, t) for a, b in zip(self.as_array(), other.as_array())))

    def mirrored(self) -> "Pose":
        """The pose seen in a horizontally flipped image: yaw, roll and tx change sign."""
        return dataclasses.replace(self, yaw=-self.yaw, roll=-self.roll, tx=-self.tx)

    def rotation(self) -> np.ndarray:
        return rotation_matrix(self.yaw, self.pitch, self.roll)

    def as_array(self) -> np.ndarray:
        """``(scale, yaw, pitch, roll, tx, ty, tz)`` as float32, :data:`POSE_PARAMETER_NAMES`."""
        return np.array(dataclasses.astuple(self), dtype=np.float32)

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
class Expression:
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

    def lerp(self, other: "Expression", t: float) -> "Expression":
        return Expression(*(_lerp(a, b, t) for a, b in zip(self.as_array(), other.as_array())))

    def mirrored(self) -> "Expression":
        return dataclasses.replace(self, gaze_x=-self.gaze_x)

    def as_array(self) -> np.ndarray:
        """Values in the order of :data:`EXPRESSION_PARAMETER_NAMES`, float32."""
        return np.array(dataclasses.astuple(self), dtype=np.float32)


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


# ----------------------------------------------------------------------------------------------
# Geometry of the head (head frame: x right, y down, z backward; the face looks toward -z)
# ----------------------------------------------------------------------------------------------

def _face_surface(identity: Identity, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Points of the skull ellipsoid's front half above (u, v): features lie on the surface."""
    a, b, c = identity.head_width, identity.head_height, identity.head_depth
    inside = np.clip(1.0 - (u / a) ** 2 - (v / b) ** 2, 0.0, None)
    return np.stack([u, v, -c * np.sqrt(inside)], axis=-1)


def _surface_normal(identity: Identity, point: np.ndarray) -> np.ndarray:
    a, b, c = identity.head_width, identity.head_height, identity.head_depth
    normal = point / np.array([a * a, b * b, c * c])
    return normal / np.linalg.norm(normal, axis=-1, keepdims=True)


_UNIT_CIRCLE_24 = np.stack([np.cos(np.linspace(0, 2 * np.pi, 24, endpoint=False)),
                            np.sin(np.linspace(0, 2 * np.pi, 24, endpoint=False))], axis=-1)
_UNIT_CIRCLE_12 = _UNIT_CIRCLE_24[::2]
_T9 = np.linspace(-1.0, 1.0, 9)


# Faces of the nose as indices into its corner points (bridge, left, right, base, tip).
_NOSE_FACES = ((0, 1, 4), (0, 4, 2), (1, 3, 2, 4))  # left side, right side, underside


@dataclasses.dataclass(frozen=True)
class _StaticGeometry:
    """Parts of the head that do not move with the expression, computed once per identity."""

    hair_cap: np.ndarray | None       # (wedges, N, 3) points of the cap; visible hulls are drawn
    hair_cap_normals: np.ndarray | None
    hair_back: np.ndarray | None      # (N, 3) polygon behind the head (long hair)
    hair_bun: tuple[np.ndarray, float] | None
    ears: tuple[np.ndarray, np.ndarray]  # left, right ear outlines (N, 3)
    neck: np.ndarray                  # (2, 3) top corners of the neck, in the head frame
    body: np.ndarray                  # (N, 2) shoulders outline in the body frame
    nose_points: np.ndarray           # (29, 3): bridge, left, right, base, tip, 2 x 12 nostril outline
    nose_normals: np.ndarray          # (3, 3) outward normals of the _NOSE_FACES


def _hair_geometry(identity: Identity):
    """(cap wedges, their normals, long hair behind the head, bun) in the head frame."""
    if identity.hair_style == "bald":
        return None, None, None, None
    a, b, c = identity.head_width, identity.head_height, identity.head_depth
    radii = np.array([a, b, c])
    volume = identity.hair_volume * (1.12 if identity.hair_style == "curly" else 1.0)
    coverage = identity.hair_coverage + (0.15 if identity.hair_style == "curly" else 0.0)
    # The cap: directions within ``coverage`` radians of an axis tilted back from the crown.
    axis = np.array([0.0, -math.cos(identity.hair_tilt), math.sin(identity.hair_tilt)])
    side = np.array([1.0, 0.0, 0.0])
    other = np.cross(axis, side)
    around = np.linspace(0, 2 * np.pi, 24, endpoint=False)[:, None, None]
    fractions = np.linspace(1.0, 0.0, 6)[None, :, None]
    unit = (np.cos(coverage * fractions) * axis
            + np.sin(coverage * fractions) * (np.cos(around) * side + np.sin(around) * other))
    # Overlapping wedges from hairline to crown (3 sectors each, overlapping by one): the
    # visible part of a thin wedge is nearly convex, and overlaps leave no anti-aliasing seams.
    wedges = np.stack([np.roll(unit, -2 * k, axis=0)[:3] for k in range(12)])  # (12, 3, 6, 3)
    cap = wedges.reshape(12, -1, 3) * radii * volume
    back = bun = None
    if identity.hair_style == "long":
        back = np.array([[-a * 1.05, -b * 0.3, c * 0.2], [a * 1.05, -b * 0.3, c * 0.2],
                         [a * 1.25, b * 1.45, c * 0.35], [a * 0.6, b * 1.6, c * 0.35],
                         [-a * 0.6, b * 1.6, c * 0.35], [-a * 1.25, b * 1.45, c * 0.35]])
    if identity.hair_style == "bun":
        bun = (np.array([0.0, -b * 0.85, c * 0.75]), 0.12)
    return cap, cap / radii ** 2, back, bun


def _ear_outlines(identity: Identity) -> tuple[np.ndarray, np.ndarray]:
    """Left and right ear outlines (12, 3): ovals on the sides of the skull."""
    ears = []
    for sign in (-1.0, 1.0):
        outline = np.stack([np.full(12, sign * identity.head_width * 0.97),
                            0.03 + identity.ear_size * _UNIT_CIRCLE_12[:, 1],
                            0.01 + identity.ear_size * 0.6 * _UNIT_CIRCLE_12[:, 0]], axis=-1)
        outline[:, 0] += sign * 0.02 * (1 + _UNIT_CIRCLE_12[:, 0])  # ears stand out toward the back
        ears.append(outline)
    return ears[0], ears[1]


def _nose_geometry(identity: Identity) -> tuple[np.ndarray, np.ndarray]:
    """Nose points (corners of :data:`_NOSE_FACES` + two nostril outlines) and the faces'
    outward normals. The tip stands out of the skull's surface: that is the parallax cue."""
    eye_v, nose_v = identity.eye_height, identity.eye_height + identity.nose_length
    w = identity.nose_width
    surface = lambda u, v: _face_surface(identity, np.array(u), np.array(v))  # noqa: E731
    bridge, left, right = surface(0.0, eye_v + 0.015), surface(-w, nose_v), surface(w, nose_v)
    base = surface(0.0, nose_v + 0.012)
    tip = surface(0.0, nose_v - 0.01) + [0, 0, -identity.nose_protrusion]
    corners = np.stack([bridge, left, right, base, tip])
    nostrils = []
    for wing in (left, right):
        centre = 0.5 * (base + wing) + np.array([0.0, 0.0, -identity.nose_protrusion * 0.25])
        nostrils.append(centre + np.concatenate([_UNIT_CIRCLE_12 * np.array([0.008, 0.004]), np.zeros((12, 1))], 1))
    inside = np.array([0.0, nose_v, 0.0])
    normals = []
    for face in _NOSE_FACES:
        first, second, third = corners[face[0]], corners[face[1]], corners[face[2]]
        normal = np.cross(second - first, third - first)
        centroid = corners[list(face)].mean(axis=0)
        normals.append(normal * np.sign(normal @ (centroid - inside)) / np.linalg.norm(normal))
    return np.concatenate([corners] + nostrils), np.array(normals)


@functools.lru_cache(maxsize=4096)
def _static_geometry(identity: Identity) -> _StaticGeometry:
    hair_cap, hair_cap_normals, hair_back, hair_bun = _hair_geometry(identity)
    neck = np.array([[-0.13, 0.25, 0.1], [0.13, 0.25, 0.1]])
    body = np.array([[-0.16, 0.62], [0.16, 0.62], [0.75, 0.80], [1.05, 0.95], [1.2, 1.3],
                     [-1.2, 1.3], [-1.05, 0.95], [-0.75, 0.80]])
    nose_points, nose_normals = _nose_geometry(identity)
    return _StaticGeometry(hair_cap, hair_cap_normals, hair_back, hair_bun, _ear_outlines(identity),
                           neck, body, nose_points, nose_normals)


def _eye_outlines(identity: Identity, side: float, expression: Expression):
    """Surface points of one eye: sclera outline, iris and pupil clipped to it, lid line."""
    u0, v0, width = side * identity.eye_spacing, identity.eye_height, identity.eye_size
    openness = 1.0 - float(np.clip(expression.eye_closure, 0.0, 1.0))
    bulge = 1.0 - _T9 ** 2
    upper = v0 - width * 0.55 * openness * bulge - 0.004 * (1 - openness)
    lower = v0 + width * 0.35 * openness * bulge
    u = u0 + width * _T9
    sclera = np.concatenate([np.stack([u, upper], -1), np.stack([u, lower], -1)[::-1]])

    def clipped_disc(radius):
        centre_u = u0 + expression.gaze_x * width * 0.45
        centre_v = v0 + expression.gaze_y * width * 0.2
        du = np.clip(centre_u + radius * _UNIT_CIRCLE_12[:, 0], u0 - width, u0 + width)
        t = (du - u0) / width
        dv = np.clip(centre_v + radius * _UNIT_CIRCLE_12[:, 1],
                     v0 - width * 0.55 * openness * (1 - t * t), v0 + width * 0.35 * openness * (1 - t * t))
        return np.stack([du, dv], -1)

    lid = np.stack([u, upper], -1)
    return sclera, clipped_disc(width * 0.42), clipped_disc(width * 0.18), lid, openness


def _brow_outline(identity: Identity, side: float, expression: Expression) -> np.ndarray:
    t = _T9 * 0.5 + 0.5  # 0 at the inner end, 1 at the outer end
    raise_ = 0.03 * expression.brow_raise
    u = side * (identity.eye_spacing - identity.eye_size * 1.1 + identity.eye_size * 2.3 * t)
    centre = identity.eye_height - identity.eye_size * 1.25 - raise_ - (0.012 + 0.4 * raise_) * np.sin(np.pi * t)
    half = identity.brow_thickness * (1.0 - 0.6 * t) * 0.5
    return np.concatenate([np.stack([u, centre - half], -1), np.stack([u, centre + half], -1)[::-1]])


def _mouth_outlines(identity: Identity, expression: Expression):
    """Lips outline, opening and teeth, in face-surface (u, v) coordinates."""
    mouth_v = identity.eye_height + identity.nose_length + 0.085
    opening = 0.075 * float(np.clip(expression.mouth_open, 0.0, 1.0))
    half_width = identity.mouth_width * (1.0 + 0.2 * expression.smile)
    corner_lift = -0.02 * expression.smile
    bulge = 1.0 - _T9 ** 2
    u = half_width * _T9
    seam = mouth_v + corner_lift * _T9 ** 2
    lip = identity.lip_thickness
    upper_outer = seam - lip * bulge * (1.0 - 0.3 * np.exp(-(_T9 * 4) ** 2))  # cupid's bow dip
    lower_inner = seam + opening * bulge
    lower_outer = lower_inner + lip * 1.3 * bulge
    lips = np.concatenate([np.stack([u, upper_outer], -1), np.stack([u, lower_outer], -1)[::-1]])
    inner = np.concatenate([np.stack([u, seam], -1), np.stack([u, lower_inner], -1)[::-1]])
    teeth_edge = seam + np.minimum(opening, 0.014) * bulge
    teeth = np.concatenate([np.stack([u * 0.8, seam], -1), np.stack([u * 0.8, teeth_edge], -1)[::-1]])
    return lips, inner, teeth, np.stack([u, seam], -1), opening


def _jaw_outline(identity: Identity, opening: float) -> np.ndarray:
    """Lower face from cheek to cheek; the chin drops when the mouth opens."""
    a, b, c = identity.head_width, identity.head_height, identity.head_depth
    theta = np.linspace(0.0, np.pi, 15)
    narrowing = 1.0 - (1.0 - identity.jaw_width) * np.sin(theta) ** 2
    x = a * np.cos(theta) * narrowing
    chin = b * 0.92 + identity.chin_length + 0.6 * opening
    y = chin * np.sin(theta) ** 0.7
    z = -c * 0.45 * np.sin(theta)
    top = np.array([[-a, -0.02, -c * 0.3], [a, -0.02, -c * 0.3]])
    return np.concatenate([np.stack([x, y, z], -1), top[::-1][1:]])


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=512)
def _background(identity: Identity, size: int) -> np.ndarray:
    """The identity's backdrop at ``size`` as RGBA with alpha 0; cached because it never moves."""
    rng = np.random.default_rng([_BACKGROUND_STREAM, identity.seed])
    coords = (np.arange(size) + 0.5) / size * 2 - 1
    xx, yy = np.meshgrid(coords, coords)
    along = xx * math.cos(identity.background_angle) + yy * math.sin(identity.background_angle)
    t = np.clip(along * 0.5 + 0.5, 0, 1)[..., None]
    image = np.asarray(identity.background, float) * (1 - t) + np.asarray(identity.background2, float) * t
    texture = identity.background_texture
    if texture == "stripes":
        frequency, angle = rng.uniform(3, 10), rng.uniform(0, np.pi)
        wave = np.sin(np.pi * frequency * (xx * math.cos(angle) + yy * math.sin(angle)))
        image *= (1.0 + 0.12 * wave)[..., None]
    elif texture == "checker":
        cells = rng.integers(3, 9)
        board = (np.floor((xx + 1) * cells / 2) + np.floor((yy + 1) * cells / 2)) % 2
        image *= (0.88 + 0.24 * board)[..., None]
    elif texture == "blobs":
        blobs = np.zeros((size, size), np.float32)
        for _ in range(int(rng.integers(3, 8))):
            centre = (int(rng.uniform(0, size)), int(rng.uniform(0, size)))
            cv2.circle(blobs, centre, int(rng.uniform(0.05, 0.25) * size), float(rng.uniform(-1, 1)), -1)
        blobs = cv2.GaussianBlur(blobs, (0, 0), size * 0.03)
        image += 40.0 * blobs[..., None] * (np.asarray(identity.background2, float) / 255.0 - 0.5)
    elif texture == "clouds":
        coarse = rng.normal(0, 1, (6, 6, 3)).astype(np.float32)
        clouds = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
        image += 18.0 * clouds
    rgb = np.clip(image, 0, 255).astype(np.uint8)
    return np.concatenate([rgb, np.zeros((size, size, 1), np.uint8)], axis=-1)


class _Camera:
    """Head-frame and body-frame points -> fixed-point pixel coordinates of the supersampled canvas."""

    def __init__(self, pose: Pose, canvas_size: int):
        self.rotation = pose.rotation()
        self.scale = pose.scale * HEAD_UNIT
        self.body_scale = pose.scale
        self.translation = np.array([pose.tx, pose.ty, pose.tz])
        self.canvas_size = canvas_size

    def to_camera(self, head_points: np.ndarray) -> np.ndarray:
        return self.scale * head_points @ self.rotation.T + self.translation

    def project(self, camera_points: np.ndarray) -> np.ndarray:
        """Pixel coordinates (pixel centres at integers) scaled for cv2's fixed-point ``shift``."""
        perspective = CAMERA_DISTANCE / (camera_points[..., 2:3] + CAMERA_DISTANCE)
        xy = camera_points[..., :2] * perspective
        pixels = ((xy + 1.0) * self.canvas_size - 1.0) * 0.5
        return np.round(pixels * _SHIFT_SCALE).astype(np.int32)

    def head(self, head_points: np.ndarray) -> np.ndarray:
        return self.project(self.to_camera(head_points))

    def body(self, body_points: np.ndarray) -> np.ndarray:
        """Shoulders follow the head's translation and scale, not its rotation."""
        points = np.concatenate([body_points * self.body_scale, np.zeros((len(body_points), 1))], axis=1)
        return self.project(points + self.translation)

    def facing(self, normal: np.ndarray) -> float:
        """z of the rotated normal: negative when the surface faces the camera."""
        return float((self.rotation @ normal)[2])


# The canvas is RGBA: the backdrop has alpha 0 and every shape of the person is drawn with
# alpha 255, so the alpha channel ends up as the (anti-aliased) foreground mask for free.

def _fill(canvas: np.ndarray, points: np.ndarray, colour) -> None:
    cv2.fillPoly(canvas, [points.reshape(-1, 1, 2)], (*colour, 255), cv2.LINE_AA, _SHIFT_BITS)


def _line(canvas: np.ndarray, points: np.ndarray, colour, thickness: int, closed: bool = False) -> None:
    cv2.polylines(canvas, [points.reshape(-1, 1, 2)], closed, (*colour, 255), thickness, cv2.LINE_AA, _SHIFT_BITS)


def _shade(colour: Colour, factor: float) -> Colour:
    return tuple(int(min(255, c * factor)) for c in colour)


def _silhouette(identity: Identity, camera: _Camera, points: int = 40) -> np.ndarray:
    """Outline of the skull ellipsoid: its orthographic silhouette (a Schur complement of the
    ellipsoid's quadric), scaled by the perspective at its centre."""
    radii = np.array([identity.head_width, identity.head_height, identity.head_depth])
    quadric = camera.rotation @ np.diag(1.0 / radii ** 2) @ camera.rotation.T / camera.scale ** 2
    conic = quadric[:2, :2] - np.outer(quadric[:2, 2], quadric[2, :2]) / quadric[2, 2]
    eigenvalues, eigenvectors = np.linalg.eigh(conic)
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    offsets = (eigenvectors * (1.0 / np.sqrt(eigenvalues))) @ np.stack([np.cos(angles), np.sin(angles)])
    outline = camera.translation[None, :] + np.concatenate([offsets.T, np.zeros((points, 1))], axis=1)
    return camera.project(outline)


def _draw_ear(canvas, identity, camera, outline, sign):
    _fill(canvas, camera.head(outline), _shade(identity.skin, 0.9))
    inner = outline * np.array([1.0, 0.55, 0.5]) + np.array([sign * 0.006, 0.03 * 0.45, 0.01 * 0.5])
    if camera.facing(np.array([sign, 0.0, 0.0])) < -0.2:
        _fill(canvas, camera.head(inner), _shade(identity.skin, 0.72))


def _draw_hair_behind(canvas, identity, geometry, camera):
    """Hair that the skull covers: long hair, a bun, and the cap's whole outline, whose rim
    stands out of the skull's silhouette wherever the cap is."""
    if geometry.hair_cap is not None:
        hull = cv2.convexHull(camera.head(geometry.hair_cap).reshape(-1, 1, 2))
        _fill(canvas, hull, _shade(identity.hair, 0.92))
    if geometry.hair_back is not None:
        _fill(canvas, camera.head(geometry.hair_back), _shade(identity.hair, 0.85))
    if geometry.hair_bun is not None:
        centre, radius = geometry.hair_bun
        if camera.facing(np.array([0.0, -0.5, 0.85])) > -0.3:
            ring = centre + radius * np.concatenate([_UNIT_CIRCLE_24, np.zeros((24, 1))], axis=1)
            _fill(canvas, camera.head(ring), identity.hair)


def _draw_hair_cap(canvas, identity, geometry, camera):
    if geometry.hair_cap is None:
        return
    # Only the part of the cap turned toward the camera is seen (the skull hides the rest); a
    # small tolerance keeps the rim, which stands out of the skull's silhouette.
    facing = (geometry.hair_cap_normals @ camera.rotation.T)[..., 2]
    visible = facing < 0.15 * np.linalg.norm(geometry.hair_cap_normals, axis=-1)
    pixels = camera.head(geometry.hair_cap)
    for wedge, seen in zip(pixels, visible):
        if seen.sum() >= 3:
            hull = cv2.convexHull(wedge[seen].reshape(-1, 1, 2))
            cv2.fillConvexPoly(canvas, hull, (*identity.hair, 255), cv2.LINE_AA, _SHIFT_BITS)
def _project_surface(identity: Identity, camera: "_Camera", outlines: list[np.ndarray]) -> list[np.ndarray]:
    """Face-surface outlines (each (K, 2) in (u, v)) -> pixel polygons, in one projection:
    per-call numpy overhead, not arithmetic, is what a frame of small polygons costs."""
    uv = np.concatenate(outlines)
    pixels = camera.head(_face_surface(identity, uv[:, 0], uv[:, 1]))
    return np.split(pixels, np.cumsum([len(o) for o in outlines])[:-1])


def _draw_eyes(canvas, identity, expression, camera, line_width):
    for side in (-1.0, 1.0):
        sclera, iris, pupil, lid, openness = _eye_outlines(identity, side, expression)
        centre = _face_surface(identity, np.array(side * identity.eye_spacing), np.array(identity.eye_height))
        if camera.facing(_surface_normal(identity, centre)) > -0.05:
            continue
        brow = _brow_outline(identity, side, expression)
        sclera, iris, pupil, lid, brow = _project_surface(identity, camera, [sclera, iris, pupil, lid, brow])
        if openness > 0.04:
            _fill(canvas, sclera, (240, 238, 232))
            _fill(canvas, iris, identity.iris)
            _fill(canvas, pupil, (12, 10, 10))
        _line(canvas, lid, _shade(identity.brows, 0.6), line_width)
        _fill(canvas, brow, identity.brows)


def _draw_mouth(canvas, identity, expression, camera, line_width):
    lips, inner, teeth, seam, opening = _mouth_outlines(identity, expression)
    centre = _face_surface(identity, np.array(0.0), np.array(seam[4, 1]))
    if camera.facing(_surface_normal(identity, centre)) > -0.05:
        return
    lips, inner, teeth, seam = _project_surface(identity, camera, [lips, inner, teeth, seam])
    _fill(canvas, lips, identity.lips)
    if opening > 0.004:
        _fill(canvas, inner, (60, 18, 22))
        _fill(canvas, teeth, (236, 232, 220))
    else:
        _line(canvas, seam, _shade(identity.lips, 0.6), line_width)


def _draw_nose(canvas, identity, geometry, camera):
    """Three shaded faces (the two sides, the underside), the one turned furthest away first,
    then the nostrils when the underside can be seen."""
    pixels = camera.head(geometry.nose_points)
    normals = geometry.nose_normals @ camera.rotation.T
    light = np.asarray(identity.light)
    for index in np.argsort(-normals[:, 2]):
        if normals[index, 2] < 0.0:
            brightness = 0.75 + 0.35 * max(0.0, float(-normals[index] @ light))
            _fill(canvas, pixels[list(_NOSE_FACES[index])], _shade(identity.skin, brightness))
    if camera.facing(np.array([0.0, 0.6, -0.8])) < 0.0:
        for nostril in (pixels[5:17], pixels[17:29]):
            _fill(canvas, nostril, _shade(identity.skin, 0.45))


def _glasses_rings(identity: Identity) -> list[np.ndarray]:
    depth = -identity.head_depth - 0.01
    rings = []
    for side in (-1.0, 1.0):
        ring = np.stack([side * identity.eye_spacing + identity.eye_size * 1.35 * _UNIT_CIRCLE_24[:, 0],
                         identity.eye_height + 0.005 + identity.eye_size * 1.0 * _UNIT_CIRCLE_24[:, 1],
                         np.full(24, depth)], -1)
        rings.append(ring)
    return rings


def _draw_glasses(canvas, identity, camera, thickness):
    rings = _glasses_rings(identity)
    for side, ring in zip((-1.0, 1.0), rings):
        _line(canvas, camera.head(ring), identity.glasses_colour, thickness, closed=True)
        if camera.facing(np.array([side, 0.0, 0.0])) < -0.25:
            temple = np.array([ring[0 if side > 0 else 12], [side * identity.head_width, identity.eye_height, 0.0]])
            _line(canvas, camera.head(temple), identity.glasses_colour, thickness)
    bridge = np.array([rings[0][0], rings[1][12]])
    _line(canvas, camera.head(bridge), identity.glasses_colour, thickness)


def _draw_body(canvas, identity, geometry, camera):
    """Shoulders, neck, and the hair that hangs behind the head."""
    neck = np.concatenate([camera.head(geometry.neck), camera.body(np.array([[0.16, 0.7], [-0.16, 0.7]]))])
    _fill(canvas, camera.body(geometry.body), identity.clothing)
    _fill(canvas, neck, _shade(identity.skin, 0.8))
    _draw_hair_behind(canvas, identity, geometry, camera)


def _draw_head(canvas, identity, geometry, camera, expression):
    """Skull, jaw (dropping with the mouth), ears behind or in front of it, the hair cap."""
    ears_in_front = []
    for sign, outline in zip((-1.0, 1.0), geometry.ears):
        if camera.facing(np.array([sign, 0.0, 0.0])) < -0.25:
            ears_in_front.append((sign, outline))
        else:
            _draw_ear(canvas, identity, camera, outline, sign)
    opening = 0.075 * float(np.clip(expression.mouth_open, 0.0, 1.0))
    _fill(canvas, _silhouette(identity, camera), identity.skin)
    _fill(canvas, camera.head(_jaw_outline(identity, opening)), identity.skin)
    for sign, outline in ears_in_front:
        _draw_ear(canvas, identity, camera, outline, sign)
    _draw_hair_cap(canvas, identity, geometry, camera)


def _draw_face(canvas, identity, geometry, camera, expression, line_width):
    _draw_eyes(canvas, identity, expression, camera, line_width)
    _draw_mouth(canvas, identity, expression, camera, line_width)
    _draw_nose(canvas, identity, geometry, camera)
    if identity.glasses:
        _draw_glasses(canvas, identity, camera, line_width + 1)


def render(identity: Identity, pose: Pose = Pose(), expression: Expression = Expression(),
           size: int = 128, with_mask: bool = False):
    """``identity`` with ``pose`` and ``expression`` as a ``(size, size, 3)`` uint8 RGB image.

    With ``with_mask``, returns ``(image, mask)``: ``mask`` (size, size) uint8 is the person's
    coverage (255 on the head, hair, neck and shoulders, 0 on the backdrop, soft at edges), the
    foreground the paper computes its losses on. Deterministic: the same arguments always give
    the same bytes.
    """
    canvas_size = size * _SUPERSAMPLE
    canvas = _background(identity, canvas_size).copy()
    camera = _Camera(pose, canvas_size)
    geometry = _static_geometry(identity)
    _draw_body(canvas, identity, geometry, camera)
    _draw_head(canvas, identity, geometry, camera, expression)
    if camera.facing(np.array([0.0, 0.0, -1.0])) < 0.2:
        _draw_face(canvas, identity, geometry, camera, expression, line_width=max(1, round(canvas_size / 128)))
    rgba = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    image = cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
    return (image, cv2.extractChannel(rgba, 3)) if with_mask else image


def cross_reenactment_ground_truth(identity: Identity, motion: HeadMotion, size: int = 128) -> np.ndarray:
    """``identity`` performing ``motion`` (taken from anyone): the image a perfect model would
    produce when ``identity``'s photo is driven by a frame showing ``motion``. With the source's
    own identity this is the self-reenactment target, with another's the cross-reenactment one."""
    return render(identity, motion.pose, motion.expression, size)


def render_clip(identity: Identity, motions: Sequence[HeadMotion], size: int = 128) -> np.ndarray:
    """A video of ``identity`` following ``motions``: ``(T, size, size, 3)`` uint8 RGB."""
    frames = np.empty((len(motions), size, size, 3), np.uint8)
    for index, motion in enumerate(motions):
        frames[index] = render(identity, motion.pose, motion.expression, size)
    return frames


# ----------------------------------------------------------------------------------------------
# Smooth motion: a talking head over time
# ----------------------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, frames: int, fps: float, timescale_s: float) -> np.ndarray:
    """Zero-mean, unit-deviation noise whose wiggles last about ``timescale_s`` seconds."""
    sigma = max(timescale_s * fps, 0.5)
    radius = int(3 * sigma) + 1
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    white = rng.normal(0.0, 1.0, frames + 2 * radius)
    smooth = np.convolve(white, kernel / kernel.sum(), mode="valid")[:frames]
    return (smooth - smooth.mean()) / (smooth.std() + 1e-8) if frames > 1 else smooth * 0.0


def _speech_mouth(rng: np.random.Generator, frames: int, fps: float) -> np.ndarray:
    """Mouth opening of speech: syllables at about 4 Hz inside phrases separated by pauses."""
    speaking = np.zeros(frames)
    t = 0
    while t < frames:
        phrase = int(rng.uniform(1.0, 3.0) * fps)
        speaking[t:t + phrase] = 1.0
        t += phrase + int(rng.uniform(0.2, 0.9) * fps)
    envelope = np.convolve(speaking, np.ones(max(1, int(0.1 * fps))) / max(1, int(0.1 * fps)), mode="same")
    rate_hz = 4.0 + 1.0 * _smooth_noise(rng, frames, fps, 0.5)
    phase = np.cumsum(2 * np.pi * rate_hz / fps) + rng.uniform(0, 2 * np.pi)
    syllables = 0.5 - 0.5 * np.cos(phase)
    loudness = np.clip(0.6 + 0.25 * _smooth_noise(rng, frames, fps, 0.7), 0.1, 1.0)
    return np.clip(envelope * syllables * loudness, 0.0, 1.0)


def _blinks(rng: np.random.Generator, frames: int, fps: float) -> np.ndarray:
    """Eye closure with blinks every few seconds: ~80 ms closing, ~150 ms opening."""
    closure = np.zeros(frames)
    t = rng.exponential(2.0)
    time_s = np.arange(frames) / fps
    while t < frames / fps:
        closing = np.clip((time_s - t) / 0.08 + 1.0, 0.0, 1.0)
        opening = np.clip(1.0 - (time_s - t) / 0.15, 0.0, 1.0)
        closure = np.maximum(closure, np.where(time_s <= t, closing, opening))
        t += 0.25 + rng.exponential(3.0)
    return closure


def random_motion_track(rng: np.random.Generator, frames: int, fps: float = 25.0) -> list[HeadMotion]:
    """A smooth talking-head performance: head sway, speech, blinks, smiles, brow raises and
    gaze shifts, each a smooth curve of time. Used for demo driving videos and evaluation."""
    def curve(timescale_s, amplitude, centre=0.0):
        return centre + amplitude * _smooth_noise(rng, frames, fps, timescale_s)

    yaw, pitch, roll = curve(1.2, 0.22), curve(1.0, 0.08), curve(1.5, 0.06)
    tx, ty, scale = curve(1.5, 0.025), curve(1.2, 0.02), curve(2.0, 0.025, 1.0)
    mouth = _speech_mouth(rng, frames, fps)
    pitch = pitch + 0.03 * mouth  # nodding slightly along with speech
    eye_closure = np.clip(np.maximum(_blinks(rng, frames, fps), curve(2.0, 0.06, 0.08)), 0.0, 1.0)
    smile = np.clip(curve(2.5, 0.25, 0.25), -0.2, 1.0)
    brows = np.clip(curve(0.8, 0.35, 0.1) + 0.3 * mouth, -0.5, 1.0)
    gaze_x = np.clip(np.round(curve(1.0, 1.2)) * 0.25, -0.8, 0.8)  # saccades: steps ...
    gaze_x = np.convolve(gaze_x, np.ones(3) / 3, mode="same") if frames >= 3 else gaze_x  # ... not jumps
    gaze_y = np.clip(curve(1.5, 0.15), -0.5, 0.5)
    return [
        HeadMotion(
            Pose(scale=float(scale[i]), yaw=float(np.clip(yaw[i], -0.7, 0.7)), pitch=float(pitch[i]),
                 roll=float(roll[i]), tx=float(tx[i]), ty=float(ty[i]), tz=0.0),
            Expression(mouth_open=float(mouth[i]), smile=float(smile[i]), eye_closure=float(eye_closure[i]),
                       brow_raise=float(brows[i]), gaze_x=float(gaze_x[i]), gaze_y=float(gaze_y[i])),
        )
        for i in range(frames)
    ]


# ----------------------------------------------------------------------------------------------
# Torch dataset
# ----------------------------------------------------------------------------------------------

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
