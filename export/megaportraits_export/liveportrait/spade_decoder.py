"""LivePortrait's SPADE decoder G: warped 256x64x64 features -> 512x512 RGB in [0, 1].

Six SPADE residual blocks at 64x64 (512 channels), two upsampling blocks to 256x256, and a
conv + pixel shuffle head for the final 2x. Every block is conditioned on the decoder's own
input (resized), as SPADE does with a label map.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import SPADEResnetBlock
from .config import LivePortraitConfig

MIDDLE_BLOCKS = 6


class SPADEDecoder(nn.Module):
    def __init__(self, config: LivePortraitConfig = LivePortraitConfig()):
        super().__init__()
        c = config
        width = min(c.spade_max_features, c.spade_block_expansion * 2 ** c.spade_num_down_blocks)
        hidden = c.spade_label_hidden
        self.fc = nn.Conv2d(width, 2 * width, kernel_size=3, padding=1)
        for i in range(MIDDLE_BLOCKS):
            setattr(self, f"G_middle_{i}", SPADEResnetBlock(2 * width, 2 * width, width, hidden))
        self.up_0 = SPADEResnetBlock(2 * width, width, width, hidden)
        self.up_1 = SPADEResnetBlock(width, c.spade_out_channels, width, hidden)
        self.conv_img = nn.Sequential(nn.Conv2d(c.spade_out_channels, 3 * 4, kernel_size=3, padding=1),
                                      nn.PixelShuffle(2))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        x = self.fc(feature)
        for i in range(MIDDLE_BLOCKS):
            x = getattr(self, f"G_middle_{i}")(x, feature)
        x = self.up_0(F.interpolate(x, scale_factor=2.0, mode="nearest"), feature)
        x = self.up_1(F.interpolate(x, scale_factor=2.0, mode="nearest"), feature)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)))
