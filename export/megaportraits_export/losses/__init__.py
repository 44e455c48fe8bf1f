"""Losses of MegaPortraits and their weights (the paper's base model, arXiv 2207.07621).

Each loss module returns unweighted terms under the names of :class:`LossWeights`' fields;
:func:`combine_losses` applies the weights, so the paper's lambdas live in one place.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import torch

from megaportraits_export.losses.cycle import COSFACE_MARGIN, COSFACE_SCALE, cosface_loss, motion_cycle_loss
from megaportraits_export.losses.discriminator import (
    MultiScaleDiscriminator,
    PatchDiscriminator,
    discriminator_hinge_loss,
    feature_matching_loss,
    generator_hinge_loss,
)
from megaportraits_export.losses.expression_labels import expression_label_loss
from megaportraits_export.losses.perceptual import PerceptualLoss, VGG19Features, multiscale_l1
from megaportraits_export.losses.region import region_l1
from megaportraits_export.losses.structure import ssim_loss


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """The paper's weights of the base model's generator losses.

    ``l1`` is 0: the base model trains without a pixel loss; the 1024 enhancer uses 100
    (``LossWeights(l1=100.0, feature_matching=100.0)``). ``matte`` weighs the one term the
    paper does not have: a model that predicts its matte (``ModelConfig.matte``) learns it from
    the foreground masks, because it is trained, like the paper's, on the foreground only. ``expression`` weighs
    :func:`region_l1` on the pairs' expression regions (``ExpressionPairHeads``): the term that
    makes the expression code matter on small synthetic faces. ``features`` weighs it on the
    driver's face features (eyes, brows, mouth, nose, glasses; ``driver_feature_region``), so a
    model learns to render them in every pair, not only where two expressions differ.
    ``source_warp`` weighs the pyramid L1 of the source-pixel path's warped source image
    (networks/source_pixels.py) to the driver's person: it makes the model's warps true
    correspondences, which nothing else asks of them (a learned canonical volume absorbs any
    consistent distortion, so the volume path alone leaves the composed warp far from the motion).
    ``expression_labels`` weighs :func:`expression_label_loss`: the source's and the driver's
    expression codes hold the synthetic heads' expression parameters in their first entries.
    ``expression_edit`` weighs the expression edit's image (networks/expression_edit.py) against
    the source drawn with the driver's expression: the pyramid L1 of the whole image plus
    :func:`region_l1` where the expression changes it. ``source_flow`` weighs :func:`region_l1` of
    the source-pixel path's flow (the source point each pixel shows, normalised coordinates)
    against the synthetic heads' true correspondence on the skull (``driver_correspondence``,
    data/synthetic/correspondence.py): which depth a pixel shows, taught where it is known.
    ``composite`` weighs the mean squared error of the image a user sees, a matte model's
    prediction composited through its matte over the driver's true background, to the driver. The
    foreground L1 and the matte's L1 each see half of the silhouette: neither asks the colours and
    the matte to agree where they meet, and an L1 lets a silhouette pixel take the wrong side, a
    rare large error that the squared error (what PSNR reads) weighs as it is.
    """

    perceptual: float = 20.0       # lambda_IN: ImageNet VGG19 (or its documented fallback)
    face: float = 4.0              # lambda_face: face-identity network, if provided
    gaze: float = 5.0              # lambda_gaze: gaze network, if provided
    adversarial: float = 1.0       # lambda_adv: hinge loss of the generator
    feature_matching: float = 40.0  # lambda_FM
    cycle: float = 2.0             # lambda_cos: CosFace cycle loss on motion codes
    l1: float = 0.0
    matte: float = 1.0             # not the paper's: pyramid L1 of a matte model's matte to the mask
    expression: float = 0.0        # not the paper's: L1 on the pixels the driver's expression changes
    features: float = 0.0          # not the paper's: L1 on the driver's eyes, brows, mouth, nose
    source_warp: float = 0.0       # not the paper's: pyramid L1 of the warped source image to the driver's person
    expression_labels: float = 0.0  # not the paper's: the expression codes hold the synthetic expression parameters
    expression_edit: float = 0.0   # not the paper's: the edited source against the source with the driver's expression
    source_flow: float = 0.0       # not the paper's: the source-pixel path's flow against the heads' true correspondence
    composite: float = 0.0         # not the paper's: squared error of the composited image a user sees

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


TERM_NAMES = tuple(field.name for field in dataclasses.fields(LossWeights))


def combine_losses(
    terms: Mapping[str, torch.Tensor],
    weights: LossWeights = LossWeights(),
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the terms present -> (total for backward, weighted values for logging).

    Terms with weight 0 are left out of the total. Raises ValueError on a name that is not a
    field of :class:`LossWeights` (a typo would otherwise drop a loss silently).
    """
    unknown = sorted(set(terms) - set(TERM_NAMES))
    if unknown:
        raise ValueError(f"unknown loss term {unknown[0]!r}; expected one of {', '.join(TERM_NAMES)}")
    if not terms:
        raise ValueError("combine_losses needs at least one term")
    factors = weights.as_dict()
    total, logged = None, {}
    for name, value in terms.items():
        if factors[name] == 0.0:
            continue
        weighted = factors[name] * value
        total = weighted if total is None else total + weighted
        logged[name] = float(weighted.detach())
    if total is None:
        raise ValueError("every given loss term has weight 0")
    logged["total"] = float(total.detach())
    return total, logged


__all__ = [
    "COSFACE_MARGIN",
    "COSFACE_SCALE",
    "LossWeights",
    "MultiScaleDiscriminator",
    "PatchDiscriminator",
    "PerceptualLoss",
    "TERM_NAMES",
    "VGG19Features",
    "combine_losses",
    "cosface_loss",
    "discriminator_hinge_loss",
    "expression_label_loss",
    "feature_matching_loss",
    "generator_hinge_loss",
    "motion_cycle_loss",
    "multiscale_l1",
    "region_l1",
    "ssim_loss",
]
