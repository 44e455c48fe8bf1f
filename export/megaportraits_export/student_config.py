"""Architecture presets of the real-time student (networks/student.py), one per base-model size.

The paper distils its teacher (G_enh o G_base) into a network that sees only the driver image:
a ResNet-18 encoder of the driver and a generator of SPADE residual blocks whose modulation
tensors belong to the avatar (each avatar owns fixed tensors, spatially capped at 64 and
bilinearly upsampled), so one network holds many avatars and picks one by index. A student
renders at its teacher's output size, so there is one preset per base preset: ``paper512``,
``small256``, ``demo128`` and ``tiny`` (tests), and ``for_teacher`` picks the one that fits a
teacher bundle.

Widths are chosen for speed: the teacher's per-frame work (driver graph, warp generator, 3-D
sampling, G2D at the volume size) is replaced by one 2-D encoder at half the output size and a
generator that narrows as it grows, so most of its convolutions run at low resolution.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import BackboneConfig


@dataclass(frozen=True)
class StudentConfig:
    """The architecture of one student network (see the module docstring for the presets)."""

    name: str
    image_size: int
    # driver encoder: a ResNet-style trunk (output stride 32) on the driver image box-filtered to
    # encoder_input_size; its last feature map (encoder_input_size / 32 square) starts the generator
    encoder: BackboneConfig
    encoder_input_size: int
    # generator: one SPADE residual block at the encoder's resolution with generator_channels[0],
    # then one 2x nearest upsampling + SPADE residual block per later entry, up to image_size
    generator_channels: tuple
    # the side of every avatar's modulation tensors is min(block resolution, spade_cap); they are
    # bilinearly upsampled to the block's resolution (the paper caps them at 64)
    spade_cap: int
    # how many avatars the network holds (a distillation sets it to the avatars it is given)
    num_avatars: int = 1
    # at export, blocks up to this resolution get their SPADE tables upsampled once to full size
    # (no Resize per frame); larger blocks keep the capped tables and upsample them per frame, so
    # that an avatar stays small (paper512: 191.6 MB an avatar with every table at full size)
    full_tables_up_to: int = 128
    # a fourth output channel, the person's matte, where the teacher renders one
    matte: bool = False
    # the last block runs at half the image size and the output conv predicts each 2x2 pixel
    # group (4x the channels, then a pixel shuffle): at small sizes the full-resolution block of
    # 8 channels would cost a third of all multiply-accumulates
    subpixel_output: bool = False

    def __post_init__(self) -> None:
        start = self.encoder_input_size // 32
        if start < 1 or self.encoder_input_size % 32:
            raise ValueError(f"student {self.name}: encoder_input_size {self.encoder_input_size} must be a "
                             "multiple of 32 (the encoder's output stride)")
        if self.image_size % self.encoder_input_size:
            raise ValueError(f"student {self.name}: image_size {self.image_size} must be a multiple of "
                             f"encoder_input_size {self.encoder_input_size}")
        top = self.image_size // 2 if self.subpixel_output else self.image_size
        if start * 2 ** (len(self.generator_channels) - 1) != top:
            raise ValueError(f"student {self.name}: generator_channels needs one entry per doubling from "
                             f"{start} to {top} plus the first ({start} * 2**"
                             f"{len(self.generator_channels) - 1} != {top})")
        if self.num_avatars < 1 or self.spade_cap < 1 or self.full_tables_up_to < 1:
            raise ValueError(f"student {self.name}: num_avatars, spade_cap and full_tables_up_to must be at least 1")
        if self.encoder.block != "basic" or len(self.encoder.layers) != 4:
            raise ValueError(f"student {self.name}: encoder must have block 'basic' (ResNet-18's) and 4 stages")

    @property
    def start_size(self) -> int:
        """Side of the encoder's feature map, where the generator starts."""
        return self.encoder_input_size // 32

    def block_sizes(self) -> tuple:
        """Resolution of each generator block (the last is half the image size with subpixel_output)."""
        return tuple(self.start_size * 2 ** i for i in range(len(self.generator_channels)))

    def replace(self, **changes) -> "StudentConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StudentConfig":
        d = dict(d)
        e = d["encoder"]
        d["encoder"] = e if isinstance(e, BackboneConfig) else BackboneConfig(e["block"], tuple(e["layers"]), e["width"])
        d["generator_channels"] = tuple(d["generator_channels"])
        return cls(**d)


STUDENT_PRESETS: dict[str, StudentConfig] = {
    # ResNet-18 on the driver at 256 -> 8x8x512, then 8 -> 512 in six doublings
    "paper512": StudentConfig(
        name="paper512", image_size=512,
        encoder=BackboneConfig("basic", (2, 2, 2, 2), 64), encoder_input_size=256,
        generator_channels=(256, 256, 192, 128, 64, 32, 16), spade_cap=64, full_tables_up_to=64),
    "small256": StudentConfig(
        name="small256", image_size=256,
        encoder=BackboneConfig("basic", (1, 1, 1, 1), 16), encoder_input_size=128,
        generator_channels=(96, 96, 64, 32, 16, 8), spade_cap=32, subpixel_output=True),
    "demo128": StudentConfig(
        name="demo128", image_size=128,
        encoder=BackboneConfig("basic", (1, 1, 1, 1), 8), encoder_input_size=128,
        generator_channels=(64, 48, 32, 16, 8), spade_cap=32, matte=True, subpixel_output=True),
    "tiny": StudentConfig(
        name="tiny", image_size=64,
        encoder=BackboneConfig("basic", (1, 1, 1, 1), 4), encoder_input_size=64,
        generator_channels=(16, 16, 8, 8, 8, 8), spade_cap=8),
}


def get_student_config(name: str) -> StudentConfig:
    """The student preset called ``name``; ValueError naming the known ones otherwise."""
    try:
        return STUDENT_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown student preset {name!r}; choose one of {', '.join(STUDENT_PRESETS)}") from None


def for_teacher(preset: str, image_size: int) -> StudentConfig:
    """The student preset for a teacher bundle: its own preset's name when there is a student of
    that name at the same size, else the student preset rendering at the teacher's image size."""
    if preset in STUDENT_PRESETS and STUDENT_PRESETS[preset].image_size == image_size:
        return STUDENT_PRESETS[preset]
    for config in STUDENT_PRESETS.values():
        if config.image_size == image_size:
            return config
    sizes = ", ".join(str(c.image_size) for c in STUDENT_PRESETS.values())
    raise ValueError(f"no student preset renders at the teacher's image size {image_size}; "
                     f"student presets exist at {sizes}")
