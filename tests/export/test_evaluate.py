"""Evaluation metrics and the evaluate command, checked against values derived by hand and a
direct per-window SSIM written from the paper's formula."""
import math

import numpy as np
import pytest
import torch

from megaportraits_export import metrics


def _reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM from Wang et al. (2004) evaluated window by window, Gaussian-weighted statistics."""
    size, sigma = 11, 1.5
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-r ** 2 / (2 * sigma ** 2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for ch in range(x.shape[0]):
        for i in range(x.shape[1] - size + 1):
            for j in range(x.shape[2] - size + 1):
                a = x[ch, i:i + size, j:j + size]
                b = y[ch, i:i + size, j:j + size]
                ma, mb = (w * a).sum(), (w * b).sum()
                va = (w * (a - ma) ** 2).sum()
                vb = (w * (b - mb) ** 2).sum()
                cov = (w * (a - ma) * (b - mb)).sum()
                values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_l1_and_psnr_of_a_known_offset():
    g = torch.Generator().manual_seed(0)
    target = 0.1 + 0.7 * torch.rand(2, 3, 16, 16, generator=g)
    prediction = target + 0.1
    assert torch.allclose(metrics.l1(prediction, target), torch.full((2,), 0.1, dtype=torch.float64))
    assert torch.allclose(metrics.psnr(prediction, target), torch.full((2,), 20.0, dtype=torch.float64))


def test_psnr_of_identical_images_is_capped():
    x = torch.rand(1, 3, 12, 12)
    assert metrics.psnr(x, x).item() == pytest.approx(100.0)


def test_ssim_matches_the_per_window_formula():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 14, 15, generator=g)
    y = (x + 0.2 * torch.rand(2, 3, 14, 15, generator=g)).clamp(0, 1)
    ours = metrics.ssim(x, y)
    for n in range(2):
        assert ours[n].item() == pytest.approx(_reference_ssim(x[n].double().numpy(), y[n].double().numpy()), abs=1e-9)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(2, dtype=torch.float64))
    assert (ours < 1).all()


def test_metric_accumulator_averages_per_image():
    acc = metrics.MetricAccumulator()
    t = torch.full((1, 3, 16, 16), 0.5)
    acc.add(t + 0.1, t)       # psnr 20
    acc.add(t + 0.01, t)      # psnr 40
    means = acc.means()
    assert acc.count == 2
    assert means["psnr"] == pytest.approx(30.0)
    assert means["l1"] == pytest.approx(0.055)


def test_metrics_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        metrics.l1(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
