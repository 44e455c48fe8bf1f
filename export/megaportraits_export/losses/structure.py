"""Structural dissimilarity, 1 - SSIM: a training term that targets the reported SSIM itself.

Why: the demo enhancer trained on squared error alone raised PSNR over bicubic upsampling but
lowered SSIM (0.8873 vs 0.8952 on the base model's renderings): the squared error's optimum
given a blurry frame is the truth's mean, and the residual it adds near edges carries structure
that SSIM, a local comparison of means, contrasts and correlation, counts against it. The term
is the mean of :func:`megaportraits_export.metrics.ssim_map` (the same window and constants as
the evaluation's SSIM, one definition), in the images' own dtype so it trains in float32.
"""
from __future__ import annotations

import torch

from megaportraits_export.metrics import ssim_map


def ssim_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - SSIM of two (N, C, H, W) batches in [0, 1], averaged over images and channels
    (0 for identical images; differentiable in ``prediction``)."""
    return 1.0 - ssim_map(prediction, target).mean()
