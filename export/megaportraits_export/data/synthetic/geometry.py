"""Geometry of the head in its own frame (x right, y down, z backward; the face looks toward -z):
the skull's surface, the parts that never move (hair, ears, neck, nose), computed once per
identity, and the outlines that follow the expression (eyes, brows, mouth, jaw)."""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from megaportraits_export.data.synthetic.parameters import Expression, Identity


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
