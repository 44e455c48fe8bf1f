"""G3D: the source volume warped to canonical space -> the canonical volume c_s.

A 3-D U-Net of residual blocks (paper: 96 -> 192 -> 384 -> 512 channels on the way down).
The way up starts from a learned tensor one level below the deepest features (paper:
512 x 2x8x8) and, level by level, upsamples trilinearly, adds the level's skip features
(passed through a residual block) and narrows the channels with another residual block, back to
C x D x H x W. GN, ReLU and a 3x3x3 conv give c_s.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .blocks import ResBlock3d, group_norm, plain_conv


class CanonicalGenerator(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        channels = config.volume_channels
        widths = tuple(config.canonical_channels)
        levels = len(widths)
        self.down = nn.ModuleList(
            ResBlock3d(in_channels, out_channels)
            for in_channels, out_channels in zip((channels,) + widths[:-1], widths))
        bottom_depth = config.volume_depth // 2 ** levels
        bottom_size = config.volume_size // 2 ** levels
        self.bottom = nn.Parameter(torch.randn(1, widths[-1], bottom_depth, bottom_size, bottom_size))
        self.skips = nn.ModuleList(ResBlock3d(width, width) for width in reversed(widths))
        narrower = (channels,) + widths[:-1]
        self.up = nn.ModuleList(
            ResBlock3d(in_channels, out_channels)
            for in_channels, out_channels in zip(reversed(widths), reversed(narrower)))
        self.head = nn.Sequential(group_norm(channels), nn.ReLU(), plain_conv(3, channels, channels, 3))

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        features = []
        x = volume
        for level, block in enumerate(self.down):
            x = block(F.avg_pool3d(x, 2) if level else x)
            features.append(x)
        x = self.bottom.expand(volume.shape[0], -1, -1, -1, -1)
        for skip, block, feature in zip(self.skips, self.up, reversed(features)):
            x = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)
            x = block(x + skip(feature))
        return self.head(x)
