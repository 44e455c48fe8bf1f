"""The dense motion's 7x7x7 mask conv by tiled Fourier transforms, the form the bundle holds it in.

That one conv (142 -> 22 channels, 7x7x7, on the 16x64x64 volume) is about 74 G of the frame's
~460 G multiply-adds, and ONNX Runtime already runs it at its direct convs' ~90 G/s (0.8 s a
frame at one thread). A convolution is a pointwise product of spectra, so here:

* the depth taps stay output channels, as in :func:`.sliced.conv_output_taps` (each slice gives
  kd x Cout partial sums, shifted along depth and summed), and each 2-D 7x7 conv of the slices
  is done by discrete Fourier transforms of *tiles*: the output is cut into m x m tiles; tile t
  reads an n x n window of the zero-padded input (n = m + 6), whose DFT times the kernel's
  gives the window's circular correlation, of which the m x m outputs that wrap around nothing
  are the tile's (overlap-save). Every transform is a MatMul with a constant matrix built in
  float64 (zero padding and the window's position folded in): along H real -> half spectrum
  (n // 2 + 1 bins), along W complex -> n bins, the real and imaginary parts side by side in the
  contracted axis so no product is wasted;
* per frequency, the products summed over input channels are one real MatMul of the tiles'
  spectra (real and imaginary parts of every channel, 2 Cin) with the kernel's spectrum laid out
  as a real 2 Cin x 2 (kd Cout) matrix; the depth shift-sum is done on the spectra (linear), so
  the inverse transform (one 2 (n//2+1) n -> m^2 matrix per tile) runs on Cout channels only;
* the kernel's spectrum is formed in the graph from the 7x7x7 weights by constant MatMuls
  (folded by ONNX Runtime when the session is made), so the file holds the conv's weights, not
  the spectrum (which is (n // 2 + 1) n / 49 times larger: 94 MB at m = 16).

For m = 16 (n = 22) the products are 6 G multiply-adds and the transforms about 4 G, against 74
G. The input is first put channels-last so that every transform contracts a contiguous axis and
the one large transpose (the spectra to frequency-major) moves whole 2 Cin rows. Exact in real
arithmetic; in float32 the error is that of sums of ~n^2 Cin terms (tests: against
``F.conv3d``). An export-time form: built from the loaded conv, it reads the same parameters.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DFT_TILE = 16  # output tile side m; n = m + kernel - 1 = 22 for the 7x7 mask conv


def _angle(frequency: int, sample: int, n: int) -> float:
    return 2.0 * math.pi * ((frequency * sample) % n) / n


def real_tile_transform(length: int, padding: int, tile: int, n: int) -> torch.Tensor:
    """(bins * tiles * 2, length): the length-n DFT, bins 0 .. n // 2 (a real input's half
    spectrum), of every tile's window of the zero-padded axis; rows (bin, tile, re/im)."""
    bins, tiles = n // 2 + 1, length // tile
    out = torch.zeros(bins, tiles, 2, length, dtype=torch.float64)
    for f in range(bins):
        for t in range(tiles):
            for q in range(n):
                j = t * tile + q - padding
                if 0 <= j < length:
                    a = _angle(f, q, n)
                    out[f, t, 0, j] = math.cos(a)
                    out[f, t, 1, j] = -math.sin(a)
    return out.reshape(bins * tiles * 2, length)


def complex_tile_transform(length: int, padding: int, tile: int, n: int) -> torch.Tensor:
    """(n * tiles * 2, 2 * length): the length-n DFT, all n bins, of every tile's window of a
    complex axis given as (re/im, sample); rows (bin, tile, re/im)."""
    tiles = length // tile
    out = torch.zeros(n, tiles, 2, 2, length, dtype=torch.float64)
    for g in range(n):
        for t in range(tiles):
            for q in range(n):
                j = t * tile + q - padding
                if 0 <= j < length:
                    c, s = math.cos(_angle(g, q, n)), math.sin(_angle(g, q, n))
                    # (zr + i zi)(c - i s) = (c zr + s zi) + i (c zi - s zr)
                    out[g, t, 0, 0, j], out[g, t, 0, 1, j] = c, s
                    out[g, t, 1, 0, j], out[g, t, 1, 1, j] = -s, c
    return out.reshape(n * tiles * 2, 2 * length)


def inverse_tile_transform(tile: int, n: int) -> torch.Tensor:
    """(bins * n * 2, tile * tile): from a tile's product spectrum (H half spectrum x W full,
    re/im) to its m x m outputs, the first m of the circular correlation: sum over the full
    spectrum of Y e^{+i phi} / n^2, the H bins other than 0 and n / 2 counted twice (Hermitian)."""
    bins = n // 2 + 1
    out = torch.zeros(bins, n, 2, tile, tile, dtype=torch.float64)
    for f in range(bins):
        weight = (1.0 if f == 0 or 2 * f == n else 2.0) / (n * n)
        for g in range(n):
            for u in range(tile):
                for v in range(tile):
                    a = 2.0 * math.pi * (((f * u) % n) / n + ((g * v) % n) / n)
                    out[f, g, 0, u, v] = weight * math.cos(a)
                    out[f, g, 1, u, v] = -weight * math.sin(a)
    return out.reshape(bins * n * 2, tile * tile)


def kernel_spectrum_transform(kernel: int, n: int) -> torch.Tensor:
    """(kernel^2, 2 * bins * n): a kh x kw kernel's correlation spectrum conj(DFT) at every
    product frequency (H bins 0 .. n // 2, W bins 0 .. n - 1): columns (re/im, bin_h, bin_w)."""
    bins = n // 2 + 1
    out = torch.zeros(kernel, kernel, 2, bins, n, dtype=torch.float64)
    for a in range(kernel):
        for b in range(kernel):
            for f in range(bins):
                for g in range(n):
                    phi = 2.0 * math.pi * (((f * a) % n) / n + ((g * b) % n) / n)
                    out[a, b, 0, f, g] = math.cos(phi)
                    out[a, b, 1, f, g] = math.sin(phi)
    return out.reshape(kernel * kernel, 2 * bins * n)


def dft_tile(side: int, kernel: int) -> int | None:
    """The output tile this form uses for ``side`` x ``side`` slices, or None where none fits."""
    for tile in (DFT_TILE, 8):
        if side % tile == 0 and tile >= kernel - 1:
            return tile
    return None


class TiledDFTHeads(nn.Module):
    """The dense motion's two 7x7 heads on the hourglass's prediction slices ``(N, D, C, H, W)``,
    by tiled DFTs of the slices computed once: the mask, a 3-D conv (stride 1, "same" zero
    padding, odd cubic kernel) -> ``(N, D, K, H, W)``, and the occlusion, a 2-D conv of the
    slices stacked as channels (slice-major) -> ``(N, 1, H, W)``, both before their bias-free
    activations. ``mask_weight`` (K, C, k, k, k) and ``occlusion_weight`` (1, D * C, k, k) with
    their biases are the convs' (input channels padded as the slices are); ``side``: H = W."""

    def __init__(self, mask_weight: torch.Tensor, mask_bias: torch.Tensor, occlusion_weight: torch.Tensor,
                 occlusion_bias: torch.Tensor, side: int, tile: int | None = None):
        super().__init__()
        cout, cin, kd, kh, kw = mask_weight.shape
        if not (kd == kh == kw and kd % 2 == 1):
            raise ValueError(f"the tiled DFT form takes an odd cubic kernel, not {tuple(mask_weight.shape[2:])}")
        if occlusion_weight.shape[0] != 1 or occlusion_weight.shape[1] % cin \
                or tuple(occlusion_weight.shape[2:]) != (kh, kw):
            raise ValueError(f"the occlusion conv {tuple(occlusion_weight.shape)} does not read {cin}-channel "
                             f"slices with a {kh}x{kw} kernel")
        tile = tile or dft_tile(side, kh)
        if tile is None or side % tile:
            raise ValueError(f"no DFT tile for {side}x{side} slices (a multiple of {DFT_TILE} or 8 is needed)")
        n = tile + kh - 1
        self.tile, self.n, self.side, self.bins = tile, n, side, n // 2 + 1
        self.cin, self.cout, self.depth_kernel = cin, cout, kd
        self.depth = occlusion_weight.shape[1] // cin
        dtype = mask_weight.dtype
        self.register_buffer("forward_h", real_tile_transform(side, kh // 2, tile, n).to(dtype))
        self.register_buffer("forward_w", complex_tile_transform(side, kw // 2, tile, n).to(dtype))
        self.register_buffer("inverse", inverse_tile_transform(tile, n).to(dtype))
        self.register_buffer("spectrum_transform", kernel_spectrum_transform(kh, n).to(dtype))
        # tap-major output channels (tap j's weights are outputs j * K ..), as conv_output_taps
        taps = mask_weight.detach().permute(2, 0, 1, 3, 4).reshape(kd * cout * cin, kh * kw)
        self.register_buffer("mask_weight", taps.contiguous())
        self.register_buffer("mask_bias", mask_bias.detach().clone())
        self.register_buffer("occlusion_weight", occlusion_weight.detach().reshape(-1, kh * kw).contiguous())
        self.register_buffer("occlusion_bias", occlusion_bias.detach().clone())

    def _spectra(self, weight: torch.Tensor, groups: int, outputs: int) -> torch.Tensor:
        """Kernel spectra of ``weight`` (groups * outputs * Cin, k * k) at every product
        frequency as real matrices of the complex products: (F, groups, 2, Cin, 2, outputs), rows
        (re/im, input channel), columns (re/im, output). Constant: folded by ONNX Runtime."""
        c, f = self.cin, self.bins * self.n
        s = torch.matmul(weight, self.spectrum_transform).reshape(groups, outputs, c, 2, f)
        kr = s[:, :, :, 0].permute(3, 0, 2, 1)  # (F, groups, C, outputs)
        ki = s[:, :, :, 1].permute(3, 0, 2, 1)
        # (zr + i zi)(kr + i ki): re = kr zr - ki zi, im = ki zr + kr zi
        return torch.stack([torch.stack([kr, ki], dim=3), torch.stack([-ki, kr], dim=3)], dim=2)

    def _image(self, spectrum: torch.Tensor, batch: int, planes: int) -> torch.Tensor:
        """(batch, planes, T, T, F * 2) tile spectra -> (batch, planes, H, W) images."""
        t, m = self.side // self.tile, self.tile
        out = torch.matmul(spectrum, self.inverse).reshape(batch, planes, t, t, m, m)
        return out.permute(0, 1, 2, 4, 3, 5).reshape(batch, planes, self.side, self.side)

    def forward(self, slices: torch.Tensor) -> tuple:
        """-> (mask logits (N, D, K, H, W), occlusion logits (N, 1, H, W))."""
        n_, d, c, h, w = slices.shape
        if h != self.side or w != self.side or c != self.cin or d != self.depth:
            raise ValueError(f"TiledDFTHeads built for {self.depth} slices of {self.cin} x {self.side} x "
                             f"{self.side}, got {d} of {c} x {h} x {w}")
        t, nb, n = self.side // self.tile, self.bins, self.n
        kd, k, pd = self.depth_kernel, self.cout, self.depth_kernel // 2
        f = nb * n
        x = slices.permute(0, 1, 3, 4, 2).reshape(n_ * d, h, w * c)  # channels last
        x = torch.matmul(self.forward_h, x)  # (B, bins * T * 2, W * C): H -> half spectrum
        x = x.reshape(n_ * d, nb * t, 2 * w, c)  # (re/im, w) side by side: the next contraction
        x = torch.matmul(self.forward_w, x)  # (B, bins * T, n * T * 2, C): W -> full spectrum
        x = x.reshape(n_, d, nb, t, n, t, 2 * c).permute(2, 4, 0, 1, 3, 5, 6)  # frequency-major
        x = x.reshape(f, n_, d, t * t, 2 * c)  # rows (re/im, channel) whole

        # mask: per slice, kd taps x K outputs (tap-major blocks), then the depth shift-sum
        y = torch.matmul(x.reshape(f, n_ * d * t * t, 2 * c),
                         self._spectra(self.mask_weight, kd, k).permute(0, 2, 3, 1, 4, 5).reshape(f, 2 * c, -1))
        y = y.reshape(f, n_, d, t * t, kd, 2 * k)
        mask = None
        for j in range(kd):  # output slice o sums tap j of input slice o + j - pd (zeros beyond)
            tap, shift = y[:, :, :, :, j], j - pd
            if abs(shift) >= d:
                continue  # reads only the zeros beyond the ends
            if shift > 0:
                tap = F.pad(tap[:, :, shift:], (0, 0, 0, 0, 0, shift))
            elif shift < 0:
                tap = F.pad(tap[:, :, :d + shift], (0, 0, 0, 0, -shift, 0))
            mask = tap if mask is None else mask + tap  # (F, N, D, T T, 2 K)
        mask = mask.reshape(f, n_ * d, t, t, 2, k).permute(1, 5, 2, 3, 0, 4).reshape(n_ * d, k, t, t, f * 2)
        mask = self._image(mask, n_ * d, k).reshape(n_, d, k, h, w) + self.mask_bias[:, None, None]

        # occlusion: one output summed over every slice's channels
        z = x.permute(0, 1, 3, 2, 4).reshape(f, n_ * t * t, d * 2 * c)
        z = torch.matmul(z, self._spectra(self.occlusion_weight, d, 1).reshape(f, d * 2 * c, 2))
        z = z.reshape(f, n_, 1, t, t, 2).permute(1, 2, 3, 4, 0, 5).reshape(n_, 1, t, t, f * 2)
        occlusion = self._image(z, n_, 1) + self.occlusion_bias[:, None, None]
        return mask, occlusion


def with_dft_heads(networks):
    """Give, in place, the warping module's sliced dense motion (:mod:`.sliced`) its two 7x7
    heads in tiled DFT form, where its slices' side has a tile; returns the networks."""
    motion = networks.warping_module.dense_motion_network
    side = networks.config.feature_size
    if dft_tile(side, motion.mask.weight.shape[-1]) is not None:
        motion.heads = TiledDFTHeads(motion.mask.weight, motion.mask.bias, motion.occlusion_weight,
                                     motion.occlusion_bias, side).eval()
    return networks
