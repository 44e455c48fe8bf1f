"""3x3 convolutions in Winograd form F(m x m, 3 x 3), the form the bundle holds the heavy ones in.

A 3x3 stride-1 conv computes each m x m block of outputs from an (m + 2) x (m + 2) tile of its
input with 9 m^2 multiply-adds per channel pair; Winograd's minimal filtering (Lavin & Gray,
2015) computes the same block from the tile's transform ``B^T d B`` and the kernel's transform
``G g G^T`` with (m + 2)^2 products: for m = 2, 16 instead of 36 (2.25x fewer), for m = 4, 36
instead of 144 (4x fewer). The products over input channels are (m + 2)^2 independent matrix
products, which ONNX Runtime runs as 1x1 convolutions with its blocked (NCHWc) kernels; the
transforms of the input (per channel, fixed coefficients) are depthwise strided convolutions,
first along rows then along columns; the output transform is sums of the products, and the m x m
phases are interleaved with a pixel shuffle. Exact in real arithmetic; in float32 the error
is a few times the direct conv's own rounding for m = 4 (about 1e-5 relative on one 512-channel
conv; the published decoder with 15 such convs: image max abs 5e-6), bounded by the tests
against ``F.conv2d``. The kernels' transforms are formed in the graph from the 3x3 weights, one
constant MatMul per product, which ONNX Runtime folds when a session is made, so the file is no
larger. (One MatMul for all products and a Gather per product, folded too, had cost 1.8 s of
session set-up per 512x512 conv against 0.38 s this way: 18.8 s for the generator graph.)

Every transform is an export-time form: built from a loaded ``nn.Conv2d``, it reads the same
parameters. :class:`WinogradConv2d` may stand for several convs that read the same input (their
outputs concatenated), so their input transform is done once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# F(m, 3) for m = 2 (points 0, 1, -1, inf) and m = 4 (points 0, 1, -1, 2, -2, inf), Lavin & Gray.
_MATRICES = {
    2: ([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]),
}
TILES = tuple(_MATRICES)


def winograd_matrices(m: int) -> tuple:
    """(B^T (a x a), G (a x 3), A^T (m x a)) in float64 for F(m, 3), a = m + 2."""
    if m not in _MATRICES:
        raise ValueError(f"Winograd output tile {m} not available (only {TILES})")
    return tuple(torch.tensor(x, dtype=torch.float64) for x in _MATRICES[m])


def _check_conv(conv: nn.Conv2d) -> None:
    if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) \
            or conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError(f"no Winograd form for {conv} (3x3, stride 1, padding 1, one group only)")


def _linear_combination(terms: list, coefficients) -> torch.Tensor:
    """sum_i c_i * t_i over the non-zero coefficients (a +-1 coefficient adds or subtracts)."""
    out = None
    for t, c in zip(terms, coefficients):
        if c == 0:
            continue
        if out is None:
            out = t if c == 1 else t * c
        elif c == 1:
            out = out + t
        elif c == -1:
            out = out - t
        else:
            out = out + t * c
    return out


class WinogradConv2d(nn.Module):
    """``torch.cat([conv(x) for conv in convs], 1)`` for 3x3, stride 1, padding 1 convs of the
    same input, computed as F(m x m, 3 x 3); ``relu`` applies a ReLU to the result. The input's
    height and width must be multiples of ``m``."""

    def __init__(self, convs, m: int = 4, relu: bool = False):
        super().__init__()
        convs = [convs] if isinstance(convs, nn.Conv2d) else list(convs)
        for conv in convs:
            _check_conv(conv)
        if len({c.in_channels for c in convs}) != 1:
            raise ValueError("the convs of one Winograd form must read the same input channels")
        bt, g, at = winograd_matrices(m)
        self.m, self.alpha = m, m + 2
        self.relu = relu
        self.out_channels = sum(c.out_channels for c in convs)
        weight = torch.cat([c.weight.detach().double() for c in convs])
        bias = torch.cat([c.bias.detach().double() if c.bias is not None else weight.new_zeros(c.out_channels)
                          for c in convs])
        cin = weight.shape[1]
        dtype = convs[0].weight.dtype
        # The kernels' transforms G g G^T hold (m + 2)^2 / 9 times the conv's weights (4x for
        # m = 4), so the graph keeps the 3x3 weights and a constant MatMul per product forms
        # its kernels; ONNX Runtime folds them when the session is made, the file stays the
        # size of the direct conv's. Column (i, j) of the transform: G[i, :] outer G[j, :].
        self.register_buffer("weight", weight.to(dtype).reshape(-1, 9))  # (K * C, 9)
        self.register_buffer("kernel_transform", torch.einsum("ia,jb->abij", g, g).reshape(9, -1).to(dtype))
        self.weight_shape = tuple(weight.shape[:2])
        # the bias reaches every output once through a product whose A^T columns are all 1
        self.bias_product = next((i, j) for i in range(self.alpha) for j in range(self.alpha)
                                 if bool((at[:, i] == 1).all()) and bool((at[:, j] == 1).all()))
        self.register_buffer("bias", bias.to(dtype))
        for i in range(self.alpha):  # depthwise kernels of the input transform: row i of B^T, along H then W
            self.register_buffer(f"row{i}", bt[i][None, None, :, None].repeat(cin, 1, 1, 1).to(dtype).contiguous())
            self.register_buffer(f"col{i}", bt[i][None, None, None, :].repeat(cin, 1, 1, 1).to(dtype).contiguous())
        self.output_transform = at.tolist()  # constants of the graph, not tensors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        m, a = self.m, self.alpha
        if h % m or w % m:
            raise ValueError(f"WinogradConv2d with {m}x{m} tiles needs a size divisible by {m}, got {h}x{w}")
        k, cin = self.weight_shape
        padded = F.pad(x, (1, 1, 1, 1))
        rows = [F.conv2d(padded, getattr(self, f"row{i}"), stride=(m, 1), groups=c) for i in range(a)]  # (N, C, H/m, W+2)
        products = {}
        for i in range(a):
            for j in range(a):
                v = F.conv2d(rows[i], getattr(self, f"col{j}"), stride=(1, m), groups=c)  # (N, C, H/m, W/m)
                bias = self.bias if (i, j) == self.bias_product else None
                e = i * a + j  # this product's kernels, a constant: one small MatMul of the 3x3 weights
                u = torch.matmul(self.weight, self.kernel_transform[:, e:e + 1]).reshape(k, cin, 1, 1)
                products[i, j] = F.conv2d(v, u, bias)  # (N, K, H/m, W/m)
        at = self.output_transform
        phases = []
        for p in range(m):
            row_sums = [_linear_combination([products[i, j] for i in range(a)], at[p]) for j in range(a)]
            for q in range(m):
                phases.append(_linear_combination(row_sums, at[q]))
        y = F.pixel_shuffle(torch.stack(phases, dim=2).reshape(n, self.out_channels * m * m, h // m, w // m), m)
        return F.relu(y) if self.relu else y


WINOGRAD_MIN_CHANNELS = 256  # in and out: below, ONNX Runtime's direct conv measured as fast or faster
WINOGRAD_TILE = 4


def eligible(conv: nn.Module, min_channels: int = WINOGRAD_MIN_CHANNELS) -> bool:
    """A plain 3x3 stride-1 conv wide enough on both sides for the Winograd form to pay off."""
    try:
        _check_conv(conv)
    except (ValueError, AttributeError):
        return False
    return conv.in_channels >= min_channels and conv.out_channels >= min_channels


def with_winograd_convs(module: nn.Module, min_channels: int = WINOGRAD_MIN_CHANNELS, m: int = WINOGRAD_TILE) -> int:
    """Swap, in place, every eligible ``nn.Conv2d`` child of ``module`` (recursively) for its
    Winograd form; returns how many were swapped."""
    swapped = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d) and eligible(child, min_channels):
            setattr(module, name, WinogradConv2d(child, m))
            swapped += 1
        elif not isinstance(child, WinogradConv2d):
            swapped += with_winograd_convs(child, min_channels, m)
    return swapped


def with_winograd_same_block(block: nn.Module, min_channels: int = WINOGRAD_MIN_CHANNELS,
                             m: int = WINOGRAD_TILE) -> bool:
    """A conv -> BatchNorm -> activation block (:class:`.blocks.SameBlock2d`) with the BatchNorm
    folded into the conv and the conv in Winograd form, in place, where eligible."""
    from .sliced import fold_batch_norm

    if not eligible(block.conv, min_channels):
        return False
    weight, bias = fold_batch_norm(block.conv, block.norm)
    folded = nn.Conv2d(block.conv.in_channels, block.conv.out_channels, 3, padding=1)
    with torch.no_grad():
        folded.weight.copy_(weight)
        folded.bias.copy_(bias)
    block.conv, block.norm = WinogradConv2d(folded, m), nn.Identity()
    return True
