"""Building blocks shared by LivePortrait's networks (conv + BatchNorm units, the 3-D hourglass,
SPADE). Attribute names follow the published checkpoints so their keys load unchanged.

Every BatchNorm runs with its running statistics (inference). The bundle holds the dense
motion's 3-D blocks in another form (:mod:`.sliced`: 2-D convs of depth slices, BatchNorm folded).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SameBlock2d(nn.Module):
    """conv -> BatchNorm -> ReLU (or LeakyReLU), resolution kept."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1,
                 lrelu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features, affine=True)
        self.ac = nn.LeakyReLU() if lrelu else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ac(self.norm(self.conv(x)))


class DownBlock2d(nn.Module):
    """conv -> BatchNorm -> ReLU -> 2x2 average pool."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), 2)


class ResBlock3d(nn.Module):
    """Pre-activation residual block on a volume: x + conv(relu(bn(conv(relu(bn(x))))))."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv3d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv3d(features, features, kernel_size=3, padding=1)
        self.norm1 = nn.BatchNorm3d(features, affine=True)
        self.norm2 = nn.BatchNorm3d(features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        return x + self.conv2(F.relu(self.norm2(out)))


class DownBlock3d(nn.Module):
    """conv3d -> BatchNorm -> ReLU -> pool H and W by 2 (depth kept)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(F.relu(self.norm(self.conv(x))), (1, 2, 2))


class UpBlock3d(nn.Module):
    """Nearest 2x upsampling of H and W -> conv3d -> BatchNorm -> ReLU."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        return F.relu(self.norm(self.conv(x)))


def _widths(block_expansion: int, max_features: int, i: int) -> int:
    return min(max_features, block_expansion * (2 ** i))


class HourglassEncoder(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock3d(in_features if i == 0 else _widths(block_expansion, max_features, i),
                        _widths(block_expansion, max_features, i + 1))
            for i in range(num_blocks))

    def forward(self, x: torch.Tensor) -> list:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class HourglassDecoder(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.up_blocks = nn.ModuleList(
            UpBlock3d((1 if i == num_blocks - 1 else 2) * _widths(block_expansion, max_features, i + 1),
                      _widths(block_expansion, max_features, i))
            for i in reversed(range(num_blocks)))
        self.out_filters = block_expansion + in_features
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters, affine=True)

    def forward(self, skips: list) -> torch.Tensor:
        skips = list(skips)
        out = skips.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return F.relu(self.norm(self.conv(out)))


class Hourglass(nn.Module):
    """3-D U-Net: H and W halve per level, depth is kept; skips are concatenated."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.encoder = HourglassEncoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = HourglassDecoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-sample, per-channel normalisation without affine parameters (``nn.InstanceNorm2d``).

    Written out (mean, then the variance of the centred values) rather than as
    ``F.instance_norm``: that is exported as InstanceNormalization, which ONNX Runtime computes
    in one pass and less accurately over 256x256 planes (docs: ``with_stable_group_norms``)."""
    centred = x - x.mean(dim=(-2, -1), keepdim=True)
    variance = (centred * centred).mean(dim=(-2, -1), keepdim=True)
    return centred * torch.rsqrt(variance + eps)


class SPADE(nn.Module):
    """Spatially adaptive normalisation: instance-normalise x, then scale and shift it by maps
    predicted from the label features (resized to x with nearest neighbours)."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128):
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel_size=3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel_size=3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        normalized = instance_norm(x)
        if label.shape[-2:] != x.shape[-2:]:
            label = F.interpolate(label, size=x.shape[-2:], mode="nearest")
        actv = self.mlp_shared(label)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """Residual block of two SPADE -> LeakyReLU(0.2) -> conv steps, with a learned
    SPADE -> 1x1 conv shortcut when the width changes. The published convs carry spectral
    norm; :mod:`.weights` folds it into these plain weights."""

    def __init__(self, fin: int, fout: int, label_nc: int, hidden: int = 128):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = nn.Conv2d(fin, fmiddle, kernel_size=3, padding=1)
        self.conv_1 = nn.Conv2d(fmiddle, fout, kernel_size=3, padding=1)
        self.norm_0 = SPADE(fin, label_nc, hidden)
        self.norm_1 = SPADE(fmiddle, label_nc, hidden)
        if self.learned_shortcut:
            self.conv_s = nn.Conv2d(fin, fout, kernel_size=1, bias=False)
            self.norm_s = SPADE(fin, label_nc, hidden)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, label)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, label), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, label), 0.2))
        return shortcut + dx
