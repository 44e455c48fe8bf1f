"""The warps of MegaPortraits: the one implementation used by training, the reference and export.

Coordinates are normalised (x, y, z) in [-1, 1] with align_corners=False, x along W, y along H,
z along D, exactly what ``torch.nn.functional.grid_sample`` and ONNX GridSample read. A pose
``theta`` (N, 3, 4) maps a point of camera space (where the source or driver volume lives) to
canonical space. The rigid transform and the learned deformation are composed into ONE sampling
grid per warp (docs/design.md, "Warp semantics"), so the wide feature volume is sampled once per warp
and only the 3-channel deformation field is ever resampled:

- source -> canonical: g_s(p) = theta_s^-1 (p + D_s(p))      (field read at p, no resampling)
- canonical -> driver: g_d(p) = q + D_d(q), q = theta_d p     (field trilinearly sampled at q)
- v = sample_volume(volume, g): trilinear, zero padding, align_corners=False.

The pose is theta = S R T as 4x4 homogeneous matrices, applied right to left: translate by t,
rotate by R = R_roll(z) R_pitch(x) R_yaw(y), then scale per axis by s. Its inverse is
T^-1 R^T S^-1, i.e. the 3x4 matrix [R^T diag(1/s) | -t], computed in closed form (no
torch.linalg) so every graph that contains it exports to plain ONNX MatMul/Mul/Add.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

VolumeSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def torch_volume_sampler(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The default sampler: torch grid_sample, trilinear, zero padding, align_corners=False."""
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


_volume_sampler: VolumeSampler = torch_volume_sampler


def sample_volume(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample ``volume`` (N, C, D, H, W) at ``grid`` (N, D', H', W', 3) -> (N, C, D', H', W').

    The one heavy 5-D sample of each warp. It goes through the currently installed sampler so
    the exporter can swap in the ``com.megaportraits::GridSample3D`` custom op without the model
    knowing (see :func:`use_volume_sampler`).
    """
    return _volume_sampler(volume, grid)


@contextlib.contextmanager
def use_volume_sampler(sampler: VolumeSampler) -> Iterator[VolumeSampler]:
    """Route every :func:`sample_volume` call through ``sampler`` inside the ``with`` block.

    ``sampler(volume, grid)`` must behave like :func:`torch_volume_sampler`. The previous
    sampler is restored on exit, also when the block raises.
    """
    global _volume_sampler
    previous = _volume_sampler
    _volume_sampler = sampler
    try:
        yield sampler
    finally:
        _volume_sampler = previous


def current_volume_sampler() -> VolumeSampler:
    return _volume_sampler


def identity_grid(depth: int, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(D, H, W, 3) normalised voxel centres, (x, y, z) order, align_corners=False.

    Sampling a volume at this grid returns the volume itself.
    """
    def centres(n: int) -> torch.Tensor:
        return (torch.arange(n, device=device, dtype=dtype) * 2 + 1) / n - 1

    z, y, x = torch.meshgrid(centres(depth), centres(height), centres(width), indexing="ij")
    return torch.stack((x, y, z), dim=-1)


def rotation_matrix(rotation: torch.Tensor) -> torch.Tensor:
    """(N, 3) yaw, pitch, roll in radians -> (N, 3, 3) R = R_roll(z) R_pitch(x) R_yaw(y).

    Yaw turns about the vertical (y) axis, pitch about the horizontal (x) axis, roll about the
    viewing (z) axis; each is a right-handed rotation of the (x, y, z) coordinates, which are
    image-aligned (x to the right, y down the rows, z along the volume's depth index). E.g. a yaw
    of +90 degrees maps (x, y, z) to (z, y, -x).
    """
    yaw, pitch, roll = rotation.unbind(-1)
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cp, sp = torch.cos(pitch), torch.sin(pitch)
    cr, sr = torch.cos(roll), torch.sin(roll)
    r_yaw = _matrix3(cy, zero, sy, zero, one, zero, -sy, zero, cy)
    r_pitch = _matrix3(one, zero, zero, zero, cp, -sp, zero, sp, cp)
    r_roll = _matrix3(cr, -sr, zero, sr, cr, zero, zero, zero, one)
    return r_roll @ r_pitch @ r_yaw


def _matrix3(*entries: torch.Tensor) -> torch.Tensor:
    return torch.stack(entries, dim=-1).reshape(*entries[0].shape, 3, 3)


def pose_matrix(scale: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """theta = S R T as (N, 3, 4): theta p = diag(scale) R (p + translation).

    ``scale`` (N, 3) per-axis factors, ``rotation`` (N, 3) yaw/pitch/roll in radians,
    ``translation`` (N, 3) in normalised units. Differentiable in all three.
    """
    linear = scale.unsqueeze(-1) * rotation_matrix(rotation)
    offset = linear @ translation.unsqueeze(-1)
    return torch.cat((linear, offset), dim=-1)


def pose_from_parameters(parameters: torch.Tensor) -> torch.Tensor:
    """(N, 7) pose parameters, (isotropic scale, yaw, pitch, roll, tx, ty, tz) as the synthetic
    heads label their images (``*_pose_params``, ``Pose.model_parameters``) -> (N, 3, 4) theta."""
    return pose_matrix(parameters[:, :1].expand(-1, 3), parameters[:, 1:4], parameters[:, 4:7])


def invert_pose(pose: torch.Tensor) -> torch.Tensor:
    """The inverse of a 3x4 transform theta = [A | b] as a 3x4 matrix [A^-1 | -A^-1 b].

    A is inverted in closed form (adjugate over determinant), which is exact for any invertible
    A (so also for predicted poses that are not exactly S R) and exports as elementwise ONNX ops.
    """
    linear, offset = pose[..., :3], pose[..., 3:]
    inverse = _inverse3x3(linear)
    return torch.cat((inverse, -(inverse @ offset)), dim=-1)


def _inverse3x3(m: torch.Tensor) -> torch.Tensor:
    a, b, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    d, e, f = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    g, h, i = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    co_a, co_b, co_c = e * i - f * h, f * g - d * i, d * h - e * g
    determinant = a * co_a + b * co_b + c * co_c
    adjugate = _matrix3(
        co_a, c * h - b * i, b * f - c * e,
        co_b, a * i - c * g, c * d - a * f,
        co_c, b * g - a * h, a * e - b * d)
    return adjugate / determinant[..., None, None]


def transform_points(pose: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply (N, 3, 4) ``pose`` to points (N, D, H, W, 3) or (D, H, W, 3) -> (N, D, H, W, 3)."""
    n = pose.shape[0]
    grid_shape = points.shape[-4:]
    flat = points.reshape(-1, grid_shape[0] * grid_shape[1] * grid_shape[2], 3)
    moved = flat @ pose[:, :, :3].transpose(1, 2) + pose[:, None, :, 3]
    return moved.reshape(n, *grid_shape)


def source_grid(pose: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
    """g_s(p) = theta_s^-1 (p + D_s(p)): where each canonical voxel reads the source volume.

    ``pose`` (N, 3, 4) is the source's theta_s, ``deformation`` (N, D, H, W, 3) the field of
    W_s-> on the canonical grid. Returns the sampling grid (N, D, H, W, 3).
    """
    d, h, w = deformation.shape[1:4]
    canonical = identity_grid(d, h, w, device=deformation.device, dtype=deformation.dtype)
    return transform_points(invert_pose(pose), canonical + deformation)


def driver_grid(pose: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
    """g_d(p) = q + D_d(q), q = theta_d p: where each driver voxel reads the canonical volume.

    ``pose`` (N, 3, 4) is the driver's theta_d, ``deformation`` (N, D, H, W, 3) the field of
    W_->d on the canonical grid; it is resampled (trilinear, zero padding) at q, the one cheap
    3-channel GridSample of this warp.
    """
    d, h, w = deformation.shape[1:4]
    q = transform_points(pose, identity_grid(d, h, w, device=deformation.device, dtype=deformation.dtype))
    field = deformation.permute(0, 4, 1, 2, 3)
    field_at_q = F.grid_sample(field, q, mode="bilinear", padding_mode="zeros", align_corners=False)
    return q + field_at_q.permute(0, 2, 3, 4, 1)
