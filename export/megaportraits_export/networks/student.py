"""The real-time student: driver image + avatar index -> the avatar rendered with the driver's motion.

The paper's real-time student (arXiv 2207.07621) replaces the teacher's per-frame work
by two 2-D networks. A ResNet-18-style encoder reads the driver image (box-filtered to the
encoder's input size) and ends at stride 32; that feature map starts a generator of SPADE
residual blocks that doubles the resolution per block up to the output size. The avatar's
appearance is not computed from a source image at run time: each avatar owns, for every SPADE
normalisation, learned scale and shift maps, at most ``spade_cap`` pixels on a side and
bilinearly upsampled to the block's resolution. An ``avatar_index`` (N,) int64 selects each
sample's maps (a Gather in the exported graph), so one network holds all of its avatars, and
adding avatars costs memory, not time.

Normalisation is BatchNorm, as in SPADE itself and the ResNet-18 the paper names: in training
it normalises by batch statistics, at inference it is a fixed per-channel affine. That is what
makes the student cheap to run: :meth:`Student.inference` folds every encoder BatchNorm into its
convolution, and every SPADE normalisation together with its avatar maps (upsampled once to the
block's resolution, for blocks up to the preset's ``full_tables_up_to``) into two per-avatar
tables, so a SPADE layer at run time is one Gather of a scale and one of a shift, a Mul and an
Add, with no statistics and no Split (and no Resize but in paper512's blocks above 64 px, whose
full tables would cost 191.6 MB an avatar).

The output is RGB in [0, 1] (a sigmoid), plus the person's matte as a fourth channel where the
teacher renders one (``StudentGraph`` splits it into the ``image`` and ``matte`` outputs).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..student_config import StudentConfig
from .blocks import downscale


def conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)


class ConvNorm(nn.Module):
    """A convolution followed by BatchNorm; :meth:`folded` is the one convolution they equal in eval mode."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = conv(in_channels, out_channels, kernel_size, stride, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))

    def folded(self) -> nn.Conv2d:
        return torch.nn.utils.fusion.fuse_conv_bn_eval(self.conv, self.norm)


class EncoderBlock(nn.Module):
    """ResNet's basic block: (conv, BN, ReLU, conv, BN) + shortcut (1x1 conv + BN when the shape changes), ReLU."""

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        self.conv1 = ConvNorm(in_channels, width, 3, stride)
        self.conv2 = ConvNorm(width, width, 3)
        self.shortcut = (ConvNorm(in_channels, width, 1, stride) if stride != 1 or in_channels != width
                         else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class DriverEncoder(nn.Module):
    """ResNet-style trunk (7x7 stem, max pool, four stages, stride 32) on the box-filtered driver
    image, then a 1x1 conv to the generator's width."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        self.input_size = config.encoder_input_size
        width = config.encoder.width
        self.stem = ConvNorm(3, width, 7, 2)
        blocks, channels = [], width
        for stage, count in enumerate(config.encoder.layers):
            for i in range(count):
                blocks.append(EncoderBlock(channels, width * 2 ** stage, 2 if stage and not i else 1))
                channels = width * 2 ** stage
        self.blocks = nn.Sequential(*blocks)
        self.to_generator = conv(channels, config.generator_channels[0], 1)

    def forward(self, driver_image: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(downscale(driver_image, self.input_size)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        return self.to_generator(self.blocks(x))


class AvatarSpade(nn.Module):
    """BatchNorm without its own affine, then each avatar's scale and shift maps.

    ``scale`` and ``shift`` (A, C, h, h): avatar a's maps, h = min(resolution, cap), upsampled
    bilinearly to the block's resolution when smaller. The scale is 1 + ``scale`` (zero maps start
    as plain normalisation).
    """

    def __init__(self, channels: int, resolution: int, cap: int, num_avatars: int, full_tables_up_to: int = 128):
        super().__init__()
        self.channels = channels
        self.resolution = resolution
        self.full_tables_up_to = full_tables_up_to
        side = min(resolution, cap)
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.scale = nn.Parameter(torch.randn(num_avatars, channels, side, side) * 0.02)
        self.shift = nn.Parameter(torch.randn(num_avatars, channels, side, side) * 0.02)

    def _full(self, maps: torch.Tensor) -> torch.Tensor:
        if maps.shape[-1] == self.resolution:
            return maps
        return F.interpolate(maps, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)

    def modulation(self, avatar_index: torch.Tensor) -> tuple:
        """(scale, shift), each (N, C, R, R), of the avatars ``avatar_index`` (N,) selects."""
        scale = self._full(torch.index_select(self.scale, 0, avatar_index))
        shift = self._full(torch.index_select(self.shift, 0, avatar_index))
        return 1 + scale, shift

    def forward(self, x: torch.Tensor, avatar_index: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(avatar_index)
        return self.norm(x) * scale + shift

    def folded(self) -> "AvatarTables":
        """The eval-mode layer as per-avatar tables: norm(x) * s + t == x * S + T with
        S = s / sqrt(var + eps), T = t - mean * S. Up to ``full_tables_up_to`` (a preset's
        field) the tables are stored at the block's resolution (no Resize per frame); above it at the capped
        side and upsampled per frame, which is the same function because bilinear weights sum to
        one (the per-channel affine commutes with the upsampling), so that a paper512 avatar costs
        tens of megabytes rather than ~190."""
        full = self.resolution <= self.full_tables_up_to
        with torch.no_grad():
            inv_std = torch.rsqrt(self.norm.running_var + self.norm.eps)[None, :, None, None]
            scale = (1 + (self._full(self.scale) if full else self.scale)) * inv_std
            shift = (self._full(self.shift) if full else self.shift) - self.norm.running_mean[None, :, None, None] * scale
        return AvatarTables(scale, shift, self.resolution)


class AvatarTables(nn.Module):
    """An inference-time SPADE layer: x * scale_table[avatar] + shift_table[avatar] (tables
    smaller than the block are upsampled bilinearly, see :meth:`AvatarSpade.folded`)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, resolution: int):
        super().__init__()
        self.resolution = resolution
        self.register_buffer("scale", scale.contiguous())
        self.register_buffer("shift", shift.contiguous())

    def _at_block(self, table: torch.Tensor) -> torch.Tensor:
        if table.shape[-1] == self.resolution:
            return table
        return F.interpolate(table, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor, avatar_index: torch.Tensor) -> torch.Tensor:
        scale = self._at_block(torch.index_select(self.scale, 0, avatar_index))
        shift = self._at_block(torch.index_select(self.shift, 0, avatar_index))
        return x * scale + shift


class SpadeResBlock(nn.Module):
    """Pre-activation residual block (SPADE, ReLU, conv) x 2; a 1x1 skip where the width changes."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int, cap: int, num_avatars: int,
                 full_tables_up_to: int = 128):
        super().__init__()
        self.norm1 = AvatarSpade(in_channels, resolution, cap, num_avatars, full_tables_up_to)
        self.conv1 = conv(in_channels, out_channels, 3)
        self.norm2 = AvatarSpade(out_channels, resolution, cap, num_avatars, full_tables_up_to)
        self.conv2 = conv(out_channels, out_channels, 3)
        self.skip = conv(in_channels, out_channels, 1, bias=False) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, avatar_index: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x, avatar_index)))
        h = self.conv2(F.relu(self.norm2(h, avatar_index)))
        return h + self.skip(x)


class StudentGenerator(nn.Module):
    """SPADE residual blocks from the encoder's resolution up to the image, modulated per avatar."""

    def __init__(self, config: StudentConfig):
        super().__init__()
        widths = config.generator_channels
        sizes = config.block_sizes()
        self.blocks = nn.ModuleList(
            SpadeResBlock(widths[max(i - 1, 0)], widths[i], sizes[i], config.spade_cap, config.num_avatars,
                          config.full_tables_up_to)
            for i in range(len(widths)))
        # BatchNorm keeps each image's global colour (unlike a per-image norm, which would remove
        # it and leave the last conv unable to restore it); at inference it is a per-channel affine
        channels = 4 if config.matte else 3
        shuffle = [nn.PixelShuffle(2)] if config.subpixel_output else []
        self.to_rgb = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU(),
                                    conv(widths[-1], channels * 4 if shuffle else channels, 3), *shuffle)

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
        """The per-avatar maps (axis 0 is the avatar), e.g. to give them their own learning rate."""
        return [p for m in self.modules() if isinstance(m, AvatarSpade) for p in (m.scale, m.shift)]

    def shared_parameters(self) -> list:
        own = {id(p) for p in self.avatar_parameters()}
        return [p for p in self.parameters() if id(p) not in own]

    def inference(self) -> "Student":
        """An eval-mode copy computing the same function with every BatchNorm folded away: encoder
        norms into their convs, SPADE layers into per-avatar tables (see the module docstring).
        The original is untouched."""
        folded = copy.deepcopy(self).eval()
        for module in list(folded.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, (ConvNorm, AvatarSpade)):
                    setattr(module, name, child.folded())
        return folded


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


def table_values_per_avatar(config: StudentConfig) -> int:
    """How many values one avatar adds to an exported bundle: its scale and shift tables in every
    SPADE layer, at the block's resolution up to the preset's ``full_tables_up_to`` and at the
    capped side above it (see :meth:`AvatarSpade.folded`)."""
    widths, sizes = config.generator_channels, config.block_sizes()
    side = lambda size: size if size <= config.full_tables_up_to else min(size, config.spade_cap)
    return sum(2 * (widths[max(i - 1, 0)] + width) * side(size) ** 2 for i, (width, size) in enumerate(zip(widths, sizes)))


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
        blocks.append({"shape": [width, size, size], "spade_side": block.norm1.scale.shape[-1]})
    return {
        "student": config.name,
        "image_size": config.image_size,
        "encoder_input": [3, config.encoder_input_size, config.encoder_input_size],
        "encoder_parameters": encoder,
        "generator_shared_parameters": shared - encoder,
        "parameters_per_avatar": per_avatar,
        "num_avatars": config.num_avatars,
        "fp32_bytes_per_avatar": 4 * per_avatar,
        "bundle_bytes_per_avatar": 4 * table_values_per_avatar(config),
        "macs_per_frame": macs_per_frame(config),
        "generator_blocks": blocks,
        "config": config.to_dict(),
    }


def format_student(report: dict) -> str:
    lines = [f"student {report['student']}: driver image -> {report['image_size']}x{report['image_size']} image",
             f"encoder (input {'x'.join(map(str, report['encoder_input']))}): {report['encoder_parameters']:,} parameters",
             f"generator, shared: {report['generator_shared_parameters']:,} parameters",
             f"per avatar: {report['parameters_per_avatar']:,} parameters "
             f"({report['fp32_bytes_per_avatar'] / 1e6:.2f} MB fp32; "
             f"{report['bundle_bytes_per_avatar'] / 1e6:.2f} MB as the bundle's full-resolution tables)",
             f"per frame: {report['macs_per_frame'] / 1e9:.3f} GMAC", "",
             f"{'block':<7}{'features':<16}spade tensor side"]
    for i, block in enumerate(report["generator_blocks"]):
        lines.append(f"{i:<7}{'x'.join(map(str, block['shape'])):<16}{block['spade_side']}")
    return "\n".join(lines)
