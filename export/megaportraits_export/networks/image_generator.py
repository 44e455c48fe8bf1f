"""The projection P and G2D: the driver volume v_d -> the output image.

P folds the depth into the channels (paper: 96x16 -> 1536 channels at 64x64) and a 1x1 conv
narrows them (to 512). G2D refines at that resolution with residual blocks (paper: 8;
EMOPortraits: 6, used here), then upsamples (nearest, 2x) in stages of two residual blocks
each, narrowing about 1.5x per stage, and ends with GN, ReLU, a 1x1 conv to RGB and a sigmoid,
so images come out in [0, 1] (paper: 512x512). A model with ``matte`` has a fourth output
channel: the person's matte, in [0, 1] like the colours.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .blocks import ResBlock2d, group_norm, plain_conv


class VolumeProjection(nn.Module):
    """P: (N, C, D, H, W) -> (N, C', H, W) by folding depth into channels and a 1x1 conv."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.conv = plain_conv(2, config.volume_channels * config.volume_depth, config.image_channels, 1)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.conv(volume.flatten(1, 2))


class ImageGenerator(nn.Module):
    """G2D, which reads the projection P of the driver volume."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.projection = VolumeProjection(config)
        self.blocks = nn.Sequential(*(
            ResBlock2d(config.image_channels, config.image_channels) for _ in range(config.image_blocks)))
        widths = (config.image_channels,) + tuple(config.image_up_channels)
        self.up_stages = nn.ModuleList(
            nn.Sequential(ResBlock2d(in_channels, out_channels), ResBlock2d(out_channels, out_channels))
            for in_channels, out_channels in zip(widths[:-1], widths[1:]))
        # One group over all channels here: with one channel per group (the default for narrow
        # widths) the norm would remove each channel's per-image mean, i.e. the image's global
        # colour, which the last conv then cannot restore (demo128 training stalled at L1 0.2).
        self.to_rgb = nn.Sequential(nn.GroupNorm(1, widths[-1]), nn.ReLU(),
                                    plain_conv(2, widths[-1], 4 if config.matte else 3, 1))

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.projection(volume))
        for stage in self.up_stages:
            x = stage(F.interpolate(x, scale_factor=2, mode="nearest"))
        return torch.sigmoid(self.to_rgb(x))
