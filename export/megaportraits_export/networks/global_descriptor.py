"""The global descriptor network: the source image -> e_s (Cd x S x S).

A ResNet-50-style trunk on a downscaled copy of the image (paper: 256x256); a 1x1 conv takes its
2048 channels to Cd = 512 and average pooling leaves an S x S = 4x4 map. e_s carries the
source's identity-level appearance into both warping generators.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .blocks import downscale, plain_conv
from .resnet import build_trunk


class GlobalDescriptorEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_size = config.descriptor_input_size
        self.pool = config.descriptor_input_size // 32 // config.descriptor_size
        self.trunk = build_trunk(config.descriptor_backbone, config.pretrained_backbones)
        self.to_descriptor = plain_conv(2, self.trunk.out_channels, config.descriptor_channels, 1)

    def forward(self, source_image: torch.Tensor) -> torch.Tensor:
        features = self.to_descriptor(self.trunk(downscale(source_image, self.input_size)))
        return F.avg_pool2d(features, self.pool) if self.pool > 1 else features
