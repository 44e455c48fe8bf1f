"""Multi-scale PatchGAN discriminator with spectral norm, hinge loss and feature matching.

Why these: MegaPortraits trains its generator adversarially with a multi-scale patch
discriminator (pix2pixHD, Wang et al. 2018), the hinge loss (lambda_adv = 1) and a feature-matching
term (lambda_FM = 40) that compares the discriminator's intermediate features of real and generated
images, which steadies GAN training. Spectral norm (Miyato et al., 2018) on every convolution keeps
each layer 1-Lipschitz, so the discriminator cannot overpower the generator early.

Outputs are ``list`` (one per scale, full resolution first) of ``list`` of feature maps, the last
one being the patch logits.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

DiscriminatorOutputs = Sequence[Sequence[torch.Tensor]]


def _conv(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    return spectral_norm(nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=stride, padding=2))


class PatchDiscriminator(nn.Module):
    """Strided 4x4 convolutions down to a map of per-patch real/fake logits."""

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        num_layers: int = 4,
        max_channels: int = 512,
    ):
        super().__init__()
        blocks, channels = [], in_channels
        for index in range(num_layers):
            out_channels = min(base_channels * 2 ** index, max_channels)
            stride = 2 if index < num_layers - 1 else 1
            blocks.append(nn.Sequential(_conv(channels, out_channels, stride), nn.LeakyReLU(0.2)))
            channels = out_channels
        blocks.append(_conv(channels, 1, stride=1))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        features, x = [], image
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features


class MultiScaleDiscriminator(nn.Module):
    """The same patch discriminator (separate weights) at full, 1/2, 1/4, ... resolution."""

    def __init__(
        self,
        num_scales: int = 2,
        in_channels: int = 3,
        base_channels: int = 64,
        num_layers: int = 4,
    ):
        super().__init__()
        self.scales = nn.ModuleList(
            PatchDiscriminator(in_channels, base_channels, num_layers) for _ in range(num_scales))

    def forward(self, image: torch.Tensor) -> list[list[torch.Tensor]]:
        outputs = []
        for index, discriminator in enumerate(self.scales):
            if index:
                image = F.avg_pool2d(image, kernel_size=3, stride=2, padding=1, count_include_pad=False)
            outputs.append(discriminator(image))
        return outputs


def discriminator_hinge_loss(real: DiscriminatorOutputs, fake: DiscriminatorOutputs) -> torch.Tensor:
    """mean(relu(1 - D(real))) + mean(relu(1 + D(fake))), averaged over scales."""
    terms = [F.relu(1.0 - r[-1]).mean() + F.relu(1.0 + f[-1]).mean() for r, f in zip(real, fake)]
    return torch.stack(terms).mean()


def generator_hinge_loss(fake: DiscriminatorOutputs) -> torch.Tensor:
    """-mean(D(fake)), averaged over scales."""
    return torch.stack([-f[-1].mean() for f in fake]).mean()


def feature_matching_loss(fake: DiscriminatorOutputs, real: DiscriminatorOutputs) -> torch.Tensor:
    """L1 between the discriminator's features of generated and real images, averaged over the
    layers (logits excluded) and the scales. Real features are constants (detached)."""
    per_scale = []
    for fake_features, real_features in zip(fake, real):
        layers = [F.l1_loss(f, r.detach()) for f, r in zip(fake_features[:-1], real_features[:-1])]
        per_scale.append(torch.stack(layers).mean())
    return torch.stack(per_scale).mean()
