"""The MegaPortraits base model, split the way inference runs it.

- :class:`DriverBranch`: an image -> :class:`Motion` (head pose theta, expression code z).
  Run per driver frame; the source branch reuses it for the source's own pose and expression.
- :class:`SourceBranch`: the source image -> :class:`AvatarState` (canonical volume c_s,
  global descriptor e_s, the source's pose and expression). Run once per avatar:
  c_s = G3D(sample(v_s, g_s)), g_s from theta_s and W_s->(z_s, e_s). A model with
  ``config.warped_source`` also keeps the source image (networks/source_pixels.py).
- :class:`Generator`: (c_s, e_s, theta_d, z_d) -> image: W_->d(z_d, e_s) gives the driver
  field, one volume sample gives v_d, and P + G2D render it. A model with ``config.matte``
  renders RGBA: the fourth channel is the person's matte (:func:`split_matte` separates them),
  because the paper trains on the foreground only and composites the background afterwards.

:class:`MegaPortraits` composes the three for training; nothing is computed twice. For
cross-reenactment, give the generator the avatar of one source and the motion of another
driver: ``model.generator(*avatar[:2], *motion)`` (or ``model.reenact(avatar, motion)``).
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from .config import ModelConfig, get_config
from .networks import (AppearanceEncoder, CanonicalGenerator, ExpressionEncoder, GlobalDescriptorEncoder,
                       HeadPoseRegressor, ImageGenerator, WarpingGenerator, fold_weight_standardisation)
from .networks.expression_edit import ExpressionEdit
from .networks.source_pixels import SourcePixelWarp
from .warp import driver_grid, sample_volume, source_grid


class AvatarState(NamedTuple):
    """Everything the generator needs from the source, computed once per avatar."""

    canonical_volume: torch.Tensor    # (N, C, D, H, W)
    global_descriptor: torch.Tensor   # (N, Cd, S, S)
    pose: torch.Tensor                # (N, 3, 4) the source's theta_s
    expression: torch.Tensor          # (N, Z) the source's z_s
    # a model with config.warped_source only: the source image (N, 3, s, s), what the
    # source-pixel path warps
    source_image: torch.Tensor | None = None

    @property
    def source_pixels(self) -> tuple:
        """(source_image, source pose, source expression), or () for a model without the
        source-pixel path: the generator's inputs after the driver's motion."""
        return () if self.source_image is None else (self.source_image, self.pose, self.expression)


class Motion(NamedTuple):
    """A frame's head pose and expression: what the driver contributes."""

    pose: torch.Tensor                # (N, 3, 4) theta, camera space -> canonical space
    expression: torch.Tensor          # (N, Z)


class DriverBranch(nn.Module):
    """An image -> Motion: the head-pose regressor, then the expression encoder on the aligned crop."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.head_pose = HeadPoseRegressor(config)
        self.expression_encoder = ExpressionEncoder(config)

    def forward(self, driver_image: torch.Tensor, pose: torch.Tensor | None = None) -> Motion:
        """``pose``: a known theta in place of the regressor's (the synthetic heads' true pose, for
        ``[train] true_poses``)."""
        if pose is None:
            pose = self.head_pose(driver_image)
        return Motion(pose, self.expression_encoder(driver_image, pose))


class SourceBranch(nn.Module):
    """The source image -> AvatarState (E_app, e_s, the shared DriverBranch, W_s->, G3D)."""

    def __init__(self, config: ModelConfig, driver_branch: DriverBranch):
        super().__init__()
        self.appearance_encoder = AppearanceEncoder(config)
        self.global_descriptor = GlobalDescriptorEncoder(config)
        self.driver_branch = driver_branch
        self.source_warp = WarpingGenerator(config)
        self.canonical_generator = CanonicalGenerator(config)
        self.keeps_source_pixels = config.warped_source

    def forward(self, source_image: torch.Tensor) -> AvatarState:
        return self.encode(source_image)[0]

    def encode(self, source_image: torch.Tensor, pose: torch.Tensor | None = None) -> tuple:
        """(AvatarState, the source deformation field D_s): the field is for training losses.
        ``pose``: the source's known theta_s in place of the regressor's (see DriverBranch)."""
        volume = self.appearance_encoder(source_image)
        descriptor = self.global_descriptor(source_image)
        pose, expression = self.driver_branch(source_image, pose)
        deformation = self.source_warp(expression, descriptor)
        canonical = self.canonical_generator(sample_volume(volume, source_grid(pose, deformation)))
        pixels = (source_image,) if self.keeps_source_pixels else ()
        return AvatarState(canonical, descriptor, pose, expression, *pixels), deformation


def split_matte(rendering: torch.Tensor) -> tuple:
    """A generator's output -> (RGB image (N, 3, S, S), matte (N, 1, S, S) or None)."""
    if rendering.shape[1] == 4:
        return rendering[:, :3], rendering[:, 3:]
    return rendering, None


class Rendering(NamedTuple):
    """What :meth:`Generator.render` returns: the image, and for training losses the rest."""

    image: torch.Tensor                        # (N, 3 or 4, s, s); RGBA for a matte model
    deformation: torch.Tensor                  # the driver deformation field D_d (N, D, H, W, 3)
    warped: torch.Tensor | None = None         # the source image as the driver sees it (source-pixel path)
    edited: torch.Tensor | None = None         # the source redrawn with the driver's expression (the edit)
    flow: torch.Tensor | None = None           # (N, 2, s, s) the source point each pixel of ``warped`` shows


class Generator(nn.Module):
    """(canonical volume, global descriptor, pose, expression) -> image (W_->d, one warp, P + G2D).

    The image is RGB, or RGBA with the person's matte as A for a model with ``config.matte``.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.driver_warp = WarpingGenerator(config)
        self.image_generator = ImageGenerator(config)
        self.source_pixels = SourcePixelWarp(config) if config.warped_source else None
        self.expression_edit = ExpressionEdit(config) if config.expression_edit_channels else None

    def forward(self, canonical_volume: torch.Tensor, global_descriptor: torch.Tensor, pose: torch.Tensor,
                expression: torch.Tensor, source_image: torch.Tensor | None = None,
                source_pose: torch.Tensor | None = None, source_expression: torch.Tensor | None = None) -> torch.Tensor:
        return self.render(canonical_volume, global_descriptor, pose, expression, source_image, source_pose,
                           source_expression)[0]

    def render(self, canonical_volume: torch.Tensor, global_descriptor: torch.Tensor, pose: torch.Tensor,
               expression: torch.Tensor, source_image: torch.Tensor | None = None,
               source_pose: torch.Tensor | None = None, source_expression: torch.Tensor | None = None) -> Rendering:
        """The image and what training losses read of it (:class:`Rendering`).

        ``source_image``, ``source_pose`` and ``source_expression`` (the avatar's own: its image
        and motion, not the driver's relative motion; ``AvatarState.source_pixels``) are required
        by, and only read by, a model with the source-pixel path.
        """
        deformation = self.driver_warp(expression, global_descriptor)
        grid = driver_grid(pose, deformation)
        driver_volume = sample_volume(canonical_volume, grid)
        if self.source_pixels is None:
            return Rendering(self.image_generator(driver_volume), deformation)
        if source_image is None or source_pose is None or source_expression is None:
            raise ValueError("this model has the source-pixel path (warped_source): give the generator the "
                             "avatar's source_image, source_pose and source_expression")
        edited = None
        if self.expression_edit is not None:
            source_image = edited = self.expression_edit(source_image, expression - source_expression)
        warped, flow = self.source_pixels(driver_volume, pose, expression, source_pose, source_expression,
                                          global_descriptor, source_image)
        return Rendering(self.image_generator(driver_volume, warped), deformation, warped, edited, flow)


class MegaPortraits(nn.Module):
    """The base model: source branch, driver branch (shared), generator.

    A model with another layout of the same three parts (EMOPortraits' converted weights)
    subclasses this and names its own branch classes.
    """

    source_branch_class = SourceBranch
    driver_branch_class = DriverBranch
    generator_class = Generator

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.source_branch = self.source_branch_class(config, self.driver_branch_class(config))
        self.generator = self.generator_class(config)

    @property
    def driver_branch(self) -> DriverBranch:
        """The one DriverBranch, owned by the source branch so its weights are stored once."""
        return self.source_branch.driver_branch

    def forward(self, source_image: torch.Tensor, driver_image: torch.Tensor, source_pose: torch.Tensor | None = None,
                driver_pose: torch.Tensor | None = None) -> dict:
        """Self-reenactment when source and driver are frames of one video (training).

        ``source_pose`` / ``driver_pose`` (N, 3, 4): known poses in place of the regressor's
        (``[train] true_poses``: what the rest of the model does with an exact motion).

        Returns ``image`` (N, 3, s, s), ``matte`` (N, 1, s, s) or None, ``avatar`` (AvatarState), ``motion`` (the driver's
        Motion), ``driver_expression`` (z_d, for the cycle-consistency loss),
        ``source_deformation`` and ``driver_deformation`` (N, D, H, W, 3) (for warp regularisers),
        ``warped_source`` (N, 3, s, s), the source image as the driver sees it, or None (a model
        without the source-pixel path; for the ``source_warp`` loss), ``edited_source`` (N, 3, s, s),
        the source image redrawn with the driver's expression, or None (a model without the
        expression edit; for the ``expression_edit`` loss), ``source_flow`` (N, 2, s, s), the source
        point each pixel of ``warped_source`` shows, or None (for the ``source_flow`` loss).
        """
        avatar, source_deformation = self.source_branch.encode(source_image, source_pose)
        motion = self.driver_branch(driver_image, driver_pose)
        rendering = self.generator.render(avatar.canonical_volume, avatar.global_descriptor, *motion,
                                          *avatar.source_pixels)
        image, matte = split_matte(rendering.image)
        return {
            "image": image,
            "matte": matte,
            "avatar": avatar,
            "motion": motion,
            "driver_expression": motion.expression,
            "source_deformation": source_deformation,
            "driver_deformation": rendering.deformation,
            "warped_source": rendering.warped,
            "edited_source": rendering.edited,
            "source_flow": rendering.flow,
        }

    def reenact(self, avatar: AvatarState, motion: Motion) -> torch.Tensor:
        """The image of ``avatar`` moved by ``motion`` (from any driver: cross-reenactment);
        RGBA for a matte model (see :func:`split_matte`)."""
        return self.generator(avatar.canonical_volume, avatar.global_descriptor, motion.pose, motion.expression,
                              *avatar.source_pixels)


def build_model(preset_or_config: str | ModelConfig) -> MegaPortraits:
    """A randomly initialised model for a preset name or a ModelConfig.

    Build inside ``with torch.device("meta"):`` to get shapes and parameter counts without
    allocating weights (what ``describe`` does for paper512).
    """
    config = get_config(preset_or_config) if isinstance(preset_or_config, str) else preset_or_config
    if config.architecture == "emoportraits":
        from .convert.emoportraits.model import EmoPortraits  # their layout, for converted weights
        return EmoPortraits(config)
    return MegaPortraits(config)


def folded_for_export(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every WS conv replaced by a plain conv of its standardised weight.

    The copy computes the same outputs with ordinary Conv weights, which is what the exported
    graphs contain.
    """
    return fold_weight_standardisation(copy.deepcopy(model))
