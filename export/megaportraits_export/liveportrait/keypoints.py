"""LivePortrait's keypoint maths in PyTorch, for the reference pipeline the bundle is checked
against (the SDK's numpy twin is :mod:`megaportraits.motion_liveportrait`).

    angle (degrees) = sum_b softmax(logits)_b * b * 3 - 97.5          (66 bins of 3 degrees)
    R = (R_z(roll) R_y(yaw) R_x(pitch))^T                              (applied to row vectors)
    x = s * (x_c R + delta) + (t_x, t_y, 0)
"""
from __future__ import annotations

import math

import torch

BIN_DEGREES = 3.0
ANGLE_OFFSET = 97.5


def bins_to_degrees(logits: torch.Tensor) -> torch.Tensor:
    """(N, B) bin logits -> (N,) degrees."""
    bins = torch.arange(logits.shape[1], dtype=logits.dtype, device=logits.device)
    return (torch.softmax(logits, dim=1) * bins).sum(1) * BIN_DEGREES - ANGLE_OFFSET


def rotation(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Degrees (N,) -> (N, 3, 3), the matrix that right-multiplies row-vector keypoints."""
    x, y, z = (a * (math.pi / 180.0) for a in (pitch, yaw, roll))
    one, zero = torch.ones_like(x), torch.zeros_like(x)

    def mat(*rows):
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    rx = mat((one, zero, zero), (zero, x.cos(), -x.sin()), (zero, x.sin(), x.cos()))
    ry = mat((y.cos(), zero, y.sin()), (zero, one, zero), (-y.sin(), zero, y.cos()))
    rz = mat((z.cos(), -z.sin(), zero), (z.sin(), z.cos(), zero), (zero, zero, one))
    return (rz @ ry @ rx).transpose(1, 2)


def transform(canonical: torch.Tensor, rot: torch.Tensor, expression: torch.Tensor, scale: torch.Tensor,
              translation: torch.Tensor) -> torch.Tensor:
    """x = s (x_c R + delta) + t with t's z dropped; (N, K, 3) each, scale (N, 1), t (N, 3)."""
    t = torch.cat([translation[:, :2], torch.zeros_like(translation[:, 2:])], dim=1)
    return scale[:, :, None] * (canonical @ rot + expression) + t[:, None, :]


def keypoints_of(motion: tuple) -> torch.Tensor:
    """A graph's motion outputs (pitch, yaw, roll, t, exp, scale, kp) -> its own keypoints."""
    pitch, yaw, roll, t, exp, scale, kp = motion
    return transform(kp, rotation(bins_to_degrees(pitch), bins_to_degrees(yaw), bins_to_degrees(roll)),
                     exp, scale, t)
