"""The dense motion network in *slice layout*, the form of it that the bundle holds.

ONNX Runtime's CPU convolution on 5-D tensors is an im2col + GEMM path without the blocked
(NCHWc) kernels its 2-D convolution has; inside the generator graph the hourglass's 3x3x3 convs
at 16x64x64 ran at 3-5 G multiply-adds per second against 30-45 for 2-D convs (profiled, one
thread). So here the volume is kept as a stack of depth slices, ``(N, D, C, H, W)``, from the
hourglass's input to the mask and occlusion heads, and every 3-D operation becomes 2-D:

* a 3-D conv (stride 1, zero padding) is 2-D convs of the slices: either the kd depth
  neighbours of each slice concatenated as input channels, one conv with the taps' weights side
  by side (:func:`conv_input_taps`), or one conv whose output channels are the taps, shifted and
  summed (:func:`conv_output_taps`, for the 7x7x7 mask conv: 22 outputs are too few for the
  blocked kernel, 7 x 22 are not);
* each BatchNorm is folded into the conv before it (:func:`fold_batch_norm`), so ReLU fuses too;
* the hourglass's input (22 x 5 = 110 channels) gets zero channels up to a multiple of 16
  (:data:`CHANNEL_BLOCK`), and the convs reading it (the first, the last, the mask and occlusion
  heads) zero weights for them: ONNX Runtime only gives a conv its blocked kernel when the input
  channels are a multiple of its block (16 with AVX-512), and 3 x 110 or 3 x 142 are not;
* H/W pooling acts on the slices as a 2-D op; skips concatenate channels; an up block's 3x3x3
  conv of the 2x nearest-upsampled slices runs on the small slices in phase form
  (:mod:`.phased_spade`, the decoder's trick: about 2x fewer multiply-adds) where they are at
  least :data:`PHASED_MIN_SIDE` wide (profiled: on 2x2 and 4x4 slices, where the weights
  dominate, the 1.8x larger phase kernels made it slower);
* the occlusion conv reads ``(N, D * C, H, W)``: its weight's channels are permuted to match
  instead of the prediction being transposed back;
* the keypoint heatmaps are flushed to zero below 1e-30 (:func:`.dense_motion.keypoint_heatmaps`):
  their subnormal values had made the two convs reading them 4x slower; their squared
  distances are summed from per-axis terms (:func:`separable_keypoint_heatmaps`, same values);
* the first conv (112 -> 64 channels) takes its depth taps as outputs (no three stacked copies
  of the widest tensor), convs on slices of 4 x 4 pixels or fewer are one MatMul of explicit
  patches (:data:`IM2COL_MAX_SIDE`: ORT's conv ran them at half speed), and the wide
  input-tap convs on slices of 8 or more run in Winograd form (:func:`_winograd_worth`);
* the mask and occlusion heads may run by tiled DFTs (:mod:`.dft_conv`, set by
  :func:`.dft_conv.with_dft_heads`).

Exact up to float rounding (the tests compare with :class:`.dense_motion.DenseMotionNetwork`).
Built from a loaded network, it reads the same parameters; it is an export-time form only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from megaportraits_export.warp import sample_volume

from .blocks import Hourglass
from .dense_motion import HEATMAP_FLUSH_EXPONENT, KP_VARIANCE, DenseMotionNetwork, coordinate_grid
from .phased_spade import phase_kernels, phased_conv

OUTPUT_TAPS_MIN_DEPTH = 5  # kernel depth from which the taps go to output channels (the mask conv)
IM2COL_MAX_SIDE = 4  # slices at most this wide run their conv as one MatMul (profiled: ORT's conv ran at half speed)
WINOGRAD_MIN_TAP_CHANNELS = 384  # input-tap convs this wide (kd x C) on slices >= 8 run in Winograd form
CHANNEL_BLOCK = 16  # MLAS's NCHWc block with AVX-512 (8 with AVX2 divides it)
PHASED_MIN_SIDE = 8  # small-slice side from which an up block's conv runs in phase form


def fold_batch_norm(conv: nn.Conv3d, norm: nn.BatchNorm3d | None) -> tuple:
    """(weight, bias) of ``norm(conv(x))`` as one conv, in float64 then back to the conv's dtype."""
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    if norm is not None:
        scale = norm.weight.detach().double() / torch.sqrt(norm.running_var.double() + norm.eps)
        weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
        bias = (bias - norm.running_mean.double()) * scale + norm.bias.detach().double()
    return weight.to(conv.weight.dtype), bias.to(conv.weight.dtype)


def _check_plain(conv: nn.Conv3d) -> None:
    if conv.stride != (1, 1, 1) or conv.dilation != (1, 1, 1) or conv.groups != 1 \
            or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"no slice form for {conv} (stride 1, no dilation, one group, zero padding only)")


def conv_input_taps(slices: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: tuple) -> torch.Tensor:
    """3-D conv of ``(N, D, C, H, W)`` slices: each output slice o is one 2-D conv of input
    slices o - pd .. o + pd (zeros beyond the ends) stacked as channels, with the taps' weights
    (Cout, C, kd, kh, kw) laid out as (Cout, kd * C, kh, kw) in the same order."""
    n, _, c = slices.shape[:3]
    cout, _, kd, kh, kw = weight.shape
    pd, ph, pw = padding
    stacked, depth = _stack_taps(slices, kd, pd)
    out = F.conv2d(stacked, _input_taps(weight), bias, padding=(ph, pw))
    return out.reshape(n, depth, cout, *out.shape[-2:])


def _input_taps(weight: torch.Tensor) -> torch.Tensor:
    """(Cout, C, kd, kh, kw) -> (Cout, kd * C, kh, kw), tap-major as :func:`_stack_taps` stacks."""
    cout, c, kd, kh, kw = weight.shape
    return weight.permute(0, 2, 1, 3, 4).reshape(cout, kd * c, kh, kw)


def conv_input_taps_matmul(slices: torch.Tensor, columns_weight: torch.Tensor, bias: torch.Tensor,
                           depth_kernel: int, padding: tuple, kernel: tuple) -> torch.Tensor:
    """:func:`conv_input_taps` as one MatMul of explicit patches (im2col), for tiny slices: the
    stacked taps' kh x kw neighbourhoods side by side, times ``columns_weight``, the input-tap
    weight as (kd * C * kh * kw, Cout)."""
    n = slices.shape[0]
    pd, ph, pw = padding
    kh, kw = kernel
    stacked, depth = _stack_taps(slices, depth_kernel, pd)  # (N D', kd C, H, W)
    b, c, h, w = stacked.shape
    h_out, w_out = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    padded = F.pad(stacked, (pw, pw, ph, ph))
    patches = torch.stack([padded[:, :, a:a + h_out, e:e + w_out] for a in range(kh) for e in range(kw)], dim=-1)
    patches = patches.permute(0, 2, 3, 1, 4).reshape(b * h_out * w_out, c * kh * kw)
    out = torch.matmul(patches, columns_weight) + bias
    return out.reshape(n, depth, h_out, w_out, -1).permute(0, 1, 4, 2, 3)


def conv_upsampled_input_taps(slices: torch.Tensor, phase_weight: torch.Tensor, bias: torch.Tensor,
                              depth_kernel: int, depth_padding: int, relu: bool = False) -> torch.Tensor:
    """A 3x3x3-type conv (H/W kernel 3, padding 1) of the slices upsampled 2x in H and W with
    nearest neighbours, from the small slices: ``phase_weight`` holds the
    :func:`.phased_spade.phase_kernels` of the input-tap weight."""
    n = slices.shape[0]
    stacked, depth = _stack_taps(slices, depth_kernel, depth_padding)
    out = phased_conv(stacked, phase_weight, bias.repeat(4), 2, relu)
    return out.reshape(n, depth, *out.shape[1:])


def conv_output_taps(slices: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: tuple) -> torch.Tensor:
    """The same 3-D conv as one 2-D conv of every slice to kd x Cout channels (tap j's weights
    are outputs j * Cout ..), after which output slice o sums tap j of input slice o + j - pd."""
    n, d, c, h, w = slices.shape
    cout, _, kd, kh, kw = weight.shape
    pd, ph, pw = padding
    taps = weight.permute(2, 0, 1, 3, 4).reshape(kd * cout, c, kh, kw)
    y = F.conv2d(slices.reshape(n * d, c, h, w), taps, padding=(ph, pw))
    y = y.reshape(n, d, kd, cout, *y.shape[-2:])
    if pd:
        y = F.pad(y, (0, 0, 0, 0, 0, 0, 0, 0, pd, pd))
    depth = d + 2 * pd - kd + 1
    out = y[:, 0:depth, 0]
    for j in range(1, kd):
        out = out + y[:, j:j + depth, j]
    return out + bias[:, None, None]


def _stack_taps(slices: torch.Tensor, kd: int, pd: int) -> tuple:
    """(N, D, C, H, W) -> (N * D', kd * C, H, W): for each of the D' output slices o, input
    slices o - pd .. o - pd + kd - 1 (zeros beyond the ends) side by side as channels."""
    n, d, c, h, w = slices.shape
    depth = d + 2 * pd - kd + 1
    padded = F.pad(slices, (0, 0, 0, 0, 0, 0, pd, pd)) if pd else slices
    stacked = torch.cat([padded[:, j:j + depth] for j in range(kd)], dim=2) if kd > 1 else padded
    return stacked.reshape(n * depth, kd * c, h, w), depth


def _zero_channels(weight: torch.Tensor, dim: int, count: int) -> torch.Tensor:
    """``weight`` with ``count`` zero entries appended along ``dim``."""
    if not count:
        return weight
    shape = list(weight.shape)
    shape[dim] = count
    return torch.cat([weight, weight.new_zeros(shape)], dim=dim)


class SliceConv(nn.Module):
    """A Conv3d (with the BatchNorm after it folded in) on slices; the taps' layout chosen by
    kernel depth (:data:`OUTPUT_TAPS_MIN_DEPTH`). ``pad_inputs`` zero input channels (appended
    to the conv's) are ignored; ``pad_outputs`` output channels of zeros are appended."""

    def __init__(self, conv: nn.Conv3d, norm: nn.BatchNorm3d | None = None, pad_inputs: int = 0,
                 pad_outputs: int = 0, upsampled: bool = False, output_taps: bool | None = None,
                 im2col: bool = False, winograd: bool = False):
        """``upsampled``: the conv reads the slices 2x nearest-upsampled in H and W (the hourglass's
        up blocks), which it is given small; then a ReLU follows (fused). ``output_taps``: the
        layout of the depth taps (default: by kernel depth); ``im2col``: the input-tap form as
        one MatMul (:func:`conv_input_taps_matmul`, for slices of a few pixels); ``winograd``:
        the input-tap form's 2-D conv in Winograd F(4x4, 3x3) form (:mod:`.winograd`; measured
        faster for the wide ones, e.g. the hourglass's last conv, 432 -> 144 at 64x64: 391 -> 344 ms)."""
        super().__init__()
        _check_plain(conv)
        weight, bias = fold_batch_norm(conv, norm)
        weight = _zero_channels(_zero_channels(weight, 1, pad_inputs), 0, pad_outputs)
        bias = _zero_channels(bias, 0, pad_outputs)
        self.padding = tuple(conv.padding)
        self.kernel = tuple(conv.kernel_size[1:])
        self.depth_kernel = conv.kernel_size[0]
        self.output_taps = self.depth_kernel >= OUTPUT_TAPS_MIN_DEPTH if output_taps is None else output_taps
        self.upsampled = upsampled
        self.im2col = im2col
        if (upsampled or im2col or winograd) and self.output_taps:
            raise ValueError(f"the upsampled, im2col and Winograd slice forms of {conv} take input taps")
        self.winograd = None
        if winograd:
            from .winograd import WinogradConv2d

            taps = _input_taps(weight)
            plain = nn.Conv2d(taps.shape[1], taps.shape[0], self.kernel, padding=self.padding[1:])
            with torch.no_grad():
                plain.weight.copy_(taps)
                plain.bias.copy_(bias)
            self.winograd = WinogradConv2d(plain, 4)
        if upsampled:
            if conv.kernel_size[1:] != (3, 3) or self.padding[1:] != (1, 1):
                raise ValueError(f"no upsampled slice form for {conv} (H/W kernel 3, padding 1 only)")
            weight = phase_kernels(_input_taps(weight), 2)
        elif im2col:
            weight = _input_taps(weight).reshape(weight.shape[0], -1).t().contiguous()  # (kd C kh kw, Cout)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        if self.upsampled:
            return conv_upsampled_input_taps(slices, self.weight, self.bias, self.depth_kernel, self.padding[0],
                                             relu=True)
        if self.winograd is not None:
            stacked, depth = _stack_taps(slices, self.depth_kernel, self.padding[0])
            out = self.winograd(stacked)
            return out.reshape(slices.shape[0], depth, *out.shape[1:])
        if self.im2col:
            return conv_input_taps_matmul(slices, self.weight, self.bias, self.depth_kernel, self.padding,
                                          self.kernel)
        form = conv_output_taps if self.output_taps else conv_input_taps
        return form(slices, self.weight, self.bias, self.padding)


def separable_keypoint_heatmaps(keypoints: torch.Tensor, depth: int, height: int, width: int,
                                flush_below: float) -> torch.Tensor:
    """:func:`.dense_motion.keypoint_heatmaps` on :func:`.dense_motion.coordinate_grid`, flushed,
    with the squared distance summed from per-axis terms ((x - kx)^2 + (y - ky)^2) + (z - kz)^2,
    the same values in the same order, broadcast instead of a (N, K, D, H, W, 3) offset tensor."""
    def axis(n, i):
        grid = torch.linspace(-1.0, 1.0, n, dtype=keypoints.dtype, device=keypoints.device)
        offset = grid - keypoints[:, :, i:i + 1]  # (N, K, n)
        return offset * offset

    squared = (axis(width, 0)[:, :, None, None, :] + axis(height, 1)[:, :, None, :, None]) \
        + axis(depth, 2)[:, :, :, None, None]
    exponent = squared * (-0.5 / KP_VARIANCE)
    return torch.where(exponent > flush_below, torch.exp(exponent), torch.zeros_like(exponent))


def _per_slice(fn, slices: torch.Tensor) -> torch.Tensor:
    """Apply a 4-D op to every slice: (N, D, C, H, W) -> (N * D, C, H, W) -> back."""
    n, d = slices.shape[:2]
    out = fn(slices.reshape(n * d, *slices.shape[2:]))
    return out.reshape(n, d, *out.shape[1:])


def _winograd_worth(conv: nn.Conv3d, side: int, pad_inputs: int = 0) -> bool:
    """Whether an input-tap slice conv on ``side`` x ``side`` slices runs faster in Winograd form
    (:data:`WINOGRAD_MIN_TAP_CHANNELS`; 4x4 tiles need a side divisible by 4, and at 8 or more)."""
    kd, kh, kw = conv.kernel_size
    return (kd < OUTPUT_TAPS_MIN_DEPTH and (kh, kw) == (3, 3) and tuple(conv.padding[1:]) == (1, 1)
            and kd * (conv.in_channels + pad_inputs) >= WINOGRAD_MIN_TAP_CHANNELS and side >= 8 and side % 4 == 0)


class SlicedHourglass(nn.Module):
    """:class:`.blocks.Hourglass` on slices: down blocks conv+BN+ReLU then 2x2 pooling, up
    blocks 2x nearest upsampling then conv+BN+ReLU, skips concatenated on channels."""

    def __init__(self, hourglass: Hourglass, side: int, pad_inputs: int = 0):
        """``side``: the input slices' height (= width); ``pad_inputs``: zero channels appended
        to the input; the output carries as many more, zeros too (the input is the last skip,
        so they end both)."""
        super().__init__()
        down = hourglass.encoder.down_blocks
        # the first conv's input is the widest tensor here: its taps go to the (fewer) outputs
        # rather than stacking three copies of it; convs on slices of a few pixels are MatMuls
        self.down = nn.ModuleList(
            SliceConv(b.conv, b.norm, pad_inputs if i == 0 else 0,
                      output_taps=True if i == 0 and b.conv.out_channels < b.conv.in_channels + pad_inputs else None,
                      im2col=i > 0 and (side >> i) <= IM2COL_MAX_SIDE,
                      winograd=i > 0 and _winograd_worth(b.conv, side >> i))
            for i, b in enumerate(down))
        small_sides = [side >> (len(down) - j) for j in range(len(down))]  # each up block's input
        self.up = nn.ModuleList(SliceConv(b.conv, b.norm, upsampled=small >= PHASED_MIN_SIDE,
                                          im2col=small < PHASED_MIN_SIDE and 2 * small <= IM2COL_MAX_SIDE)
                                for b, small in zip(hourglass.decoder.up_blocks, small_sides))
        conv = hourglass.decoder.conv
        self.out = SliceConv(conv, hourglass.decoder.norm, pad_inputs, pad_inputs,
                             winograd=_winograd_worth(conv, side, pad_inputs))

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        skips = [slices]
        for conv in self.down:
            skips.append(_per_slice(lambda x: F.avg_pool2d(x, 2), F.relu(conv(skips[-1]))))
        out = skips.pop()
        for conv in self.up:
            if not conv.upsampled:
                out = F.relu(conv(_per_slice(lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest"), out)))
            else:
                out = conv(out)  # upsampling, conv + BN, ReLU in one
            out = torch.cat([out, skips.pop()], dim=2)
        return F.relu(self.out(out))


class SlicedDenseMotion(nn.Module):
    """:class:`.dense_motion.DenseMotionNetwork`, same inputs and outputs, computed on slices.
    ``side``: the feature volume's height (= width), which picks the up blocks' forms."""

    def __init__(self, network: DenseMotionNetwork, side: int):
        super().__init__()
        self.num_kp = network.num_kp
        self.compress = network.compress  # 1x1x1 conv on the 32-channel volume: cheap as it is
        self.norm = network.norm
        inputs = network.hourglass.encoder.down_blocks[0].conv.in_channels
        self.pad = -inputs % CHANNEL_BLOCK
        self.hourglass = SlicedHourglass(network.hourglass, side, self.pad)
        self.mask = SliceConv(network.mask, pad_inputs=self.pad)
        occlusion = network.occlusion
        channels = network.hourglass.out_filters
        # its input channels are c * D + d; the slices give d * (C + pad) + c
        weight = occlusion.weight.detach()
        weight = weight.reshape(weight.shape[0], channels, -1, *weight.shape[-2:]).transpose(1, 2)
        weight = _zero_channels(weight, 2, self.pad)
        self.register_buffer("occlusion_weight", weight.flatten(1, 2).contiguous())
        self.register_buffer("occlusion_bias", occlusion.bias.detach().clone())
        self.occlusion_padding = occlusion.padding
        self.heads = None  # or the two heads in one tiled DFT form (:func:`.dft_conv.with_dft_heads`)

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> tuple:
        """-> (deformation (N, D, H, W, 3), occlusion map (N, 1, H, W)), as the network's."""
        feature = F.relu(self.norm(self.compress(feature)))
        n, c, d, h, w = feature.shape
        k = self.num_kp
        grid = coordinate_grid(d, h, w, feature)
        shifts = kp_source - kp_driving
        proposals = torch.cat([grid.expand(n, 1, d, h, w, 3),
                               grid[None, None] + shifts[:, :, None, None, None, :]], dim=1)
        moved = sample_volume(feature, proposals.reshape(n, (k + 1) * d, h, w, 3))  # (N, C, (K+1) D, H, W)
        moved = moved.reshape(n, c, k + 1, d, h, w).permute(0, 3, 2, 1, 4, 5)  # (N, D, K+1, C, H, W)
        heatmaps = (separable_keypoint_heatmaps(kp_driving, d, h, w, HEATMAP_FLUSH_EXPONENT)
                    - separable_keypoint_heatmaps(kp_source, d, h, w, HEATMAP_FLUSH_EXPONENT))  # no subnormals
        heatmaps = torch.cat([heatmaps.new_zeros(n, 1, d, h, w), heatmaps], dim=1).transpose(1, 2)
        slices = torch.cat([heatmaps[:, :, :, None], moved], dim=3).reshape(n, d, (k + 1) * (c + 1), h, w)
        if self.pad:
            slices = F.pad(slices, (0, 0, 0, 0, 0, self.pad))

        prediction = self.hourglass(slices)  # (N, D, C' + pad, H, W)
        if self.heads is not None:
            mask, occlusion = self.heads(prediction)
        else:
            mask = self.mask(prediction)
            occlusion = F.conv2d(prediction.reshape(n, -1, h, w), self.occlusion_weight, self.occlusion_bias,
                                 padding=self.occlusion_padding)
        mask = torch.softmax(mask, dim=2)  # (N, D, K+1, H, W)
        deformation = grid[None] + torch.einsum("ndkhw,nkc->ndhwc", mask[:, :, 1:], shifts)
        return deformation, torch.sigmoid(occlusion)


def with_sliced_dense_motion(networks):
    """Replace, in place, the warping module's dense motion network by its slice form."""
    warping = networks.warping_module
    warping.dense_motion_network = SlicedDenseMotion(warping.dense_motion_network,
                                                     networks.config.feature_size).eval()
    return networks
