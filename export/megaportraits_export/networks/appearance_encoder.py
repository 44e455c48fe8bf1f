"""E_app: the source image -> volumetric appearance features v_s (C x D x H x W).

2D residual blocks with average pooling bring the image down to the volume's side; a 1x1 conv
lifts the channels to C*D, which are read as a C-channel volume of depth D; 3D residual blocks
then refine it (paper: 512x512 -> 96x16x64x64).
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .blocks import ResBlock2d, ResBlock3d, group_norm, plain_conv, ws_conv


class AppearanceEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.volume_channels = config.volume_channels
        self.volume_depth = config.volume_depth
        self.stem = plain_conv(2, 3, config.appearance_stem_channels, 7)
        widths = (config.appearance_stem_channels,) + tuple(config.appearance_channels)
        self.blocks_2d = nn.Sequential(*(
            ResBlock2d(in_channels, out_channels, downsample=True)
            for in_channels, out_channels in zip(widths[:-1], widths[1:])))
        self.to_volume = nn.Sequential(
            group_norm(widths[-1]),
            nn.ReLU(),
            ws_conv(2, widths[-1], config.volume_channels * config.volume_depth, 1, bias=True))
        self.blocks_3d = nn.Sequential(*(
            ResBlock3d(config.volume_channels, config.volume_channels)
            for _ in range(config.appearance_3d_blocks)))

    def forward(self, source_image: torch.Tensor) -> torch.Tensor:
        features = self.to_volume(self.blocks_2d(self.stem(source_image)))
        volume = features.unflatten(1, (self.volume_channels, self.volume_depth))
        return self.blocks_3d(volume)
