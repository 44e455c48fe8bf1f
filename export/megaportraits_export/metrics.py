"""Image-reconstruction metrics for reenactment: L1, PSNR, SSIM (and LPIPS when it can run).

All metrics take float images (N, 3, H, W) in [0, 1] and return one value per image, so the
caller decides how to aggregate (the evaluation averages over pairs). Values are computed in
float64: the numbers end up in a manifest and should not depend on summation order.

LPIPS needs pretrained AlexNet/VGG weights plus the LPIPS linear heads. Neither is shipped
with this project and model hubs are unreachable on the build machines, so LPIPS is reported
as unavailable rather than approximated with random weights (a random-weight "LPIPS" would be
a different, unpublished metric).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

LPIPS_UNAVAILABLE = ("LPIPS not computed: its pretrained network weights are not available "
                     "on this machine (no model hub access)")


def _check_pair(prediction: torch.Tensor, target: torch.Tensor) -> None:
    if prediction.shape != target.shape or prediction.dim() != 4:
        raise ValueError(f"metrics need two (N, C, H, W) batches of the same shape, "
                         f"got {tuple(prediction.shape)} and {tuple(target.shape)}")


def l1(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image."""
    _check_pair(prediction, target)
    return (prediction.double() - target.double()).abs().flatten(1).mean(1)


def psnr(prediction: torch.Tensor, target: torch.Tensor, max_psnr: float = 100.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, data range 1; identical images give max_psnr."""
    _check_pair(prediction, target)
    mse = (prediction.double() - target.double()).pow(2).flatten(1).mean(1)
    value = -10.0 * torch.log10(mse.clamp_min(10.0 ** (-max_psnr / 10.0)))
    return value


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-coords.pow(2) / (2.0 * sigma * sigma))
    return g / g.sum()


def ssim_map(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The local SSIM of (N, C, H, W) images, (N, C, H - 10, W - 10), in their own dtype and
    differentiable: :func:`ssim` (float64) and the training loss
    :func:`megaportraits_export.losses.structure.ssim_loss` (float32) are both its mean, so a
    model trained on it targets exactly the reported measure.

    Gaussian window 11x11 with sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1; local statistics
    over the valid region only (no padding), each colour channel separately.
    """
    _check_pair(prediction, target)
    n, c, h, w = prediction.shape
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {h}x{w}")
    x, y = prediction, target
    g = _gaussian_window(SSIM_WINDOW, SSIM_SIGMA).to(dtype=x.dtype, device=x.device)
    rows = g.view(1, 1, SSIM_WINDOW, 1).expand(c, 1, SSIM_WINDOW, 1).contiguous()
    cols = g.view(1, 1, 1, SSIM_WINDOW).expand(c, 1, 1, SSIM_WINDOW).contiguous()

    def local_mean(t: torch.Tensor) -> torch.Tensor:  # the separable Gaussian window
        return F.conv2d(F.conv2d(t, rows, groups=c), cols, groups=c)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x.pow(2)
    var_y = local_mean(y * y) - mu_y.pow(2)
    cov_xy = local_mean(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    return ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2))


def ssim(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image: the mean of :func:`ssim_map` in
    float64 over every channel and valid position."""
    return ssim_map(prediction.double(), target.double()).flatten(1).mean(1)


METRICS = {"l1": l1, "psnr": psnr, "ssim": ssim}
HIGHER_IS_BETTER = {"l1": False, "psnr": True, "ssim": True}


def image_metrics(prediction: torch.Tensor, target: torch.Tensor) -> dict:
    """Every available metric per image: {name: (N,) float64 tensor}."""
    prediction = prediction.clamp(0.0, 1.0)
    return {name: fn(prediction, target) for name, fn in METRICS.items()}


class MetricAccumulator:
    """Running means of per-image metrics over many batches."""

    def __init__(self):
        self.sums: dict = {}
        self.count = 0

    def add(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        for name, values in image_metrics(prediction, target).items():
            self.sums[name] = self.sums.get(name, 0.0) + float(values.sum())
        self.count += prediction.shape[0]

    def means(self) -> dict:
        if self.count == 0:
            return {name: math.nan for name in METRICS}
        return {name: total / self.count for name, total in self.sums.items()}
