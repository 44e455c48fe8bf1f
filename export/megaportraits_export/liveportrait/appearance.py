"""LivePortrait's appearance feature extractor F: a 256x256 source crop -> 32x16x64x64 volume.

Two down blocks take the image to 64x64, a 1x1 conv to 512 channels that are read as 32
channels x 16 depth slices, and six 3-D residual blocks refine the volume. Run once per avatar.
"""
from __future__ import annotations

import torch
from torch import nn

from .blocks import DownBlock2d, ResBlock3d, SameBlock2d
from .config import LivePortraitConfig


class AppearanceFeatureExtractor(nn.Module):
    def __init__(self, config: LivePortraitConfig = LivePortraitConfig()):
        super().__init__()
        c = config
        self.reshape_channel, self.reshape_depth = c.reshape_channel, c.reshape_depth
        self.first = SameBlock2d(3, c.app_block_expansion, kernel_size=3, padding=1)
        widths = [min(c.app_max_features, c.app_block_expansion * 2 ** i) for i in range(c.app_num_down_blocks + 1)]
        self.down_blocks = nn.ModuleList(DownBlock2d(widths[i], widths[i + 1]) for i in range(c.app_num_down_blocks))
        self.second = nn.Conv2d(widths[-1], c.app_max_features, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for i in range(c.app_num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(c.reshape_channel))

    def forward(self, source_image: torch.Tensor) -> torch.Tensor:
        out = self.first(source_image)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)
        n, _, h, w = out.shape
        return self.resblocks_3d(out.reshape(n, self.reshape_channel, self.reshape_depth, h, w))
