"""The expression encoder: an image and its head pose -> expression code z (N, Z).

It reads a crop aligned by the predicted pose: a 2x zoom around the head centre, resampled to
the encoder's input size (paper: 128x128). The head centre is where theta sends to the canonical
origin, theta^-1(0), so the crop follows the head without a face detector. The image is first
box-filtered to the size at which the crop is sampled 1:1 (paper: 512 -> 256), so the bilinear
resampling does not alias. The crop is one 2-D bilinear GridSample (standard ONNX); its grid is
a scaled and shifted identity grid, what affine_grid builds for a scale-and-shift matrix.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..warp import invert_pose
from .blocks import downscale
from .resnet import build_trunk


class ExpressionEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.crop_size = config.expression_input_size
        self.zoom = config.expression_crop_zoom
        self.trunk = build_trunk(config.expression_backbone, config.pretrained_backbones)
        self.to_expression = nn.Linear(self.trunk.out_channels, config.expression_dim)

    def forward(self, image: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        features = self.trunk(self.aligned_crop(image, pose)).mean(dim=(2, 3))
        return self.to_expression(features)

    def aligned_crop(self, image: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """(N, 3, s, s): the image around the head centre, zoomed by ``expression_crop_zoom``."""
        centre = invert_pose(pose)[:, :2, 3]
        grid = _square_grid(self.crop_size, image) / self.zoom + centre[:, None, None, :]
        filtered = downscale(image, round(self.crop_size * self.zoom))
        return F.grid_sample(filtered, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _square_grid(size: int, like: torch.Tensor) -> torch.Tensor:
    """(1, size, size, 2) normalised pixel centres (x, y), align_corners=False."""
    centres = (torch.arange(size, device=like.device, dtype=like.dtype) * 2 + 1) / size - 1
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack((x, y), dim=-1)[None]
