"""The networks of the official EMOPortraits stage-1 model, in their inference form.

Written from reading their code (neeek2303/EMOPortraits); no code of theirs is used. Every conv
here is a plain conv: their spectral norm (eval weight W / sigma) and weight standardisation
(``(w - mean) / (std_unbiased + 1e-5)``, on each conv that follows a GroupNorm, with a bias)
are folded into the weights by :mod:`.folds`, and the head-pose network's BatchNorms into its
convs. A conv has a bias exactly where the folded original has one. Where their layout differs
from this project's own networks (``megaportraits_export.networks``):

- residual blocks are pre-activation ``GN, ReLU, conv, GN, ReLU, conv`` and a downsampling block
  average-pools *after* the second conv (and after the 1x1 skip conv); an upsampling block
  resizes its input (nearest, 2x) first. Only the first conv is standardised, so only it has a
  bias; the 3-D blocks with plain GroupNorm are not standardised at all (no bias anywhere);
- every GroupNorm has 32 groups;
- adaptive GroupNorm: ``y = GN(x) * weight + bias`` (their class keeps GroupNorm's affine), then
  ``y * (weight + p_w) + (bias + p_b)`` where (p_w, p_b) = U E V are projected from the warp
  embedding E (N, 512, 16), U (C, 512), V (16, 2): a learned base affine plus the projection;
- one (z, e_s) embedding, conv1x1((linear(z) + e_s) / 2), feeds both warping generators (each
  of our warping generators carries a copy, so the source and generator graphs stand alone);
- warping generators start at 4x4x4 and grow depth 4 -> 8 -> 16 -> 32 while H, W double, then
  average-pool the depth back to 16 after the last block; their field is
  ``linspace identity + tanh(conv(...))``;
- G3D first doubles the depth (16 -> 32) with trilinear resizing, its learned bottom tensor is
  C x 8 x 8 x 8 and its head is GN, ReLU, a 1x1x1 conv;
- e_s: ImageNet-normalised 256x256 bilinear resize, ResNet-50 (GroupNorm), a 1x1 conv 2048 ->
  512 without bias *before* adaptive average pooling to 4x4;
- z: the pose-aligned crop (below), ImageNet-normalised, ResNet-18 (GroupNorm), 1x1 conv 512 ->
  128 without bias, pooled to 4x4, flattened, a linear 2048 -> 128 without bias;
- head pose: torchvision ResNet-18 with BatchNorm (folded) and a 9-output linear layer on a
  bilinear 128x128 resize, no normalisation: raw scale (3), yaw/pitch/roll (3, clamped to
  [-pi/2, pi]), translation (3) -> theta = S R T with R = R_z(yaw) R_y(pitch) R_x(roll);
- G2D: 1x1 conv (no bias) 1536 -> 512, 6 residual blocks, 3 upsampling stages of two blocks
  (512 -> 320 -> 192 -> 128), GroupNorm(32), ReLU, a 1x1 conv (standardised, so with bias),
  sigmoid.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...config import BackboneConfig, ModelConfig
from ...warp import invert_pose

GROUPS = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _conv(dims: int, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
          bias: bool = False) -> nn.Module:
    conv_class = nn.Conv2d if dims == 2 else nn.Conv3d
    return conv_class(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias)


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm(32) with affine (weight, bias), then (weight + p_w) and (bias + p_b), p = U E V."""

    def __init__(self, channels: int, embed_channels: int, embed_size: int):
        super().__init__()
        self.groups = GROUPS
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.channel_projection = nn.Parameter(torch.empty(channels, embed_channels).uniform_(-1, 1)
                                               * math.sqrt(3 / embed_channels))
        self.spatial_projection = nn.Parameter(torch.empty(embed_size ** 2, 2).uniform_(-1, 1)
                                               * math.sqrt(3 / embed_size ** 2))

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        params = self.channel_projection @ embedding.flatten(2) @ self.spatial_projection   # (N, C, 2)
        broadcast = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
        scale = (self.weight + params[..., 0]).reshape(broadcast)
        shift = (self.bias + params[..., 1]).reshape(broadcast)
        # their class subclasses GroupNorm and then sets weight/bias as parameters, so GroupNorm's
        # own affine applies them once before the adaptive affine applies them again
        return F.group_norm(x, self.groups, self.weight, self.bias) * scale + shift


class ResBlock(nn.Module):
    """Their pre-activation residual block (see module doc), 2-D or 3-D.

    ``resize``: "none", "down" (2x average pooling after the second conv and the skip) or "up"
    (2x nearest resize of the input, 2-D only). ``standardised``: the first conv was weight-
    standardised in the original, so its folded form has a bias. ``embedding`` (channels, size)
    makes both norms adaptive.
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, resize: str = "none",
                 standardised: bool = True, embedding: tuple | None = None):
        super().__init__()
        self.dims = dims
        self.resize = resize
        self.adaptive = embedding is not None
        if self.adaptive:
            self.norm1 = AdaptiveGroupNorm(in_channels, *embedding)
            self.norm2 = AdaptiveGroupNorm(out_channels, *embedding)
        else:
            self.norm1 = nn.GroupNorm(GROUPS, in_channels)
            self.norm2 = nn.GroupNorm(GROUPS, out_channels)
        self.conv1 = _conv(dims, in_channels, out_channels, 3, bias=standardised)
        self.conv2 = _conv(dims, out_channels, out_channels, 3)
        self.skip = _conv(dims, in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        if self.resize == "up":
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        norm = (lambda n, h: n(h, embedding)) if self.adaptive else (lambda n, h: n(h))
        h = self.conv1(F.relu(norm(self.norm1, x)))
        h = self.conv2(F.relu(norm(self.norm2, h)))
        skip = self.skip(x) if self.skip is not None else x
        if self.resize == "down":
            h, skip = self._pool(h), self._pool(skip)
        return h + skip

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.dims == 2 else F.avg_pool3d(x, 2)


# ---- ResNet trunks in torchvision's layout -----------------------------------------------------
class _BasicBlock(nn.Module):
    def __init__(self, in_channels: int, width: int, stride: int, group_norm: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride, 1, bias=not group_norm)
        self.bn1 = nn.GroupNorm(GROUPS, width) if group_norm else nn.Identity()
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=True)
        self.bn2 = nn.GroupNorm(GROUPS, width) if group_norm else nn.Identity()
        self.downsample = _downsample(in_channels, width, stride, group_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (self.downsample(x) if self.downsample is not None else x))


class _Bottleneck(nn.Module):
    def __init__(self, in_channels: int, width: int, stride: int, group_norm: bool):
        super().__init__()
        out_channels = width * 4
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=not group_norm)
        self.bn1 = nn.GroupNorm(GROUPS, width) if group_norm else nn.Identity()
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=True)
        self.bn2 = nn.GroupNorm(GROUPS, width) if group_norm else nn.Identity()
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=True)
        self.bn3 = nn.GroupNorm(GROUPS, out_channels) if group_norm else nn.Identity()
        self.downsample = _downsample(in_channels, out_channels, stride, group_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + (self.downsample(x) if self.downsample is not None else x))


def _downsample(in_channels: int, out_channels: int, stride: int, group_norm: bool) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    if group_norm:
        return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                             nn.GroupNorm(GROUPS, out_channels))
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=True))


class ResNetTrunk(nn.Module):
    """torchvision's ResNet up to layer4 (names kept). ``group_norm``: their GN + WS variant
    (standardised convs carry a bias); otherwise BatchNorm folded into every conv (all biased)."""

    def __init__(self, config: BackboneConfig, group_norm: bool):
        super().__init__()
        block = _Bottleneck if config.block == "bottleneck" else _BasicBlock
        self.conv1 = nn.Conv2d(3, config.width, 7, 2, 3, bias=not group_norm)
        self.bn1 = nn.GroupNorm(GROUPS, config.width) if group_norm else nn.Identity()
        channels = config.width
        for index, count in enumerate(config.layers):
            width = config.width * 2 ** index
            blocks = []
            for block_index in range(count):
                blocks.append(block(channels, width, 2 if index and not block_index else 1, group_norm))
                channels = width * (4 if block is _Bottleneck else 1)
            setattr(self, f"layer{index + 1}", nn.Sequential(*blocks))
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _imagenet_normalised(x: torch.Tensor) -> torch.Tensor:
    mean = x.new_tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    return (x - mean) / std


def _resized(x: torch.Tensor, size: int) -> torch.Tensor:
    """Their resize: bilinear, align_corners=False, no antialiasing (none when already at size)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


# ---- the networks -------------------------------------------------------------------------------
class AppearanceEncoder(nn.Module):
    """local_encoder_nw + volume_source_nw: image -> v_s (N, C, D, H, W)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.volume_channels, self.volume_depth = config.volume_channels, config.volume_depth
        self.stem = nn.Conv2d(3, config.appearance_stem_channels, 7, padding=3)
        widths = (config.appearance_stem_channels,) + tuple(config.appearance_channels)
        self.blocks_2d = nn.Sequential(*(ResBlock(2, a, b, resize="down") for a, b in zip(widths[:-1], widths[1:])))
        self.to_volume_norm = nn.GroupNorm(GROUPS, widths[-1])
        self.to_volume = nn.Conv2d(widths[-1], config.volume_channels * config.volume_depth, 1)
        self.blocks_3d = nn.Sequential(*(ResBlock(3, config.volume_channels, config.volume_channels,
                                                  standardised=False)
                                         for _ in range(config.appearance_3d_blocks)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.to_volume(F.relu(self.to_volume_norm(self.blocks_2d(self.stem(image)))))
        return self.blocks_3d(x.unflatten(1, (self.volume_channels, self.volume_depth)))


class GlobalDescriptorEncoder(nn.Module):
    """idt_embedder_nw: image -> e_s (N, 512, 4, 4)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_size, self.output_size = config.descriptor_input_size, config.descriptor_size
        self.trunk = ResNetTrunk(config.descriptor_backbone, group_norm=True)
        self.to_descriptor = nn.Conv2d(self.trunk.out_channels, config.descriptor_channels, 1, bias=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.to_descriptor(self.trunk(_imagenet_normalised(_resized(image, self.input_size))))
        return F.adaptive_avg_pool2d(x, self.output_size)


class HeadPoseRegressor(nn.Module):
    """Their separate head_pose_regressor.pth: image -> theta (N, 3, 4) = S R T."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_size = config.pose_input_size
        self.trunk = ResNetTrunk(config.pose_backbone, group_norm=False)
        self.fc = nn.Linear(self.trunk.out_channels, 9)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return pose_matrix(*self.pose_parameters(image))

    def pose_parameters(self, image: torch.Tensor) -> tuple:
        features = self.trunk(_resized(image, self.input_size)).mean(dim=(2, 3))
        return self.fc(features).split(3, dim=1)


def pose_matrix(scale: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """Their theta = S R T as (N, 3, 4): R = R_z(yaw) R_y(pitch) R_x(roll), angles clamped to
    [-pi/2, pi] as theirs are, raw (not exponentiated) per-axis scale."""
    yaw, pitch, roll = rotation.clamp(-math.pi / 2, math.pi).unbind(-1)
    cy, sy, cp, sp, cr, sr = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin(), roll.cos(), roll.sin()
    rows = torch.stack((
        cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr,
        sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr,
        -sp, cp * sr, cp * cr), dim=-1).unflatten(-1, (3, 3))
    linear = scale.unsqueeze(-1) * rows
    return torch.cat((linear, linear @ translation.unsqueeze(-1)), dim=-1)


class ExpressionEncoder(nn.Module):
    """expression_embedder_nw: (image, theta) -> z (N, 128), on their pose-aligned crop."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.crop_size, self.zoom = config.expression_input_size, config.expression_crop_zoom
        self.pool_size = config.descriptor_size
        self.trunk = ResNetTrunk(config.expression_backbone, group_norm=True)
        self.to_features = nn.Conv2d(self.trunk.out_channels, config.expression_dim, 1, bias=False)
        self.to_expression = nn.Linear(config.expression_dim * self.pool_size ** 2, config.expression_dim, bias=False)

    def forward(self, image: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        x = self.to_features(self.trunk(_imagenet_normalised(self.aligned_crop(image, pose))))
        return self.to_expression(F.adaptive_avg_pool2d(x, self.pool_size).flatten(1))

    def aligned_crop(self, image: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """Their crop: grid(u, v) = A (u, v) / zoom + b on a linspace(-1, 1) grid, where A, b are
        the x/y rows and columns of theta^-1 (rotation and scale included), sampled from the
        full-size image (bilinear, zeros, align_corners=False)."""
        inverse = invert_pose(pose)
        axis = torch.linspace(-1, 1, self.crop_size, device=image.device, dtype=image.dtype)
        v, u = torch.meshgrid(axis, axis, indexing="ij")
        points = torch.stack((u, v), dim=-1).reshape(1, -1, 2) / self.zoom
        grid = points @ inverse[:, :2, :2].transpose(1, 2) + inverse[:, None, :2, 3]
        grid = grid.reshape(image.shape[0], self.crop_size, self.crop_size, 2)
        return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class WarpEmbedding(nn.Module):
    """pose_unsqueeze_nw + warp_embed_head_orig_nw: (z, e_s) -> E (N, 512, 4, 4)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.shape = config.descriptor_shape
        self.expression_to_map = nn.Linear(config.expression_dim, config.descriptor_channels * config.descriptor_size ** 2,
                                           bias=False)
        self.mix = nn.Conv2d(config.descriptor_channels, config.descriptor_channels, 1, bias=False)

    def forward(self, expression: torch.Tensor, descriptor: torch.Tensor) -> torch.Tensor:
        return self.mix((self.expression_to_map(expression).unflatten(1, self.shape) + descriptor) * 0.5)


def linspace_grid(depth: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(D, H, W, 3) their identity grid: linspace(-1, 1) per axis, (x, y, z) order. Sampled with
    align_corners=False it is NOT the identity (a 16/15, 64/63 scale about the centre); their
    trained weights depend on it."""
    def axis(n: int) -> torch.Tensor:
        return torch.linspace(-1, 1, n, device=like.device, dtype=like.dtype)
    z, y, x = torch.meshgrid(axis(depth), axis(height), axis(width), indexing="ij")
    return torch.stack((x, y, z), dim=-1)


class WarpingGenerator(nn.Module):
    """xy_generator_nw / uv_generator_nw: (z, e_s) -> sampling grid (N, D, H, W, 3) = linspace
    identity + field (their output is the grid itself, not a deformation to add)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        widths = tuple(config.warp_channels)
        self.start_size = config.descriptor_size
        self.output_depth, self.output_size = config.volume_depth, config.volume_size
        self.embedding = WarpEmbedding(config)
        embedding = (config.descriptor_channels, config.descriptor_size)
        self.to_volume = nn.Conv2d(config.descriptor_channels, widths[0] * self.start_size, 1, bias=False)
        self.blocks = nn.ModuleList(ResBlock(3, a, b, embedding=embedding) for a, b in zip(widths[:-1], widths[1:]))
        self.head_norm = nn.GroupNorm(GROUPS, widths[-1])
        self.head = nn.Conv3d(widths[-1], 3, 3, padding=1)

    def depth_schedule(self) -> list:
        """Per block: (resize factors before it, whether to halve the depth after it).

        Their rule: before the last block the target depth is output_depth * 2**(blocks left),
        capped by the doubled H and W; a larger target doubles every axis (trilinear), otherwise
        only H and W double; after the block a target below the current depth average-pools the
        depth by 2. For 4 -> 64 and depth 16: depth 8, 16, 32, then 32 pooled back to 16.
        """
        steps = len(self.blocks)
        depth, size, schedule = self.start_size, self.start_size, []
        for index in range(1, steps + 1):
            size *= 2
            target = min(self.output_depth * 2 ** (steps - index), size) if index < steps else self.output_depth
            schedule.append(((2 if target > depth else 1, 2, 2), target < depth))
            depth = target
        return schedule

    def forward(self, expression: torch.Tensor, descriptor: torch.Tensor) -> torch.Tensor:
        embedding = self.embedding(expression, descriptor)
        x = self.to_volume(embedding).unflatten(1, (-1, self.start_size))
        for block, (factors, halve_depth) in zip(self.blocks, self.depth_schedule()):
            x = block(F.interpolate(x, scale_factor=factors, mode="trilinear", align_corners=False), embedding)
            if halve_depth:
                x = F.avg_pool3d(x, (2, 1, 1))
        field = torch.tanh(self.head(F.relu(self.head_norm(x)))).permute(0, 2, 3, 4, 1)
        return linspace_grid(*field.shape[1:4], like=field) + field


class CanonicalGenerator(nn.Module):
    """volume_process_nw (their Unet3D): the warped source volume -> canonical volume."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        channels, widths = config.volume_channels, tuple(config.canonical_channels)
        self.depth, self.levels = config.volume_depth, len(widths)
        self.down = nn.ModuleList(ResBlock(3, a, b, standardised=False)
                                  for a, b in zip((channels,) + widths[:-1], widths))
        bottom = config.volume_size // 2 ** self.levels
        self.bottom = nn.Parameter(torch.randn(1, widths[-1], bottom, bottom, bottom))
        narrower = (channels,) + widths[:-1]
        self.skips = nn.ModuleList(ResBlock(3, w, w, standardised=False) for w in reversed(widths))
        self.up = nn.ModuleList(ResBlock(3, a, b, standardised=False)
                                for a, b in zip(reversed(widths), reversed(narrower)))
        self.head_norm = nn.GroupNorm(GROUPS, channels)
        self.head = nn.Conv3d(channels, channels, 1)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        x, features = volume, []
        depth, size = self.depth, volume.shape[-1]
        for index, block in enumerate(self.down):
            last = index == len(self.down) - 1
            if not last:
                size //= 2
                target = min(depth * 2, size)
                if target > depth:
                    x = F.interpolate(x, scale_factor=(2, 1, 1), mode="trilinear", align_corners=False)
            x = block(x)
            features.append(x)
            if not last:
                x = F.avg_pool3d(x, 2) if target < depth else F.avg_pool3d(x, (1, 2, 2))
                depth = target
        x = self.bottom.expand(volume.shape[0], -1, -1, -1, -1)
        depth, size = x.shape[2], x.shape[-1]
        for index, (skip, block, feature) in enumerate(zip(self.skips, self.up, reversed(features)), 1):
            size *= 2
            target = min(self.depth * 2 ** (self.levels - index), size)
            factors = (2, 2, 2) if target > depth else (1, 2, 2)
            x = block(F.interpolate(x, scale_factor=factors, mode="trilinear", align_corners=False) + skip(feature))
            if target < depth:
                x = F.avg_pool3d(x, (2, 1, 1))
            depth = target
        return self.head(F.relu(self.head_norm(x)))


def green_key(image: torch.Tensor) -> torch.Tensor:
    """Their rendering on pure green (0, 1, 0) -> RGBA: the person's colours and a matte.

    The released model was trained on targets whose background was replaced by pure green, so
    its output is P = a F + (1 - a) K, K = (0, 1, 0). A colour F whose green does not exceed its
    red or blue (skin, hair, most clothes) gives G - max(R, B) <= 1 - a, so
    a_est = 1 - (G - max(R, B)), clamped to [0, 1], is exact for F_G = max(F_R, F_B) and
    overestimates edges otherwise; the colours are unmixed, F = (P - (1 - a) K) / a, so a
    composite over another backdrop shows no green fringe. Limitation: what the person wears in
    saturated green is keyed out too.
    """
    red, green, blue = image.unbind(1)
    matte = (1 - (green - torch.maximum(red, blue))).clamp(0, 1).unsqueeze(1)
    backdrop = image.new_tensor((0.0, 1.0, 0.0)).reshape(1, 3, 1, 1)
    colours = ((image - (1 - matte) * backdrop) / matte.clamp_min(1e-3)).clamp(0, 1)
    return torch.cat((colours, matte), dim=1)


class ImageGenerator(nn.Module):
    """decoder_nw: the driver volume -> image (N, 3, S, S) on their green backdrop, or with
    ``config.matte`` RGBA from :func:`green_key` (for the SDK's compositing and paste-back)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.matte = config.matte
        self.projection = nn.Conv2d(config.volume_channels * config.volume_depth, config.image_channels, 1, bias=False)
        self.blocks = nn.Sequential(*(ResBlock(2, config.image_channels, config.image_channels)
                                      for _ in range(config.image_blocks)))
        widths = (config.image_channels,) + tuple(config.image_up_channels)
        self.up_stages = nn.Sequential(*(nn.Sequential(ResBlock(2, a, b, resize="up"), ResBlock(2, b, b))
                                         for a, b in zip(widths[:-1], widths[1:])))
        self.to_rgb_norm = nn.GroupNorm(GROUPS, widths[-1])
        self.to_rgb = nn.Conv2d(widths[-1], 3, 1)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        x = self.up_stages(self.blocks(self.projection(volume.flatten(1, 2))))
        image = torch.sigmoid(self.to_rgb(F.relu(self.to_rgb_norm(x))))
        return green_key(image) if self.matte else image
