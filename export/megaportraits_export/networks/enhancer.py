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

Three additions to the paper's layout, each off unless a preset turns it on (the demo
preset has the linear path and the gate; ``paper512`` keeps the paper's plain layout), measured
on the demo size's clean super-resolution pairs (docs/demo_model.md, "The demo enhancer"):

- ``skips``: the stem's features join the first upsampling stage (at the base side) and the
  bicubic image joins the high-resolution blocks and the last conv. Without them the image
  reaches the output only through the decoder at half the base side, and 900 steps learned
  no colour residual at all (weights ~1e-5; the enhancer was bicubic's colours); with them
  300 probe steps learned some (+0.008 to +0.17 dB on clean pairs), but a run with them
  (stopped at step 650) lost 0.08 dB on the base model's renderings through its matte, so the
  demo preset leaves them off and gets its colours from the linear path.
- ``linear_taps``: a linear super-resolution filter, per output phase a ``taps`` x ``taps``
  window of the input, shared by the colour channels, in place of bicubic as the path the
  residual is added to. It starts as bicubic (exactly, up to float rounding: bicubic is such
  a filter, 4 x 4 taps inside a 6 x 6 window), and training may set it first to the
  least-squares filter of the pairs (``training.enhancement.least_squares_linear_path``, the
  Wiener filter of box-downsampled portraits: +0.71 dB over bicubic on held-out pairs where 300
  SGD steps had found at most +0.17).
- ``contrast_gate`` k: the colours' change over bicubic is scaled by v / (v + k), v the local
  variance (5 x 5) of the bicubic image's grey level, so flat regions stay bicubic's exactly.
  SSIM punishes any noise where the truth is flat (a third of a synthetic portrait's pixels);
  ungated, every gain in PSNR came with a loss in SSIM (the least-squares filter: +0.71 dB and
  -0.0001; gated at k = 1e-4: +0.76 dB and +0.0015). The gate also spares the base model's
  blurry renderings, where a sharpening filter is wrong: on them the least-squares filter costs
  0.020 dB at k = 1e-4, 0.006 at 3e-3 and 0.003 at 1e-2, the demo preset's k (which keeps
  +0.54 dB and +0.0011 SSIM on clean pairs; 16 held-out pairs each).

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
    skips: bool = False         # the stem -> first stage and bicubic -> high blocks skips
    linear_taps: int = 0        # the linear path's window per output phase; 0: bicubic
    contrast_gate: float = 0.0  # k of the colour change's gate v / (v + k); 0: ungated

    def __post_init__(self) -> None:
        if self.channels not in (3, 4):
            raise ValueError(f"{self.name}: channels must be 3 (RGB) or 4 (RGB + matte), got {self.channels}")
        if len(self.encoder_channels) != 2 or len(self.up_channels) != 2:
            raise ValueError(f"{self.name}: encoder_channels and up_channels need 2 entries each (the paper's "
                             f"2 encoder blocks and 2 upsampling stages)")
        if self.linear_taps not in (0, 6, 8):
            raise ValueError(f"{self.name}: linear_taps must be 0 (bicubic), 6 or 8, got {self.linear_taps}")
        if self.contrast_gate < 0:
            raise ValueError(f"{self.name}: contrast_gate must be >= 0, got {self.contrast_gate}")
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
    # (16, 8)); the linear path and the gate: see the module docstring
    "demo128": EnhancerConfig(name="demo128", base_size=128, channels=4, stem_channels=16,
                              encoder_channels=(32, 32), decoder_channels=32, decoder_blocks=8,
                              up_channels=(16, 8), high_blocks=3, linear_taps=6, contrast_gate=1e-2),
    # 64 -> 128: tests (forward and backward in a fraction of a second)
    "tiny": EnhancerConfig(name="tiny", base_size=64, channels=3, stem_channels=8,
                           encoder_channels=(8, 16), decoder_channels=16, decoder_blocks=8,
                           up_channels=(8, 8), high_blocks=3),
}
# for tests: the demo preset's options and the skips
PRESETS["tiny_matte"] = PRESETS["tiny"].replace(name="tiny_matte", channels=4, skips=True, linear_taps=6,
                                                contrast_gate=1e-2)


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
        high = widths[-1]
        if config.skips:  # each skip joins through one conv back to the stage's width
            self.join_stem = plain_conv(2, widths[1] + config.stem_channels, widths[1], 3)
            self.join_upsampled = plain_conv(2, high + config.channels, high, 3)
        self.high = nn.Sequential(*(ResBlock2d(high, high) for _ in range(config.high_blocks)))
        # norm, ReLU, conv; with the skips the conv also reads the bicubic image
        self.to_residual = nn.Sequential(group_norm(high), nn.ReLU(), plain_conv(
            2, high + (config.channels if config.skips else 0), config.channels, 3))
        with torch.no_grad():  # an untrained enhancer is bicubic upsampling
            self.to_residual[-1].weight.zero_()
            self.to_residual[-1].bias.zero_()
        if config.linear_taps:
            self.linear_path = nn.Conv2d(1, SCALE * SCALE, config.linear_taps)
            with torch.no_grad():
                self.linear_path.weight.copy_(bicubic_taps(config.linear_taps))
                self.linear_path.bias.zero_()

    def linear_upsampling(self, colours: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> (N, 3, 2S, 2S) through the linear path, each channel alike."""
        n, c, h, w = colours.shape
        x = F.pad(colours.reshape(n * c, 1, h, w), linear_padding(self.config.linear_taps), mode="replicate")
        return F.pixel_shuffle(self.linear_path(x), SCALE).reshape(n, c, h * SCALE, w * SCALE)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        config = self.config
        stem = self.encoder[0](image)
        x = self.decoder(self.encoder[2](self.encoder[1](stem)))
        upsampled = F.interpolate(image, scale_factor=SCALE, mode="bicubic", align_corners=False)
        for i, stage in enumerate(self.up_stages):
            x = stage(F.interpolate(x, scale_factor=2, mode="nearest"))
            if config.skips and i == 0:
                x = self.join_stem(torch.cat([x, stem], 1))
        if config.skips:
            x = self.join_upsampled(torch.cat([x, upsampled], 1))
        norm, relu, last = self.to_residual
        x = relu(norm(self.high(x)))
        residual = last(torch.cat([x, upsampled], 1) if config.skips else x)
        if not (config.linear_taps or config.contrast_gate):
            return torch.clamp(upsampled + residual, 0.0, 1.0)
        colours = upsampled[:, :3]
        change = residual[:, :3]
        if config.linear_taps:
            change = change + self.linear_upsampling(image[:, :3]) - colours
        if config.contrast_gate:
            change = change * contrast(colours, config.contrast_gate)
        out = torch.cat([colours + change, upsampled[:, 3:] + residual[:, 3:]], 1)
        return torch.clamp(out, 0.0, 1.0)


def linear_padding(taps: int) -> tuple:
    """The replicate padding (left, right, top, bottom) of the linear path's window: low pixel i
    and its taps i - taps/2 .. i + taps/2 - 1 make the output pixels 2i and 2i + 1 (bicubic reads
    i - 2 .. i + 1 and i - 1 .. i + 2 for them: inside the window from 6 taps on)."""
    return (taps // 2, taps // 2 - 1) * 2


def bicubic_taps(taps: int) -> torch.Tensor:
    """The linear path's weight (4, 1, taps, taps) that is exactly bicubic 2x upsampling
    (``F.interpolate(mode="bicubic", align_corners=False)``, whose border clamps as the
    replicate padding does): read off the upsampling of a unit impulse, phase by phase."""
    side = 4 * taps
    impulse = torch.zeros(1, 1, side, side, dtype=torch.float64)
    centre = side // 2
    impulse[0, 0, centre, centre] = 1.0
    up = F.interpolate(impulse, scale_factor=SCALE, mode="bicubic", align_corners=False)[0, 0]
    weight = torch.zeros(SCALE * SCALE, 1, taps, taps, dtype=torch.float64)
    before = taps // 2
    for a in range(SCALE):
        for b in range(SCALE):
            for di in range(-before, taps - before):
                for dj in range(-before, taps - before):
                    # output (2i + a, 2j + b) reads input (i + di, j + dj); the impulse sits at centre
                    weight[a * SCALE + b, 0, di + before, dj + before] = \
                        up[SCALE * (centre - di) + a, SCALE * (centre - dj) + b]
    return weight.float()


def contrast(colours: torch.Tensor, k: float) -> torch.Tensor:
    """The gate v / (v + k) of (N, 3, H, W) colours: v the 5 x 5 local variance of their grey
    level, 0 where the image is flat, towards 1 on edges."""
    grey = colours.mean(1, keepdim=True)
    mean = F.avg_pool2d(grey, 5, 1, 2, count_include_pad=False)
    variance = (F.avg_pool2d(grey * grey, 5, 1, 2, count_include_pad=False) - mean * mean).clamp_min(0.0)
    return variance / (variance + k)


def build_enhancer(config: EnhancerConfig | str) -> Enhancer:
    return Enhancer(get_enhancer_config(config) if isinstance(config, str) else config)
