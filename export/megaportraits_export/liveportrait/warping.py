"""LivePortrait's warping module W: the source feature volume moved to the driving keypoints.

The dense motion network turns the two keypoint sets into a deformation field and an occlusion
map; the 32x16x64x64 volume is resampled along the field (the one heavy 5-D grid sample of the
frame, routed through :func:`megaportraits_export.warp.sample_volume` so the exporter can hand
it to our ``GridSample3D`` op), its depth folded into channels, and two convolutions bring it
to the decoder's 256 channels, masked by the occlusion map.
"""
from __future__ import annotations

import torch
from torch import nn

from megaportraits_export.warp import sample_volume

from .blocks import SameBlock2d
from .config import LivePortraitConfig
from .dense_motion import DenseMotionNetwork


class WarpingNetwork(nn.Module):
    def __init__(self, config: LivePortraitConfig = LivePortraitConfig()):
        super().__init__()
        c = config
        self.dense_motion_network = DenseMotionNetwork(c)
        self.third = SameBlock2d(c.warp_max_features, c.warp_channels, kernel_size=3, padding=1, lrelu=True)
        self.fourth = nn.Conv2d(c.warp_channels, c.warp_channels, kernel_size=1)

    def forward(self, feature_volume: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
        """(N, C, D, H, W) volume, (N, K, 3) source and driving keypoints -> (N, 256, H, W)."""
        deformation, occlusion = self.dense_motion_network(feature_volume, kp_driving, kp_source)
        warped = sample_volume(feature_volume, deformation)
        n, c, d, h, w = warped.shape
        out = self.fourth(self.third(warped.reshape(n, c * d, h, w)))
        return out * occlusion
