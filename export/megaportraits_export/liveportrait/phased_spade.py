"""The SPADE decoder's label convolutions at the label's own resolution, the form the bundle holds.

Every SPADE of the decoder's two upsampling blocks resizes the decoder's 64x64 input (its
"label") to 128x128 or 256x256 with nearest neighbours and runs a 3x3 conv on it: 58 G of the
frame's ~440 G multiply-adds at 256x256 alone. A 3x3 conv of an s-times nearest-upsampled map
is, per output phase (a, b) (the output pixel's row and column modulo s), a conv of the small
map whose taps are the big kernel's taps summed by the small pixel they land on; for s >= 2
every phase reads at most 2x2 small pixels. So one 2x2 conv of the small map (padded by one)
gives all s x s phases as channel groups, each phase takes its window (rows from i - 1 or from
i), and the phases are interleaved into the big map: 2.25x fewer multiply-adds, exact up to
float rounding (the sums of taps are formed in float64).

:func:`with_phased_label_convs` swaps these SPADEs in a decoder copy; the parameters are read
from the loaded network (export-time form only).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import SPADE, instance_norm


def _window_start(phase: int, scale: int) -> int:
    """First small row (relative to i) of the 2-row window that output row s*i + phase reads:
    its 3x3 taps reach rows floor((phase + dy) / s), dy in {-1, 0, 1}."""
    return 0 if phase == scale - 1 else -1


def phase_kernels(weight: torch.Tensor, scale: int) -> torch.Tensor:
    """(Cout, Cin, 3, 3) kernel -> (s * s * Cout, Cin, 2, 2): phase (a, b)'s 2x2 kernel over its
    window, as channel group a * s + b."""
    if scale < 2 or weight.shape[-2:] != (3, 3):
        raise ValueError(f"phase kernels need a 3x3 kernel and a scale >= 2, not {tuple(weight.shape)} at {scale}")
    cout, cin = weight.shape[:2]
    w = weight.detach().double()
    out = w.new_zeros(scale, scale, cout, cin, 2, 2)
    for a in range(scale):
        for b in range(scale):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    u = (a + dy) // scale - _window_start(a, scale)
                    v = (b + dx) // scale - _window_start(b, scale)
                    out[a, b, :, :, u, v] += w[:, :, dy + 1, dx + 1]
    return out.reshape(scale * scale * cout, cin, 2, 2).to(weight.dtype)


def phased_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale: int, relu: bool = False) -> torch.Tensor:
    """The 3x3 conv whose :func:`phase_kernels` are ``weight`` (bias repeated per phase) of
    ``x`` upsampled ``scale`` times with nearest neighbours, from ``x`` (N, Cin, H, W)."""
    n, _, h, w = x.shape
    s = scale
    c = weight.shape[0] // (s * s)
    y = F.conv2d(x, weight, bias, padding=1)  # (N, s*s*C, H+1, W+1)
    if relu:
        y = F.relu(y)
    y = y.reshape(n, s, s, c, h + 1, w + 1)
    phases = []
    for a in range(s):
        top = 1 + _window_start(a, s)
        row = [y[:, a, b, :, top:top + h, 1 + _window_start(b, s):1 + _window_start(b, s) + w] for b in range(s)]
        phases.append(torch.stack(row, dim=-1))  # (N, C, H, W, s_b)
    return torch.stack(phases, dim=3).reshape(n, c, h * s, w * s)  # from (N, C, H, s_a, W, s_b)


def phase_window(phase: int, scale: int) -> tuple:
    """The small rows (relative to i) that output row s*i + phase's 3x3 taps reach: two for the
    first and last phase, one for the others when s >= 3 (their taps all land on row i)."""
    return tuple(sorted({(phase + d) // scale for d in (-1, 0, 1)}))


def phase_kernel_groups(weight: torch.Tensor, scale: int) -> list:
    """The phases of a (Cout, Cin, 3, 3) kernel grouped by the size of their window: a list of
    (phases [(a, b), ...], kernel (len(phases) * Cout, Cin, kh, kw), phase-major). At s = 4
    the 16 phases' windows hold 36 small taps, where 2x2 kernels for all would hold 64."""
    if scale < 2 or weight.shape[-2:] != (3, 3):
        raise ValueError(f"phase kernels need a 3x3 kernel and a scale >= 2, not {tuple(weight.shape)} at {scale}")
    w = weight.detach().double()
    groups = {}
    for a in range(scale):
        for b in range(scale):
            rows, cols = phase_window(a, scale), phase_window(b, scale)
            k = w.new_zeros(w.shape[0], w.shape[1], len(rows), len(cols))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    k[:, :, rows.index((a + dy) // scale), cols.index((b + dx) // scale)] += w[:, :, dy + 1, dx + 1]
            groups.setdefault((len(rows), len(cols)), []).append(((a, b), k))
    return [([p for p, _ in members], torch.cat([k for _, k in members]).to(weight.dtype))
            for members in groups.values()]


class PhasedUpsampledConv(nn.Module):
    """``conv(F.interpolate(x, scale_factor=s, mode="nearest"))`` for a 3x3, padding 1, stride 1
    conv, computed on ``x`` itself (optionally followed by ReLU, which commutes with the
    interleaving and fuses into the conv in ONNX Runtime): one conv per window size of the
    phases (:func:`phase_kernel_groups`; one 2x2 conv at s = 2, four convs with 36 of the 64
    taps at s = 4), each phase cropped from its group's output, the phases interleaved."""

    def __init__(self, conv: nn.Conv2d, scale: int, relu: bool = False):
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.stride != (1, 1) \
                or conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros":
            raise ValueError(f"no phase form for {conv} (3x3, padding 1, stride 1 only)")
        self.scale = scale
        self.relu = relu
        bias = conv.bias.detach() if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
        self.groups = []  # (phases, each phase's (row, column) crop start)
        for g, (phases, kernel) in enumerate(phase_kernel_groups(conv.weight, scale)):
            self.register_buffer(f"weight{g}", kernel)
            self.register_buffer(f"bias{g}", bias.repeat(len(phases)))
            starts = [(1 if phase_window(a, scale) == (0, 1) else 0, 1 if phase_window(b, scale) == (0, 1) else 0)
                      for a, b in phases]
            self.groups.append((phases, starts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        s = self.scale
        out = {}
        for g, (phases, starts) in enumerate(self.groups):
            weight = getattr(self, f"weight{g}")
            kh, kw = weight.shape[-2:]
            y = F.conv2d(x, weight, getattr(self, f"bias{g}"), padding=(kh - 1, kw - 1))  # 2 taps: padded by 1
            if self.relu:
                y = F.relu(y)
            y = y.reshape(n, len(phases), -1, *y.shape[-2:])
            for p, (phase, (top, left)) in enumerate(zip(phases, starts)):
                out[phase] = y[:, p, :, top:top + h, left:left + w]
        rows = [torch.stack([out[a, b] for b in range(s)], dim=-1) for a in range(s)]  # (N, C, H, W, s_b)
        return torch.stack(rows, dim=3).reshape(n, -1, h * s, w * s)  # from (N, C, H, s_a, W, s_b)


class PhasedSPADE(nn.Module):
    """:class:`.blocks.SPADE` whose label is ``scale`` times smaller than x: its shared label
    conv runs in phase form on the small label."""

    def __init__(self, spade: SPADE, scale: int):
        super().__init__()
        self.scale = scale
        self.mlp_shared = PhasedUpsampledConv(spade.mlp_shared[0], scale, relu=True)
        self.mlp_gamma = spade.mlp_gamma
        self.mlp_beta = spade.mlp_beta

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] != label.shape[-2] * self.scale or x.shape[-1] != label.shape[-1] * self.scale:
            raise ValueError(f"PhasedSPADE built for a label {self.scale}x smaller than x, got "
                             f"{tuple(label.shape[-2:])} for {tuple(x.shape[-2:])}")
        actv = self.mlp_shared(label)
        return instance_norm(x) * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


UPSAMPLING_BLOCKS = ("up_0", "up_1")  # the decoder's blocks after a 2x upsampling, in order


def with_phased_label_convs(decoder: nn.Module) -> nn.Module:
    """Swap, in place, the SPADEs of the decoder's upsampling blocks (label 2x and 4x smaller)."""
    for level, name in enumerate(UPSAMPLING_BLOCKS, start=1):
        block = getattr(decoder, name)
        for norm in ("norm_s", "norm_0", "norm_1"):
            if hasattr(block, norm):
                setattr(block, norm, PhasedSPADE(getattr(block, norm), 2 ** level))
    return decoder
