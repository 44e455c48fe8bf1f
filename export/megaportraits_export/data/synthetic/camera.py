"""The camera and the canvas: head- and body-frame points projected onto the supersampled RGBA
canvas in cv2's fixed-point pixels, and the anti-aliased primitives that draw there."""
from __future__ import annotations

import cv2
import numpy as np

from megaportraits_export.data.synthetic.parameters import Colour, Pose

CAMERA_DISTANCE = 6.0
"""Distance of the pinhole camera from the volume centre, in normalised units; points at depth 0
project unscaled. Large enough that the rigid warp of the model stays nearly affine."""

HEAD_UNIT = 1.35
"""Size of one head-model unit in normalised image units at ``Pose.scale == 1``: chosen so that a
frontal head fills the frame like a VoxCeleb crop (face about half the image height)."""

_SHIFT_BITS = 4  # cv2 fixed-point sub-pixel precision for polygon vertices
_SHIFT_SCALE = float(1 << _SHIFT_BITS)


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
