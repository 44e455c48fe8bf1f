"""Building blocks shared by every network: WS convolutions, GroupNorm, residual blocks.

The paper replaces BatchNorm by GroupNorm everywhere and standardises the weights of every
convolution but the first and the last of each network. Weight standardisation is written so
that it folds into a plain convolution for export: :class:`WSConv2d` / :class:`WSConv3d` compute
the standardised weight in ``forward``, and :func:`fold_weight_standardisation` swaps each of them
for an ``nn.Conv2d`` / ``nn.Conv3d`` holding that weight, which computes the same function.
Without batch statistics or dropout, train and eval mode compute the same function too.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

WS_EPS = 1e-6


def standardised_weight(weight: torch.Tensor, eps: float = WS_EPS) -> torch.Tensor:
    """Zero mean and variance 1/fan_in per output filter.

    The usual standardisation (unit variance) times the constant 1/sqrt(fan_in): the extra
    factor keeps activations at unit scale through the residual sums, so that the volume features
    and fp16 exports stay in range; every WS conv feeds a GroupNorm, which is blind to it.
    """
    fan_in = weight[0].numel()
    flat = weight.reshape(weight.shape[0], -1)
    mean = flat.mean(dim=1, keepdim=True)
    var = flat.var(dim=1, unbiased=False, keepdim=True)
    return ((flat - mean) / torch.sqrt(var * fan_in + eps)).reshape_as(weight)


class WSConv2d(nn.Conv2d):
    """A 2D convolution with weight standardisation (see :func:`standardised_weight`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, standardised_weight(self.weight), self.bias)


class WSConv3d(nn.Conv3d):
    """A 3D convolution with weight standardisation (see :func:`standardised_weight`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, standardised_weight(self.weight), self.bias)


def fold_weight_standardisation(module: nn.Module) -> nn.Module:
    """Replace, in place, every WS conv inside ``module`` by a plain conv with its standardised weight."""
    for name, child in list(module.named_children()):
        if isinstance(child, (WSConv2d, WSConv3d)):
            setattr(module, name, _plain_conv(child))
        else:
            fold_weight_standardisation(child)
    return module


def _plain_conv(ws_conv: nn.Module) -> nn.Module:
    conv_class = nn.Conv2d if isinstance(ws_conv, WSConv2d) else nn.Conv3d
    plain = conv_class(
        ws_conv.in_channels,
        ws_conv.out_channels,
        ws_conv.kernel_size,
        stride=ws_conv.stride,
        padding=ws_conv.padding,
        dilation=ws_conv.dilation,
        groups=ws_conv.groups,
        bias=ws_conv.bias is not None,
        padding_mode=ws_conv.padding_mode,
        device=ws_conv.weight.device,
        dtype=ws_conv.weight.dtype,
    )
    with torch.no_grad():
        plain.weight.copy_(standardised_weight(ws_conv.weight))
        if ws_conv.bias is not None:
            plain.bias.copy_(ws_conv.bias)
    return plain


def ws_conv(dims: int, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
            bias: bool = False) -> nn.Module:
    """A weight-standardised conv with 'same' padding, 2D or 3D."""
    conv_class = WSConv2d if dims == 2 else WSConv3d
    return conv_class(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)


def plain_conv(dims: int, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
               bias: bool = True) -> nn.Module:
    """A plain conv with 'same' padding: the first and last conv of a network."""
    conv_class = nn.Conv2d if dims == 2 else nn.Conv3d
    return conv_class(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)


def num_groups(channels: int, max_groups: int = 32) -> int:
    """32 groups where the width allows, otherwise the largest divisor of the width below 32."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(channels), channels)


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm whose per-sample scale and shift are projected from an embedding.

    The embedding (N, Ce, S, S) is the warping generators' mix of the expression code and the
    global descriptor. Two learned matrices project it bilinearly: params = U E V with U (C, Ce)
    and V (S*S, 2), giving (N, C, 2) -> scale 1 + params[..., 0], shift params[..., 1].
    """

    def __init__(self, channels: int, embed_channels: int, embed_size: int):
        super().__init__()
        self.groups = num_groups(channels)
        self.channel_projection = nn.Parameter(
            torch.empty(channels, embed_channels).uniform_(-1, 1) * math.sqrt(3 / embed_channels))
        self.spatial_projection = nn.Parameter(
            torch.empty(embed_size * embed_size, 2).uniform_(-1, 1) * math.sqrt(3 / embed_size ** 2))

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        params = self.channel_projection @ embedding.flatten(2) @ self.spatial_projection
        broadcast = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
        scale = 1 + params[..., 0].reshape(broadcast)
        shift = params[..., 1].reshape(broadcast)
        return F.group_norm(x, self.groups) * scale + shift


class ResBlock(nn.Module):
    """Pre-activation residual block (GN, ReLU, conv) x 2 with an optional 2x average pooling.

    ``dims`` 2 or 3. With ``downsample`` both branches are average-pooled by 2 (in every spatial
    axis) between the two convs, so the second conv already runs at the lower resolution.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, downsample: bool = False):
        super().__init__()
        self.dims = dims
        self.downsample = downsample
        self.norm1 = group_norm(in_channels)
        self.conv1 = ws_conv(dims, in_channels, out_channels, 3)
        self.norm2 = group_norm(out_channels)
        self.conv2 = ws_conv(dims, out_channels, out_channels, 3)
        self.skip = ws_conv(dims, in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x)))
        h = self.conv2(F.relu(self.norm2(self._pool(h))))
        return h + self.skip(self._pool(x))

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if not self.downsample:
            return x
        return F.avg_pool2d(x, 2) if self.dims == 2 else F.avg_pool3d(x, 2)


class ResBlock2d(ResBlock):
    def __init__(self, in_channels: int, out_channels: int, downsample: bool = False):
        super().__init__(2, in_channels, out_channels, downsample)


class ResBlock3d(ResBlock):
    def __init__(self, in_channels: int, out_channels: int, downsample: bool = False):
        super().__init__(3, in_channels, out_channels, downsample)


class AdaptiveResBlock3d(nn.Module):
    """3D pre-activation residual block whose GroupNorms are driven by an embedding."""

    def __init__(self, in_channels: int, out_channels: int, embed_channels: int, embed_size: int):
        super().__init__()
        self.norm1 = AdaptiveGroupNorm(in_channels, embed_channels, embed_size)
        self.conv1 = ws_conv(3, in_channels, out_channels, 3)
        self.norm2 = AdaptiveGroupNorm(out_channels, embed_channels, embed_size)
        self.conv2 = ws_conv(3, out_channels, out_channels, 3)
        self.skip = ws_conv(3, in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x, embedding)))
        h = self.conv2(F.relu(self.norm2(h, embedding)))
        return h + self.skip(x)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def downscale(image: torch.Tensor, size: int) -> torch.Tensor:
    """Average-pool a square image down by the integer factor side // size (none when below 2).

    Box filtering by an integer factor is alias-free, deterministic and a single ONNX AveragePool.
    """
    factor = image.shape[-1] // size
    return F.avg_pool2d(image, factor) if factor > 1 else image
