"""The SPADE decoder's residual blocks rearranged for fewer multiply-adds and passes, the form
the bundle holds them in.

Three rewrites, each exact in real arithmetic:

* the learned shortcut ``conv_s(norm_s(x)) = conv_s(n * (1 + gamma_s)) + conv_s(beta_s(a_s))``,
  and ``conv_s`` (1x1, no bias) after ``beta_s`` (3x3) is one 3x3 conv with ``conv_s``'s output
  width: in ``up_1`` at 256x256 the 128 -> 256 conv (19.3 G multiply-adds) becomes 128 -> 64
  (4.8 G), in ``up_0`` at 128x128 128 -> 512 becomes 128 -> 256 (9.7 G -> 4.8 G). The composed
  kernel is formed in float64;
* ``1 + gamma`` is ``gamma`` with 1 added to its bias (one full-size addition less per SPADE);
* a block's input is only ever read through its instance norm, so each block normalises it
  once (``norm_s`` and ``norm_0`` read the same map), and the upsampling blocks normalise the
  decoder's map *before* its 2x nearest upsampling: mean and variance of a nearest-upsampled map
  are the small map's, so ``IN(up(x)) = up(IN(x))``, computed on a quarter of the pixels.

:func:`with_fused_spade_blocks` builds the decoder in this form from a loaded one (its SPADEs
plain or with phased label convs, :mod:`.phased_spade`); it reads the same parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import SPADE, SPADEResnetBlock, instance_norm
from .phased_spade import PhasedSPADE
from .spade_decoder import MIDDLE_BLOCKS, SPADEDecoder


def _conv_with_bias(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    out = nn.Conv2d(weight.shape[1], weight.shape[0], conv.kernel_size, padding=conv.padding)
    with torch.no_grad():
        out.weight.copy_(weight.to(conv.weight.dtype))
        out.bias.copy_(bias.to(conv.weight.dtype))
    return out


def one_plus(conv: nn.Conv2d) -> nn.Conv2d:
    """``1 + conv(a)`` as one conv (1 added to the bias)."""
    bias = conv.bias.detach() if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)
    return _conv_with_bias(conv, conv.weight.detach(), bias + 1)


def compose_1x1_after(outer: nn.Conv2d, inner: nn.Conv2d) -> nn.Conv2d:
    """``outer(inner(a))`` for a 1x1 ``outer`` (stride 1, one group) as one conv shaped like
    ``inner``, with ``outer``'s output width; weights summed in float64."""
    if outer.kernel_size != (1, 1) or outer.stride != (1, 1) or outer.groups != 1 or outer.padding != (0, 0):
        raise ValueError(f"{outer} is not a plain 1x1 conv")
    mix = outer.weight.detach().double()[:, :, 0, 0]  # (out, mid)
    weight = torch.einsum("om,mikl->oikl", mix, inner.weight.detach().double())
    bias = mix @ (inner.bias.detach().double() if inner.bias is not None else mix.new_zeros(mix.shape[1]))
    if outer.bias is not None:
        bias = bias + outer.bias.detach().double()
    return _conv_with_bias(inner, weight, bias)


class Modulation(nn.Module):
    """A SPADE's part after the instance norm: ``n * gamma1(a) + beta(a)``, ``a`` its shared
    label features, ``gamma1`` its gamma conv with 1 in the bias. ``beta=False`` leaves the
    beta term out (the learned shortcut's, composed with ``conv_s`` elsewhere)."""

    def __init__(self, spade: nn.Module, beta: bool = True):
        super().__init__()
        if not isinstance(spade, (SPADE, PhasedSPADE)):
            raise TypeError(f"not a SPADE: {type(spade).__name__}")
        self.phased = isinstance(spade, PhasedSPADE)
        self.mlp_shared = spade.mlp_shared  # PhasedSPADE: reads the small label itself
        self.gamma1 = one_plus(spade.mlp_gamma)
        self.mlp_beta = spade.mlp_beta if beta else None

    def label_features(self, normalized: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if not self.phased and label.shape[-2:] != normalized.shape[-2:]:
            label = F.interpolate(label, size=normalized.shape[-2:], mode="nearest")
        return self.mlp_shared(label)

    def forward(self, normalized: torch.Tensor, label: torch.Tensor, features: torch.Tensor | None = None):
        a = self.label_features(normalized, label) if features is None else features
        out = normalized * self.gamma1(a)
        return out + self.mlp_beta(a) if self.mlp_beta is not None else out


class FusedSPADEResnetBlock(nn.Module):
    """:class:`.blocks.SPADEResnetBlock` with the rewrites of the module docstring; ``upsample``:
    the block reads the decoder's map before its nearest upsampling by that factor."""

    def __init__(self, block: SPADEResnetBlock, upsample: int = 1):
        super().__init__()
        self.upsample = upsample
        self.learned_shortcut = block.learned_shortcut
        self.norm_0, self.norm_1 = Modulation(block.norm_0), Modulation(block.norm_1)
        self.conv_0, self.conv_1 = block.conv_0, block.conv_1
        if self.learned_shortcut:
            self.norm_s = Modulation(block.norm_s, beta=False)
            self.conv_s = block.conv_s
            self.shortcut_beta = compose_1x1_after(block.conv_s, block.norm_s.mlp_beta)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        normalized = instance_norm(x)
        if self.upsample > 1:
            normalized = F.interpolate(normalized, scale_factor=float(self.upsample), mode="nearest")
            if not self.learned_shortcut:
                raise ValueError("an upsampling block without a learned shortcut reads x itself")
        if self.learned_shortcut:
            a = self.norm_s.label_features(normalized, label)
            shortcut = self.conv_s(self.norm_s(normalized, label, a)) + self.shortcut_beta(a)
        else:
            shortcut = x
        dx = self.conv_0(F.leaky_relu(self.norm_0(normalized, label), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(instance_norm(dx), label), 0.2))
        return shortcut + dx


class FusedSPADEDecoder(nn.Module):
    """:class:`.spade_decoder.SPADEDecoder`, same input and output, with fused blocks (the two
    upsampling blocks take the map before its upsampling)."""

    def __init__(self, decoder: SPADEDecoder):
        super().__init__()
        self.fc = decoder.fc
        self.middle = nn.ModuleList(FusedSPADEResnetBlock(getattr(decoder, f"G_middle_{i}"))
                                    for i in range(MIDDLE_BLOCKS))
        self.up_0 = FusedSPADEResnetBlock(decoder.up_0, upsample=2)
        self.up_1 = FusedSPADEResnetBlock(decoder.up_1, upsample=2)
        self.conv_img = decoder.conv_img

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        x = self.fc(feature)
        for block in self.middle:
            x = block(x, feature)
        x = self.up_1(self.up_0(x, feature), feature)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)))


def with_fused_spade_blocks(networks):
    """Replace, in place, the networks' decoder by its fused form; returns the networks."""
    networks.spade_generator = FusedSPADEDecoder(networks.spade_generator).eval()
    return networks
