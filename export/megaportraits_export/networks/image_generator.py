"""The projection P and G2D: the driver volume v_d -> the output image.

P folds the depth into the channels (paper: 96x16 -> 1536 channels at 64x64) and a 1x1 conv
narrows them (to 512). G2D refines at that resolution with residual blocks (paper: 8;
EMOPortraits: 6, used here), then upsamples (nearest, 2x) in stages of two residual blocks
each, narrowing about 1.5x per stage, and ends with GN, ReLU, a 1x1 conv to RGB and a sigmoid,
so images come out in [0, 1] (paper: 512x512). A model with ``matte`` has a fourth output
channel: the person's matte, in [0, 1] like the colours.

A model with ``warped_source`` also reads the source image warped to the driver
(networks/source_pixels.py): a 3x3 conv of it (at the stage's size) is added to the input of each
upsampling stage, and a mask predicted from the last features blends it into the colours. Both
start at nothing (zero convs, the mask at sigmoid(-3) = 0.05), so such a model fine-tunes from one
without the path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .blocks import ResBlock2d, downscale, group_norm, plain_conv

INITIAL_BLEND_LOGIT = -3.0


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
        if config.warped_source:
            self.source_inputs = nn.ModuleList(plain_conv(2, 3, width, 3) for width in widths[:-1])
            self.source_blend = plain_conv(2, widths[-1], 1, 3)
            with torch.no_grad():
                for conv in self.source_inputs:
                    conv.weight.zero_()
                    conv.bias.zero_()
                self.source_blend.weight.zero_()
                self.source_blend.bias.fill_(INITIAL_BLEND_LOGIT)

    def forward(self, volume: torch.Tensor, warped_source: torch.Tensor | None = None) -> torch.Tensor:
        """``warped_source`` (N, 3, s, s): the source image as the driver sees it, for a model with ``warped_source``."""
        x = self.blocks(self.projection(volume))
        for level, stage in enumerate(self.up_stages):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            if warped_source is not None:
                x = x + self.source_inputs[level](downscale(warped_source, x.shape[-1]))
            x = stage(x)
        rendering = torch.sigmoid(self.to_rgb(x))
        if warped_source is None:
            return rendering
        blend = torch.sigmoid(self.source_blend(x))
        colours = rendering[:, :3] + blend * (warped_source - rendering[:, :3])
        return torch.cat((colours, rendering[:, 3:]), dim=1)
