"""The source-pixel path: the source image itself, warped to the driver, for G2D.

Why: in a small model the canonical volume is coarse (``demo128``: 32 x 32 cells for a 128 px
image, an eye two voxels wide), and G2D renders eyes, brows and mouth as a blur whatever the
expression code says, even for a head driven by itself (docs/demo_model.md). Where the source's
features are seen by the driver, its own pixels, moved, are sharper than anything the volume can
hold; G2D adds them to its upsampling stages and blends them into its colours with a mask it
predicts (networks/image_generator.py).

The motion of the pixels is the volume's motion in its geometric form, with its own learned
expression field, anchored at the source (session 7 first composed the volume's own warps g_s and
g_d: a learned canonical volume absorbs any consistent distortion, so those warps are far from
correspondences, and training them to be ones fought the volume path; docs/demo_model.md). For a
driver voxel p (normalised driver camera coordinates), with theta the head poses:

    q = theta_d p                                   the canonical point the driver shows there
    c = q + M(m_d, e_s)(q) - M(m_s, e_s)(q)         moved by the change of motion beyond the rigid
    x_s = theta_s^-1 c                              where the source image shows that point

With ``config.camera_distance`` d > 0 the driver voxel is first unprojected through a pinhole
camera at distance d, p = (x (z + d) / d, y (z + d) / d, z), and x_s projected back: a head drawn
in perspective (the synthetic heads are) then moves as a rigid body does, which an orthographic
motion misses by a pixel at the face's edges.

M is a warping generator (the same architecture as W_s-> and W_->d, its own weights), read at q
(trilinear, zero padding); its code m = z + L(theta) is the expression code plus a learned
linear map of the pose (zero at the start), because a drawn head does not turn like a rigid
body. Because only the *difference* of the driver's and the source's motion moves the point, the
source driven by its own pose and expression is the identity warp by construction.

Which point a driver pixel shows is a learned softmax (a 1x1 conv on the driver volume, its depth
folded into the channels) over D + 1 candidates: the D depths of the volume, the surface that is
seen, and the pixel itself, unmoved, for what does not move with the head (the torso, the
backdrop: session 7 measured a rigid warp of the whole person scoring under the unmoved source).
That gives a 2-D flow at the volume's side; upsampled bilinearly, it warps the source image at
full resolution, with border padding: a point beyond the image's edge shows the edge's pixel (a
head moved up pulls its torso from below the frame; zero padding drew a black band there, and
cost 0.6 dB of `evaluate`'s whole image, session 10).

Cost per frame: M twice (small next to G3D/G2D), one 3-channel GridSample at the volume's size and
one RGB GridSample at the output's; the one heavy volume sample per frame stays the only one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..warp import identity_grid, invert_pose, transform_points
from .blocks import plain_conv
from .warping_generator import WarpingGenerator


def unproject(points: torch.Tensor, distance: float) -> torch.Tensor:
    """Image points (x, y) at depth z -> camera points through a pinhole at ``distance``."""
    spread = (points[..., 2:] + distance) / distance
    return torch.cat((points[..., :2] * spread, points[..., 2:]), dim=-1)


def project(points: torch.Tensor, distance: float) -> torch.Tensor:
    """The inverse of :func:`unproject`: camera points -> (x, y) of the image, z kept."""
    spread = (points[..., 2:] + distance).clamp_min(1e-3) / distance
    return torch.cat((points[..., :2] / spread, points[..., 2:]), dim=-1)


class SourcePixelWarp(nn.Module):
    """(driver volume, driver motion, source motion, e_s, source image) -> the source image as the driver sees it."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.camera_distance = config.camera_distance
        self.expression_motion = WarpingGenerator(config)
        self.pose_to_code = nn.Linear(12, config.expression_dim)
        # zero: every candidate (D depths and the unmoved pixel) weighs the same at the start
        self.surface = plain_conv(2, config.volume_channels * config.volume_depth, config.volume_depth + 1, 1)
        with torch.no_grad():
            for layer in (self.pose_to_code, self.surface):
                layer.weight.zero_()
                layer.bias.zero_()

    def motion_code(self, pose: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """m = z + L(theta): what M reads."""
        return expression + self.pose_to_code(pose.flatten(1))

    def source_points(self, pose: torch.Tensor, expression: torch.Tensor, source_pose: torch.Tensor,
                      source_expression: torch.Tensor, descriptor: torch.Tensor) -> torch.Tensor:
        """(N, D, H, W, 3): x_s, the point of the source each driver voxel shows, as the source
        image's (x, y) and a depth (module doc)."""
        change = (self.expression_motion(self.motion_code(pose, expression), descriptor)
                  - self.expression_motion(self.motion_code(source_pose, source_expression), descriptor))
        d, h, w = change.shape[1:4]
        p = identity_grid(d, h, w, device=change.device, dtype=change.dtype)
        if self.camera_distance:
            p = unproject(p, self.camera_distance)
        q = transform_points(pose, p)
        change_at_q = F.grid_sample(change.permute(0, 4, 1, 2, 3), q, mode="bilinear", padding_mode="zeros",
                                    align_corners=False)
        points = transform_points(invert_pose(source_pose), q + change_at_q.permute(0, 2, 3, 4, 1))
        return project(points, self.camera_distance) if self.camera_distance else points

    def flow(self, driver_volume: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """(N, 2, H, W): the source image point (x, y), normalised, that each driver pixel of the
        volume's side shows: the softmax-weighted candidates, ``points`` (N, D, H, W, 3) at each
        depth and the pixel itself."""
        n, d, h, w, _ = points.shape
        visibility = torch.softmax(self.surface(driver_volume.flatten(1, 2)), dim=1)
        unmoved = identity_grid(1, h, w, device=points.device, dtype=points.dtype)[..., :2]
        candidates = torch.cat((points[..., :2], unmoved.expand(n, 1, h, w, 2)), dim=1)
        return (visibility[..., None] * candidates).sum(dim=1).permute(0, 3, 1, 2)

    def forward(self, driver_volume: torch.Tensor, pose: torch.Tensor, expression: torch.Tensor,
                source_pose: torch.Tensor, source_expression: torch.Tensor, descriptor: torch.Tensor,
                source_image: torch.Tensor) -> tuple:
        """(the source image as the driver sees it, (N, 2, s, s) the source point each of its pixels
        shows: the flow, for the ``source_flow`` loss)."""
        points = self.source_points(pose, expression, source_pose, source_expression, descriptor)
        flow = F.interpolate(self.flow(driver_volume, points), size=source_image.shape[-2:], mode="bilinear",
                             align_corners=False)
        warped = F.grid_sample(source_image, flow.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border",
                               align_corners=False)
        return warped, flow
