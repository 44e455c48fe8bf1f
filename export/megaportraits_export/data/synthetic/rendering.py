"""Drawing a synthetic person: the backdrop, then body, head and face back to front, at twice
the output size, then an area downsample; the canvas's alpha is the foreground mask."""
from __future__ import annotations

import functools
import math
from typing import Sequence

import cv2
import numpy as np

from megaportraits_export.data.synthetic.camera import _SHIFT_BITS, _Camera, _fill, _line, _shade
from megaportraits_export.data.synthetic.geometry import (
    _NOSE_FACES,
    _UNIT_CIRCLE_24,
    _brow_outline,
    _eye_outlines,
    _face_surface,
    _jaw_outline,
    _mouth_outlines,
    _static_geometry,
    _surface_normal,
)
from megaportraits_export.data.synthetic.parameters import Expression, HeadMotion, Identity, Pose

_SUPERSAMPLE = 2  # drawn at twice the output size, then area-downsampled
_BACKGROUND_STREAM = 0xB6  # the backdrop's own stream of the identity RNG (see parameters._IDENTITY_STREAM)


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
           size: int = 128, with_mask: bool = False, face_features: bool = True):
    """``identity`` with ``pose`` and ``expression`` as a ``(size, size, 3)`` uint8 RGB image.

    With ``with_mask``, returns ``(image, mask)``: ``mask`` (size, size) uint8 is the person's
    coverage (255 on the head, hair, neck and shoulders, 0 on the backdrop, soft at edges), the
    foreground the paper computes its losses on. Deterministic: the same arguments always give
    the same bytes. ``face_features=False`` leaves out the eyes, brows, mouth, nose and glasses
    (a bare head): where the two renderings differ is where the face's features are.
    """
    canvas_size = size * _SUPERSAMPLE
    canvas = _background(identity, canvas_size).copy()
    camera = _Camera(pose, canvas_size)
    geometry = _static_geometry(identity)
    _draw_body(canvas, identity, geometry, camera)
    _draw_head(canvas, identity, geometry, camera, expression)
    if face_features and camera.facing(np.array([0.0, 0.0, -1.0])) < 0.2:
        _draw_face(canvas, identity, geometry, camera, expression, line_width=max(1, round(canvas_size / 128)))
    rgba = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    image = cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)
    return (image, cv2.extractChannel(rgba, 3)) if with_mask else image


def render_backdrop(identity: Identity, size: int = 128) -> np.ndarray:
    """``identity``'s backdrop alone as ``(size, size, 3)`` uint8 RGB, drawn and downsampled as
    :func:`render` draws it: what a rendering shows where its mask is 0 (the enhancer's training
    composites its frames over it, as the SDK composites over the source's backdrop)."""
    canvas = _background(identity, size * _SUPERSAMPLE)
    return cv2.cvtColor(cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_RGBA2RGB)


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
