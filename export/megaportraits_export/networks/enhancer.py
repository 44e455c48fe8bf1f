"""G_enh, the high-resolution enhancer: the base model's image -> the same image at 2x its side.

The paper (arXiv 2207.07621, "High resolution") keeps the base model frozen and trains an
image-to-image network on top of its output: an encoder of a convolution and 2 residual
blocks, a decoder of 8 residual blocks, 2 upsampling stages and 3 residual blocks at the high
resolution (512 -> 1024). Two upsampling stages make a 2x network only if the encoder halves
the image once, so here the encoder's first residual block downsamples (the second stays at
half size), the 8 decoder blocks work at half the base side (256x256 for paper512, where most
of the capacity is cheapest), and the two stages bring it back to the base side and then to
twice it.

Two choices the paper leaves open, made so that training starts from a sound model:

- the network predicts a residual over the bicubic upsampling of its input (its last conv
  starts at zero, so an untrained enhancer is exactly bicubic upsampling, the baseline the paper
  and the evaluation compare with, and any progress of training is progress over it), and the
  result is clipped to [0, 1], the bundle's value range. (Over bilinear, 200 tiny-size steps of
  L1 still scored below bicubic: PSNR 32.10 vs 33.24 on held-out super-resolution pairs.)
- a base model with a matte (``ModelConfig.matte``) renders RGBA; its enhancer reads and writes
  4 channels, the matte upsampled with the colours (``channels`` 4).

The architecture is named by a frozen :class:`EnhancerConfig`, with presets in :data:`PRESETS`
keyed like the base presets they lift (``paper512``: 512 -> 1024; ``demo128``: 128 -> 256 with
a matte, the bundled demo model's twin; ``tiny``: 64 -> 128 for tests).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResBlock2d, group_norm, plain_conv

SCALE = 2  # the enhancer doubles the side: two upsampling stages after one halving


@dataclass(frozen=True)
class EnhancerConfig:
    """The widths of one G_enh. ``base_size`` is the side it reads (the base model's image_size);
    it writes ``base_size * 2``. ``channels`` 3 (RGB) or 4 (RGB + matte)."""

    name: str
    base_size: int
    channels: int
    stem_channels: int          # the encoder's conv, at the base side
    encoder_channels: tuple     # its 2 residual blocks: the first halves the side
    decoder_channels: int       # the 8 decoder blocks, at half the base side
    decoder_blocks: int
    up_channels: tuple          # the 2 upsampling stages (nearest 2x + one residual block each)
    high_blocks: int            # residual blocks at the high side, width up_channels[-1]

    def __post_init__(self) -> None:
        if self.channels not in (3, 4):
            raise ValueError(f"{self.name}: channels must be 3 (RGB) or 4 (RGB + matte), got {self.channels}")
        if len(self.encoder_channels) != 2 or len(self.up_channels) != 2:
            raise ValueError(f"{self.name}: encoder_channels and up_channels need 2 entries each (the paper's "
                             f"2 encoder blocks and 2 upsampling stages)")
        if self.base_size % 2:
            raise ValueError(f"{self.name}: base_size {self.base_size} must be even (the encoder halves it)")

    @property
    def output_size(self) -> int:
        return self.base_size * SCALE

    @property
    def matte(self) -> bool:
        return self.channels == 4

    def replace(self, **changes) -> "EnhancerConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EnhancerConfig":
        d = dict(d)
        for key in ("encoder_channels", "up_channels"):
            d[key] = tuple(d[key])
        return cls(**d)


PRESETS: dict[str, EnhancerConfig] = {
    # 512 -> 1024: 8 blocks of 128 channels at 256x256, stages of 64 (512x512) and 32 (1024x1024)
    "paper512": EnhancerConfig(name="paper512", base_size=512, channels=3, stem_channels=32,
                               encoder_channels=(64, 128), decoder_channels=128, decoder_blocks=8,
                               up_channels=(64, 32), high_blocks=3),
    # 128 -> 256 with the matte: the bundled demo model's enhancer. Its stages are narrow (16 at
    # 128x128, 8 at 256x256): on one CPU core a training step at batch 8 took 2.0x as long with
    # (32, 16), and the demo's run has one core for an hour or so
    "demo128": EnhancerConfig(name="demo128", base_size=128, channels=4, stem_channels=16,
                              encoder_channels=(32, 32), decoder_channels=32, decoder_blocks=8,
                              up_channels=(16, 8), high_blocks=3),
    # 64 -> 128: tests (forward and backward in a fraction of a second)
    "tiny": EnhancerConfig(name="tiny", base_size=64, channels=3, stem_channels=8,
                           encoder_channels=(8, 16), decoder_channels=16, decoder_blocks=8,
                           up_channels=(8, 8), high_blocks=3),
}
PRESETS["tiny_matte"] = PRESETS["tiny"].replace(name="tiny_matte", channels=4)


def get_enhancer_config(name: str) -> EnhancerConfig:
    """The enhancer preset called ``name``; ValueError naming the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown enhancer preset {name!r}; choose one of {', '.join(PRESETS)}") from None


class Enhancer(nn.Module):
    """G_enh: (N, C, S, S) in [0, 1] -> (N, C, 2S, 2S) in [0, 1] (see the module docstring)."""

    def __init__(self, config: EnhancerConfig):
        super().__init__()
        self.config = config
        first, second = config.encoder_channels
        self.encoder = nn.Sequential(
            plain_conv(2, config.channels, config.stem_channels, 3),     # the conv, at the base side
            ResBlock2d(config.stem_channels, first, downsample=True),   # -> half the side
            ResBlock2d(first, second))
        self.decoder = nn.Sequential(*(
            ResBlock2d(second if i == 0 else config.decoder_channels, config.decoder_channels)
            for i in range(config.decoder_blocks)))
        widths = (config.decoder_channels,) + tuple(config.up_channels)
        self.up_stages = nn.ModuleList(ResBlock2d(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.high = nn.Sequential(*(ResBlock2d(widths[-1], widths[-1]) for _ in range(config.high_blocks)))
        self.to_residual = nn.Sequential(group_norm(widths[-1]), nn.ReLU(),
                                         plain_conv(2, widths[-1], config.channels, 3))
        with torch.no_grad():  # an untrained enhancer is bicubic upsampling
            self.to_residual[-1].weight.zero_()
            self.to_residual[-1].bias.zero_()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.decoder(self.encoder(image))
        for stage in self.up_stages:
            x = stage(F.interpolate(x, scale_factor=2, mode="nearest"))
        x = self.high(x)
        upsampled = F.interpolate(image, scale_factor=SCALE, mode="bicubic", align_corners=False)
        return torch.clamp(upsampled + self.to_residual(x), 0.0, 1.0)


def build_enhancer(config: EnhancerConfig | str) -> Enhancer:
    return Enhancer(get_enhancer_config(config) if isinstance(config, str) else config)
