"""LivePortrait's motion extractor M: a ConvNeXt-V2-tiny trunk and seven linear heads.

From one 256x256 crop it reads the canonical keypoints x_c (K x 3), the head pose as three
66-bin logits (pitch, yaw, roll; :mod:`megaportraits.motion_liveportrait` turns them into
degrees), translation t (3), expression deltas (K x 3) and scale (1). The same network runs on
the source (once) and on every driver frame.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import LivePortraitConfig

# The heads in the order the graphs return them (megaportraits.schema names them).
HEADS = ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor (ConvNeXt's stem and downsamplers)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(1, keepdim=True)
        variance = (centred * centred).mean(1, keepdim=True)
        return self.weight[:, None, None] * (centred * torch.rsqrt(variance + self.eps)) + self.bias[:, None, None]


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2's GRN on NHWC: x + gamma * (x * N(x)) + beta, N = L2 over HW / its channel mean."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.sqrt((x * x).sum(dim=(1, 2), keepdim=True))
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm, 4x pointwise MLP with GELU and GRN, residual."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GlobalResponseNorm(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    def __init__(self, config: LivePortraitConfig):
        super().__init__()
        dims, depths = config.convnext_dims, config.convnext_depths
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(3, dims[0], kernel_size=4, stride=4), ChannelsFirstLayerNorm(dims[0]))])
        for i in range(3):
            self.downsample_layers.append(nn.Sequential(
                ChannelsFirstLayerNorm(dims[i]), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
        self.stages = nn.ModuleList(nn.Sequential(*(ConvNeXtBlock(dims[i]) for _ in range(depths[i])))
                                    for i in range(4))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        k, bins, width = config.num_kp, config.num_bins, dims[-1]
        self.fc_kp = nn.Linear(width, 3 * k)
        self.fc_scale = nn.Linear(width, 1)
        self.fc_pitch = nn.Linear(width, bins)
        self.fc_yaw = nn.Linear(width, bins)
        self.fc_roll = nn.Linear(width, bins)
        self.fc_t = nn.Linear(width, 3)
        self.fc_exp = nn.Linear(width, 3 * k)

    def forward(self, x: torch.Tensor) -> dict:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        x = self.norm(x.mean(dim=(-2, -1)))
        return {"pitch": self.fc_pitch(x), "yaw": self.fc_yaw(x), "roll": self.fc_roll(x), "t": self.fc_t(x),
                "exp": self.fc_exp(x), "scale": self.fc_scale(x), "kp": self.fc_kp(x)}


class MotionExtractor(nn.Module):
    """``forward(image) -> dict`` of the raw heads (angles as bin logits, keypoints flat (N, 3K))."""

    def __init__(self, config: LivePortraitConfig = LivePortraitConfig()):
        super().__init__()
        self.detector = ConvNeXtV2(config)

    def forward(self, image: torch.Tensor) -> dict:
        return self.detector(image)
