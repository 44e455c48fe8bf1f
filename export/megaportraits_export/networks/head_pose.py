"""The head-pose regressor: an image -> theta (N, 3, 4), camera space -> canonical space.

A ResNet-18-style trunk on a downscaled image (paper: 128x128) regresses 9 numbers: log-scale
(3), yaw/pitch/roll in radians (3), translation (3); :func:`warp.pose_matrix` turns them into
the differentiable transform S R T. Log-scale keeps the scale positive (so theta is always
invertible) and makes an all-zero output the identity pose; the output layer starts small so
an untrained model starts near that identity.
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..warp import pose_matrix
from .blocks import downscale
from .resnet import build_trunk

POSE_PARAMETERS = 9
INITIAL_OUTPUT_SCALE = 0.01


class HeadPoseRegressor(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_size = config.pose_input_size
        self.trunk = build_trunk(config.pose_backbone, config.pretrained_backbones)
        self.to_parameters = nn.Linear(self.trunk.out_channels, POSE_PARAMETERS)
        with torch.no_grad():
            self.to_parameters.weight.mul_(INITIAL_OUTPUT_SCALE)
            self.to_parameters.bias.zero_()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return pose_matrix(*self.pose_parameters(image))

    def pose_parameters(self, image: torch.Tensor) -> tuple:
        """(scale, yaw/pitch/roll, translation), each (N, 3): what pose labels supervise."""
        features = self.trunk(downscale(image, self.input_size)).mean(dim=(2, 3))
        log_scale, rotation, translation = self.to_parameters(features).split(3, dim=1)
        return torch.exp(log_scale), rotation, translation
