"""The expression edit: the source image, redrawn with the driver's expression, in the source's pose.

Why: in a small model the source-pixel path (networks/source_pixels.py) gives G2D the source's
own eyes, brows and mouth, but moving pixels cannot close an eye or open a mouth: the lid and
the inside of the mouth are not in the source image. And a motion field driven by a global code
(M there) has to find each identity's features on its own. The source image shows where they
are; a small U-Net that reads it beside the change of expression code, z_d - z_s, redraws them
there: the edited image is what the source would look like with the driver's expression, and
the source-pixel path moves that instead of the source. Not a part of the paper (its volume
holds the features); docs/design.md, "The expression edit".

    edited = source + g(z_d - z_s) * R(source, z_d - z_s)

R is the U-Net (``expression_edit_channels`` wide, one stride-2 level per entry after the first,
skip connections, the code's change entering every level as a FiLM scale and shift); its last
conv starts at zero, so a model fine-tunes from one without the edit. g = tanh(|dz|^2 / tau^2)
is 0 exactly when the codes are equal, so the source driven by its own expression (the SDK's
first frame in relative mode) is unedited by construction, whatever R has learned.

Cost per frame at demo128 (8, 16, 32, 64): about 0.23 GFLOP at 128 px.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .blocks import plain_conv

GATE_SCALE = 0.1   # tau: a change of code this large opens the gate to tanh(1) = 0.76


class _FiLM(nn.Module):
    """(features, code change) -> features * (1 + gamma) + beta; zero at the start (no effect)."""

    def __init__(self, code_dim: int, channels: int):
        super().__init__()
        self.to_scale_shift = nn.Linear(code_dim, 2 * channels)
        with torch.no_grad():
            self.to_scale_shift.weight.zero_()
            self.to_scale_shift.bias.zero_()

    def forward(self, x: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        scale, shift = self.to_scale_shift(change)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + scale) + shift


class ExpressionEdit(nn.Module):
    """(source image (N, 3, S, S), z_d - z_s (N, Z)) -> the edited source image (N, 3, S, S)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        widths = tuple(config.expression_edit_channels)
        z = config.expression_dim
        self.stem = plain_conv(2, 3, widths[0], 3)
        self.down = nn.ModuleList(plain_conv(2, a, b, 3, stride=2) for a, b in zip(widths[:-1], widths[1:]))
        self.down_film = nn.ModuleList(_FiLM(z, w) for w in widths)
        self.bottleneck = plain_conv(2, widths[-1], widths[-1], 3)
        self.up = nn.ModuleList(plain_conv(2, b + a, a, 3) for a, b in zip(widths[:-1], widths[1:]))
        self.up_film = nn.ModuleList(_FiLM(z, w) for w in widths[:-1])
        self.to_residual = plain_conv(2, widths[0], 3, 3)
        with torch.no_grad():
            self.to_residual.weight.zero_()
            self.to_residual.bias.zero_()

    def gate(self, change: torch.Tensor) -> torch.Tensor:
        """(N, 1, 1, 1): g = tanh(|dz|^2 / tau^2), 0 exactly for equal codes."""
        return torch.tanh(change.pow(2).sum(dim=1) / GATE_SCALE ** 2)[:, None, None, None]

    def forward(self, source_image: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.down_film[0](self.stem(source_image), change), 0.2)
        skips = [x]
        for conv, film in zip(self.down, self.down_film[1:]):
            x = F.leaky_relu(film(conv(x), change), 0.2)
            skips.append(x)
        x = F.leaky_relu(self.bottleneck(x), 0.2)
        for conv, film, skip in zip(reversed(self.up), reversed(self.up_film), reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = F.leaky_relu(film(conv(torch.cat((x, skip), dim=1)), change), 0.2)
        return source_image + self.gate(change) * self.to_residual(x)
