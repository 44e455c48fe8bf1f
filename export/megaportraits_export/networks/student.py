"""The real-time student: driver image + avatar index -> the avatar rendered with the driver's motion.

The paper's real-time student (arXiv 2207.07621) replaces the teacher's per-frame work
by two 2-D networks. A ResNet-18-style encoder reads the driver image (box-filtered to the
encoder's input size) and ends at stride 32; that feature map starts a generator of SPADE
residual blocks that doubles the resolution per block up to the output size. The avatar's
appearance is not computed from a source image at run time: each avatar owns, for every SPADE
normalisation, a learned tensor holding its scale and shift maps, at most ``spade_cap`` pixels
on a side and bilinearly upsampled to the block's resolution. An ``avatar_index`` (N,) int64
selects each sample's tensors (a Gather in the exported graph), so one network holds all of its
avatars, and adding work per avatar costs memory, not time.

The output is RGB in [0, 1] (a sigmoid), plus the person's matte as a fourth channel where the
teacher renders one (``StudentGraph`` splits it into the ``image`` and ``matte`` outputs).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..student_config import StudentConfig
from .blocks import downscale, num_groups, plain_conv, ws_conv
from .resnet import build_trunk


class AvatarSpade(nn.Module):
    """Parameter-free GroupNorm, then each avatar's own scale and shift maps.

    ``tensors`` (A, 2C, h, h): for avatar a, channels [0, C) are the scale offset (the scale is
    1 + offset, so zero-initialised tensors start as plain normalisation) and [C, 2C) the shift;
    h = min(resolution, cap), upsampled bilinearly to the block's resolution when smaller.
    """

    def __init__(self, channels: int, resolution: int, cap: int, num_avatars: int):
        super().__init__()
        self.channels = channels
        self.resolution = resolution
        side = min(resolution, cap)
        self.norm = nn.GroupNorm(num_groups(channels), channels, affine=False)
        self.tensors = nn.Parameter(torch.randn(num_avatars, 2 * channels, side, side) * 0.02)

    def modulation(self, avatar_index: torch.Tensor) -> tuple:
        """(scale, shift), each (N, C, R, R), of the avatars ``avatar_index`` (N,) selects."""
        maps = torch.index_select(self.tensors, 0, avatar_index)
        if maps.shape[-1] != self.resolution:
            maps = F.interpolate(maps, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)
        return 1 + maps[:, :self.channels], maps[:, self.channels:]

    def forward(self, x: torch.Tensor, avatar_index: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(avatar_index)
        return self.norm(x) * scale + shift


class SpadeResBlock(nn.Module):
    """Pre-activation residual block (SPADE, ReLU, conv) x 2; a 1x1 skip where the width changes."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int, cap: int, num_avatars: int):
        super().__init__()
        self.norm1 = AvatarSpade(in_channels, resolution, cap, num_avatars)
        self.conv1 = ws_conv(2, in_channels, out_channels, 3)
        self.norm2 = AvatarSpade(out_channels, resolution, cap, num_avatars)
        self.conv2 = ws_conv(2, out_channels, out_channels, 3)
        self.skip = ws_conv(2, in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, avatar_index: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x, avatar_index)))
        h = self.conv2(F.relu(self.norm2(h, avatar_index)))
        return h + self.skip(x)


class DriverEncoder(nn.Module):
    """ResNet-style trunk on the box-filtered driver image, then a 1x1 conv to the generator's width."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        self.input_size = config.encoder_input_size
        self.trunk = build_trunk(config.encoder)
        self.to_generator = plain_conv(2, self.trunk.out_channels, config.generator_channels[0], 1)

    def forward(self, driver_image: torch.Tensor) -> torch.Tensor:
        return self.to_generator(self.trunk(downscale(driver_image, self.input_size)))


class StudentGenerator(nn.Module):
    """SPADE residual blocks from the encoder's resolution up to the image, modulated per avatar."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        widths = config.generator_channels
        sizes = config.block_sizes()
        self.blocks = nn.ModuleList(
            SpadeResBlock(widths[max(i - 1, 0)], widths[i], sizes[i], config.spade_cap, config.num_avatars)
            for i in range(len(widths)))
        # one group over all channels, as G2D's last norm (a per-channel norm would remove the
        # image's global colour, which the last conv could not restore)
        self.to_rgb = nn.Sequential(nn.GroupNorm(1, widths[-1]), nn.ReLU(),
                                    plain_conv(2, widths[-1], 4 if config.matte else 3, 3))

    def forward(self, features: torch.Tensor, avatar_index: torch.Tensor) -> torch.Tensor:
        x = features
        for i, block in enumerate(self.blocks):
            if i:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(x, avatar_index)
        return torch.sigmoid(self.to_rgb(x))


class Student(nn.Module):
    """The whole student: (driver_image (N, 3, S, S), avatar_index (N,) int64) -> (N, 3 or 4, S, S)."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        self.config = config
        self.encoder = DriverEncoder(config)
        self.generator = StudentGenerator(config)

    def forward(self, driver_image: torch.Tensor, avatar_index: torch.Tensor) -> torch.Tensor:
        return self.generator(self.encoder(driver_image), avatar_index)

    def avatar_parameters(self) -> list:
        """The per-avatar tensors (axis 0 is the avatar), e.g. to give them their own learning rate."""
        return [m.tensors for m in self.modules() if isinstance(m, AvatarSpade)]

    def shared_parameters(self) -> list:
        own = {id(p) for p in self.avatar_parameters()}
        return [p for p in self.parameters() if id(p) not in own]


class StudentGraph(nn.Module):
    """What the ``student`` graph computes: the image, and the matte as a second output when the
    student renders one (a runtime that knows nothing of mattes still finds ``image``)."""

    def __init__(self, student: Student):
        super().__init__()
        self.student = student

    def forward(self, driver_image: torch.Tensor, avatar_index: torch.Tensor):
        rendering = self.student(driver_image, avatar_index)
        if rendering.shape[1] == 4:
            return rendering[:, :3], rendering[:, 3:]
        return rendering


def build_student(config: StudentConfig) -> Student:
    return Student(config)


def parameters_per_avatar(config: StudentConfig) -> int:
    """How many parameters one avatar adds: its scale and shift maps in every SPADE norm."""
    widths, sizes = config.generator_channels, config.block_sizes()
    total = 0
    for i, (width, size) in enumerate(zip(widths, sizes)):
        side = min(size, config.spade_cap)
        total += 2 * (widths[max(i - 1, 0)] + width) * side * side
    return total


def macs_per_frame(config: StudentConfig, batch: int = 1) -> int:
    """Multiply-accumulates of the convolutions for one frame, counted on a meta-device build."""
    with torch.device("meta"):
        student = build_student(config).eval()
    counts = [0]

    def hook(layer, inputs, output):
        counts[0] += output.numel() * layer.in_channels // layer.groups * math.prod(layer.kernel_size)

    for m in student.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    size = config.image_size
    with torch.no_grad():
        student(torch.empty(batch, 3, size, size, device="meta"), torch.zeros(batch, dtype=torch.int64, device="meta"))
    return counts[0] // batch


def describe_student(config: StudentConfig, teacher_macs: int | None = None) -> dict:
    """Parameter counts (shared, per avatar), multiply-accumulates per frame and the tensor shape
    at each generator block, from a meta-device build (nothing allocated, paper512 costs nothing)."""
    with torch.device("meta"):
        student = build_student(config)
    shared = sum(p.numel() for p in student.shared_parameters())
    per_avatar = parameters_per_avatar(config)
    encoder = sum(p.numel() for p in student.encoder.parameters())
    blocks = []
    for width, size, block in zip(config.generator_channels, config.block_sizes(), student.generator.blocks):
        blocks.append({"shape": [width, size, size], "spade_side": block.norm1.tensors.shape[-1]})
    return {
        "student": config.name,
        "image_size": config.image_size,
        "encoder_input": [3, config.encoder_input_size, config.encoder_input_size],
        "encoder_parameters": encoder,
        "generator_shared_parameters": shared - encoder,
        "parameters_per_avatar": per_avatar,
        "num_avatars": config.num_avatars,
        "fp32_bytes_per_avatar": 4 * per_avatar,
        "macs_per_frame": macs_per_frame(config),
        "generator_blocks": blocks,
        "config": config.to_dict(),
    }


def format_student(report: dict) -> str:
    lines = [f"student {report['student']}: driver image -> {report['image_size']}x{report['image_size']} image",
             f"encoder (input {'x'.join(map(str, report['encoder_input']))}): {report['encoder_parameters']:,} parameters",
             f"generator, shared: {report['generator_shared_parameters']:,} parameters",
             f"per avatar: {report['parameters_per_avatar']:,} parameters "
             f"({report['fp32_bytes_per_avatar'] / 1e6:.2f} MB fp32)",
             f"per frame: {report['macs_per_frame'] / 1e9:.3f} GMAC", "",
             f"{'block':<7}{'features':<16}spade tensor side"]
    for i, block in enumerate(report["generator_blocks"]):
        lines.append(f"{i:<7}{'x'.join(map(str, block['shape'])):<16}{block['spade_side']}")
    return "\n".join(lines)
