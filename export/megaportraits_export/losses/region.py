"""Reconstruction error inside a region, normalised by the region's area.

Why: the expression region of a pair (the eyes, brows or mouth the driver moved, see
:mod:`megaportraits_export.data.expression_pairs`) covers a few per cent of the image, so its
share of a whole-image L1 is a few per cent too, whatever the weight. Dividing by the region's
area makes the term the mean error *on those pixels*: its weight then says how much one pixel of
expression counts against one pixel of the whole image, independent of how big the face is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def region_l1(prediction: torch.Tensor, target: torch.Tensor, region: torch.Tensor, scales: int = 2) -> torch.Tensor:
    """Mean absolute error over ``region`` ((N, 1, H, W) in [0, 1]), averaged over a pyramid
    of ``scales`` levels (the region average-pooled with the images). A batch without any
    region pixel gives 0 (with a gradient path, so DDP sees every parameter used)."""
    if region.dim() != 4 or region.shape[1] != 1 or region.shape[-2:] != prediction.shape[-2:]:
        raise ValueError(f"region must be (N, 1, H, W) matching the images, got {tuple(region.shape)} "
                         f"for images {tuple(prediction.shape)}")
    total = prediction.new_zeros(())
    for level in range(scales):
        if level:
            prediction, target, region = (F.avg_pool2d(t, 2) for t in (prediction, target, region))
        weight = region.expand_as(prediction)
        total = total + ((prediction - target).abs() * weight).sum() / weight.sum().clamp_min(1.0)
    return total / scales
