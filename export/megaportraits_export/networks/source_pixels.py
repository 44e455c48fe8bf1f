"""The source-pixel path: the source image itself, warped to the driver by the model's own warps.

Why: in a small model the canonical volume is coarse (``demo128``: 32 x 32 cells for a 128 px
image, an eye two voxels wide), and G2D renders eyes, brows and mouth as a blur whatever the
expression code says, even for a head driven by itself (docs/demo_model.md). The warps already
know where every driver voxel comes from: the driver grid g_d says where it reads the canonical
volume, and the source grid g_s where that canonical voxel read the source volume, whose (x, y)
are the source image's. Resampling the 3-channel g_s at g_d composes them: per driver voxel, its
point of the source image. A learned softmax over depth (one 1x1x1 conv on the driver volume)
picks the surface that is seen, which gives a 2-D flow at the volume's side; upsampled
bilinearly, it warps the source image at full resolution. G2D adds that image to its upsampling
stages and blends it into its colours with a mask it predicts (networks/image_generator.py), so
features are the source's own pixels, moved by the same pose and expression warps that move the
volume, and the expression code gets a sharp image to be judged on.

The cost is two cheap standard GridSamples (the 3-channel grid at the volume's size, the RGB
image at the output's), so the one heavy volume sample per frame stays the only one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .blocks import plain_conv


class SourcePixelWarp(nn.Module):
    """(driver volume, source coordinates, driver grid, source image) -> the source image as the driver sees it."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        # zero: every depth weighs the same at the start, the flow is the depth-mean point
        self.surface = plain_conv(3, config.volume_channels, 1, 1)
        with torch.no_grad():
            self.surface.weight.zero_()
            self.surface.bias.zero_()

    def flow(self, driver_volume: torch.Tensor, source_coordinates: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """(N, 2, H, W): the source image point (x, y), normalised, that each driver pixel of the volume's side shows."""
        # border: a driver voxel outside the canonical volume takes the nearest canonical voxel's point
        points = F.grid_sample(source_coordinates, grid, mode="bilinear", padding_mode="border", align_corners=False)
        visibility = torch.softmax(self.surface(driver_volume), dim=2)
        return (visibility * points[:, :2]).sum(dim=2)

    def forward(self, driver_volume: torch.Tensor, source_coordinates: torch.Tensor, grid: torch.Tensor,
                source_image: torch.Tensor) -> torch.Tensor:
        flow = self.flow(driver_volume, source_coordinates, grid)
        flow = F.interpolate(flow, size=source_image.shape[-2:], mode="bilinear", align_corners=False)
        return F.grid_sample(source_image, flow.permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros",
                             align_corners=False)


def source_coordinates(grid: torch.Tensor) -> torch.Tensor:
    """The source grid g_s (N, D, H, W, 3) as a 3-channel volume (N, 3, D, H, W): each canonical
    voxel's point of the source volume, which the driver grid can resample like any volume."""
    return grid.permute(0, 4, 1, 2, 3)
