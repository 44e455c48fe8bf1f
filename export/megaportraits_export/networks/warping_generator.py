"""The warping generators W_s-> and W_->d: (z, e_s) -> a 3-D deformation field (D, H, W, 3).

Both warps use this one architecture with separate weights. The expression code z is mapped by
a linear layer to a Cd x S x S map, averaged with the global descriptor e_s and mixed by a 1x1
conv: that embedding drives every GroupNorm of the generator (adaptive GroupNorm). A 1x1 conv
turns the embedding into a small C0 x S x S x S volume; residual blocks with trilinear 2x
upsampling (depth only until it reaches D) grow it to D x H x W while narrowing the channels
(paper: 512 -> 32, 4^3 -> 16x64x64); GN, ReLU, a 3x3x3 conv to 3 channels and tanh give the
deformation, in normalised units, that :mod:`megaportraits_export.warp` adds to the grid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .blocks import AdaptiveResBlock3d, group_norm, plain_conv, ws_conv

INITIAL_FIELD_SCALE = 0.01


class WarpEmbedding(nn.Module):
    """(z, e_s) -> the Cd x S x S embedding that drives the adaptive GroupNorms."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.shape = config.descriptor_shape
        self.expression_to_map = nn.Linear(config.expression_dim, config.descriptor_channels * config.descriptor_size ** 2)
        self.mix = plain_conv(2, config.descriptor_channels, config.descriptor_channels, 1)

    def forward(self, expression: torch.Tensor, descriptor: torch.Tensor) -> torch.Tensor:
        expression_map = self.expression_to_map(expression).unflatten(1, self.shape)
        return self.mix((expression_map + descriptor) / 2)


class WarpingGenerator(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        start = config.descriptor_size
        widths = tuple(config.warp_channels)
        self.start_channels = widths[0]
        self.start_size = start
        self.embedding = WarpEmbedding(config)
        self.to_volume = ws_conv(2, config.descriptor_channels, widths[0] * start, 1)
        self.depth_factors = []
        depth = start
        for _ in widths[1:]:
            factor = 2 if depth < config.volume_depth else 1
            self.depth_factors.append(factor)
            depth *= factor
        self.blocks = nn.ModuleList(
            AdaptiveResBlock3d(in_channels, out_channels, config.descriptor_channels, start)
            for in_channels, out_channels in zip(widths[:-1], widths[1:]))
        self.head_norm = group_norm(widths[-1])
        self.head = plain_conv(3, widths[-1], 3, 3)
        with torch.no_grad():
            self.head.weight.mul_(INITIAL_FIELD_SCALE)
            self.head.bias.zero_()

    def forward(self, expression: torch.Tensor, descriptor: torch.Tensor) -> torch.Tensor:
        """(N, Z), (N, Cd, S, S) -> deformation (N, D, H, W, 3), channels last like a grid."""
        embedding = self.embedding(expression, descriptor)
        x = self.to_volume(embedding).unflatten(1, (self.start_channels, self.start_size))
        for block, depth_factor in zip(self.blocks, self.depth_factors):
            x = F.interpolate(x, scale_factor=(depth_factor, 2, 2), mode="trilinear", align_corners=False)
            x = block(x, embedding)
        field = torch.tanh(self.head(F.relu(self.head_norm(x))))
        return field.permute(0, 2, 3, 4, 1)
