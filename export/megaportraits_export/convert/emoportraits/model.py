"""The EMOPortraits base model split the way this project's bundles run it.

Same three branches and interfaces as :mod:`megaportraits_export.model` (so the exporter, the
SDK and ``describe`` treat it like our own presets), computed as their inference code does:

- source: v_s = E_app(x_s) (x_s already masked by face parsing, as they do), e_s, (theta_s, z_s),
  grid_s = W_s->(z_s, e_s); c_s = G3D(sample(sample(v_s, theta_s^-1 I), grid_s));
- driver: theta_d, z_d from the unmasked driver crop;
- generator: grid_d = W_->d(z_d, e_s); image = G2D(sample(sample(c_s, grid_d), theta_d I)).

I is their identity grid (``linspace(-1, 1)``, see :func:`.networks.linspace_grid`). Each warp
samples the 96-channel volume twice, rigid and learned separately, because resampling an already
resampled volume is not one composed grid sample: their weights were trained on the two steps.
"""
from __future__ import annotations

import torch
from torch import nn

from ...config import ModelConfig
from ...model import AvatarState, MegaPortraits, Motion, Rendering
from ...warp import invert_pose, sample_volume, transform_points
from . import networks as nets


class DriverBranch(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.head_pose = nets.HeadPoseRegressor(config)
        self.expression_encoder = nets.ExpressionEncoder(config)

    def forward(self, driver_image: torch.Tensor, pose: torch.Tensor | None = None) -> Motion:
        """``pose``: a known theta in place of the regressor's (as the base model's DriverBranch)."""
        if pose is None:
            pose = self.head_pose(driver_image)
        return Motion(pose, self.expression_encoder(driver_image, pose))


def rigid_grid(pose: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """theta applied to their identity grid of the field's shape: (N, D, H, W, 3)."""
    return transform_points(pose, nets.linspace_grid(*like.shape[1:4], like=like))


class SourceBranch(nn.Module):
    def __init__(self, config: ModelConfig, driver_branch: DriverBranch):
        super().__init__()
        self.appearance_encoder = nets.AppearanceEncoder(config)
        self.global_descriptor = nets.GlobalDescriptorEncoder(config)
        self.driver_branch = driver_branch
        self.source_warp = nets.WarpingGenerator(config)
        self.canonical_generator = nets.CanonicalGenerator(config)

    def forward(self, source_image: torch.Tensor) -> AvatarState:
        return self.encode(source_image)[0]

    def encode(self, source_image: torch.Tensor, pose: torch.Tensor | None = None) -> tuple:
        """(AvatarState, the source sampling grid W_s->(z_s, e_s))."""
        volume = self.appearance_encoder(source_image)
        descriptor = self.global_descriptor(source_image)
        pose, expression = self.driver_branch(source_image, pose)
        grid = self.source_warp(expression, descriptor)
        rigid = sample_volume(volume, rigid_grid(invert_pose(pose), grid))
        canonical = self.canonical_generator(sample_volume(rigid, grid))
        return AvatarState(canonical, descriptor, pose, expression), grid


class Generator(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.driver_warp = nets.WarpingGenerator(config)
        self.image_generator = nets.ImageGenerator(config)

    def forward(self, canonical_volume: torch.Tensor, global_descriptor: torch.Tensor, pose: torch.Tensor,
                expression: torch.Tensor) -> torch.Tensor:
        return self.render(canonical_volume, global_descriptor, pose, expression)[0]

    def render(self, canonical_volume, global_descriptor, pose, expression) -> Rendering:
        """The image and, as its deformation, the driver sampling grid W_->d(z_d, e_s) (no
        source-pixel path, no edit)."""
        grid = self.driver_warp(expression, global_descriptor)
        expressed = sample_volume(canonical_volume, grid)
        return Rendering(self.image_generator(sample_volume(expressed, rigid_grid(pose, grid))), grid)


class EmoPortraits(MegaPortraits):
    """Source branch, driver branch (shared), generator: the attributes the exporter reads, wired
    as :class:`MegaPortraits` wires them (its ``forward`` returns the same dict;
    ``source_deformation`` / ``driver_deformation`` hold their full sampling grids)."""

    source_branch_class = SourceBranch
    driver_branch_class = DriverBranch
    generator_class = Generator
