"""Which point of the source image a driver pixel shows: the true correspondence of two renderings.

Why: every motion the model learns (the warps of the volume, the source-pixel path's flow) is a
guess at this map, and the synthetic heads know it exactly where the face's features are: eyes,
brows and mouth lie on the skull's ellipsoid (:mod:`.geometry`). Casting the ray of a driver
pixel through the renderer's own camera (:mod:`.camera`) onto the skull of the driver's pose
gives a point of the head; projecting that point with the source's pose gives the source pixel
that shows it. This is what an oracle of the motion warps with (``tools/probe_pose_precision.py``:
how precise the poses must be for the expression to show), and what a motion can be taught.

Only the skull is modelled: the nose stands out of it, the jaw drops below it when the mouth
opens, hair, ears, neck and torso have their own geometry. ``seen`` marks the pixels that are on
the skull's front in the driver's image and whose point faces the source's camera; elsewhere the
returned point is the pixel itself. Occlusion by the nose, the ears or the hair is not tested.
"""
from __future__ import annotations

import numpy as np

from megaportraits_export.data.synthetic.camera import CAMERA_DISTANCE, HEAD_UNIT
from megaportraits_export.data.synthetic.parameters import Identity, Pose


def pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y), each (size, size): the normalised image coordinates of the pixel centres, the
    convention of ``grid_sample(align_corners=False)`` and of the renderer's camera."""
    centres = (2.0 * np.arange(size) + 1.0) / size - 1.0
    return np.meshgrid(centres, centres)


def _pose_transform(pose: Pose) -> tuple[np.ndarray, float, np.ndarray]:
    return pose.rotation(), pose.scale * HEAD_UNIT, np.array([pose.tx, pose.ty, pose.tz])


def _skull_radii(identity: Identity) -> np.ndarray:
    return np.array([identity.head_width, identity.head_height, identity.head_depth])


def skull_points(identity: Identity, pose: Pose, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each pixel's ray through the camera onto the front of the skull of ``identity`` in ``pose``.

    Returns ``(head_points, camera_depth, hit)``: (size, size, 3) points in the head's frame,
    (size, size) their depth z in camera coordinates (the model's volume z), and (size, size)
    bool where the ray meets the skull's front half (where the face's features are drawn).
    """
    x, y = pixel_centres(size)
    rotation, scale, translation = _pose_transform(pose)
    radii = _skull_radii(identity)
    # A camera point on the pixel's ray at depth z: (x, y, 0) + z (x / d, y / d, 1) (the camera's
    # perspective, camera.project); in the head's frame, divided by the radii, it is o + z v.
    origin = np.stack([x, y, np.zeros_like(x)], axis=-1)
    direction = np.stack([x / CAMERA_DISTANCE, y / CAMERA_DISTANCE, np.ones_like(x)], axis=-1)
    o = ((origin - translation) @ rotation) / scale / radii
    v = (direction @ rotation) / scale / radii
    a, b, c = (v * v).sum(-1), 2.0 * (o * v).sum(-1), (o * o).sum(-1) - 1.0
    discriminant = b * b - 4.0 * a * c
    depth = (-b - np.sqrt(np.clip(discriminant, 0.0, None))) / (2.0 * a)  # the nearer of the two
    head_points = (o + depth[..., None] * v) * radii
    hit = (discriminant > 0.0) & (head_points[..., 2] < 0.0)
    return head_points, depth, hit


def skull_correspondence(identity: Identity, source_pose: Pose, driver_pose: Pose,
                         size: int) -> tuple[np.ndarray, np.ndarray]:
    """(points, seen): for each pixel of ``identity`` drawn in ``driver_pose``, the normalised
    (x, y) of the source image (``identity`` in ``source_pose``) that shows the same point of the
    skull, (size, size, 2) float32, ready for ``grid_sample``; and (size, size) bool where that
    holds (module doc). Unseen pixels map to themselves."""
    head_points, _, hit = skull_points(identity, driver_pose, size)
    rotation, scale, translation = _pose_transform(source_pose)
    camera_points = scale * head_points @ rotation.T + translation
    projected = camera_points[..., :2] * (CAMERA_DISTANCE / (camera_points[..., 2:3] + CAMERA_DISTANCE))
    radii = _skull_radii(identity)
    normals = (head_points / radii ** 2) @ rotation.T
    from_camera = camera_points - np.array([0.0, 0.0, -CAMERA_DISTANCE])
    seen = hit & ((normals * from_camera).sum(-1) < 0.0)
    x, y = pixel_centres(size)
    points = np.where(seen[..., None], projected, np.stack([x, y], axis=-1))
    return points.astype(np.float32), seen
