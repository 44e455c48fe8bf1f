"""LivePortrait's dense motion network: from 21 keypoint pairs to one 3-D deformation field.

Each keypoint k proposes a translation of the whole volume (the source keypoint minus the
driving one, "sparse motion"); a background proposal keeps the identity. A compressed copy of
the feature volume is moved by every proposal, stacked with Gaussian heatmaps of the keypoints,
and a 3-D hourglass predicts a softmax mask over the 22 proposals and an occlusion map. The
field is the mask-weighted mixture of proposals, in grid_sample coordinates.

Two rewrites of the published computation, exact up to float rounding, keep the frame cheap:
the 22 proposals sample the *same* small volume, so they are one 5-D sample of it at a grid
22 times deeper (no 22-fold copy of the volume), and since the mask sums to one the field is
the identity plus the mask-weighted keypoint offsets (no 22 x 3 x D x H x W product).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megaportraits_export.warp import sample_volume

from .blocks import Hourglass
from .config import LivePortraitConfig

KP_VARIANCE = 0.01  # of the keypoint heatmaps, in normalised coordinates


def coordinate_grid(depth: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(D, H, W, 3) normalised (x, y, z) points from -1 to 1 *inclusive* on each axis: LivePortrait's
    grid (the corner-aligned ``linspace``), which its weights were trained with."""
    def axis(n):
        return torch.linspace(-1.0, 1.0, n, dtype=like.dtype, device=like.device)

    z, y, x = torch.meshgrid(axis(depth), axis(height), axis(width), indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def keypoint_heatmaps(keypoints: torch.Tensor, grid: torch.Tensor, flush_below: float | None = None) -> torch.Tensor:
    """(N, K, 3) keypoints -> (N, K, D, H, W) Gaussians exp(-|p - kp|^2 / (2 * 0.01)).

    ``flush_below`` (an exponent, e.g. :data:`HEATMAP_FLUSH_EXPONENT`): values under exp(it) are
    made exactly zero. With variance 0.01 every point between 1.32 and 1.43 (normalised units)
    from a keypoint gets a *subnormal* float32 (below 1.2e-38), and a CPU's multiply-adds on
    subnormal inputs are many times slower: the hourglass convs reading the heatmaps ran at a
    quarter of their speed in ONNX Runtime (profiled). Flushing below exp(-69) changes each
    value by less than 1.03e-30, and a difference of two such heatmaps is then zero or at least
    9e-38 (a normal float: both terms are multiples of 2^-123), so no subnormal reaches a conv."""
    offsets = grid[None, None] - keypoints[:, :, None, None, None, :]
    exponent = (offsets * offsets).sum(-1) * (-0.5 / KP_VARIANCE)
    heatmaps = torch.exp(exponent)
    if flush_below is not None:
        heatmaps = torch.where(exponent > flush_below, heatmaps, torch.zeros_like(heatmaps))
    return heatmaps


HEATMAP_FLUSH_EXPONENT = -69.0  # exp(-69) = 1.0e-30, far above float32's subnormal range (< 1.18e-38)


class DenseMotionNetwork(nn.Module):
    def __init__(self, config: LivePortraitConfig = LivePortraitConfig()):
        super().__init__()
        c = config
        self.num_kp = c.num_kp
        self.hourglass = Hourglass(c.dense_block_expansion, (c.num_kp + 1) * (c.dense_compress + 1),
                                   c.dense_num_blocks, c.dense_max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, c.num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(c.reshape_channel, c.dense_compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(c.dense_compress, affine=True)
        self.occlusion = nn.Conv2d(self.hourglass.out_filters * c.reshape_depth, 1, kernel_size=7, padding=3)

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> tuple:
        """-> (deformation (N, D, H, W, 3), occlusion map (N, 1, H, W))."""
        feature = F.relu(self.norm(self.compress(feature)))
        n, c, d, h, w = feature.shape
        k = self.num_kp
        grid = coordinate_grid(d, h, w, feature)
        shifts = kp_source - kp_driving  # (N, K, 3): each keypoint's proposal moves p to p + shift
        proposals = torch.cat([grid.expand(n, 1, d, h, w, 3),
                               grid[None, None] + shifts[:, :, None, None, None, :]], dim=1)  # (N, K+1, D, H, W, 3)
        moved = sample_volume(feature, proposals.reshape(n, (k + 1) * d, h, w, 3))  # (N, C, (K+1) D, H, W)
        moved = moved.reshape(n, c, k + 1, d, h, w).transpose(1, 2)  # (N, K+1, C, D, H, W)
        heatmaps = keypoint_heatmaps(kp_driving, grid) - keypoint_heatmaps(kp_source, grid)
        heatmaps = torch.cat([heatmaps.new_zeros(n, 1, d, h, w), heatmaps], dim=1)
        stacked = torch.cat([heatmaps[:, :, None], moved], dim=2).reshape(n, (k + 1) * (c + 1), d, h, w)

        prediction = self.hourglass(stacked)
        mask = torch.softmax(self.mask(prediction), dim=1)  # (N, K+1, D, H, W)
        deformation = grid[None] + torch.einsum("nkdhw,nkc->ndhwc", mask[:, 1:], shifts)
        occlusion = torch.sigmoid(self.occlusion(prediction.reshape(n, -1, h, w)))
        return deformation, occlusion
