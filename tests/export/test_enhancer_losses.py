"""The enhancer's structure terms: 1 - SSIM is the evaluation's SSIM (checked against a per-window
formula written from Wang et al. 2004, independent of the convolutional one), its gradient is the
true one, and the composite it scores for a matte model is what a viewer sees."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from megaportraits_export import metrics
from megaportraits_export.losses import ssim_loss
from megaportraits_export.training.enhancement import reenacted_loss, shown


def _window_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Mean SSIM over every 11x11 window of (C, H, W) float64 images, Gaussian-weighted (sigma 1.5)."""
    r = np.arange(11) - 5.0
    g = np.exp(-r ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for ch in range(x.shape[0]):
        for i in range(x.shape[1] - 10):
            for j in range(x.shape[2] - 10):
                a, b = x[ch, i:i + 11, j:j + 11], y[ch, i:i + 11, j:j + 11]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
                cov = (w * (a - ma) * (b - mb)).sum()
                values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def _pair(seed: int, shape=(2, 3, 16, 17)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g)
    return x, (x + 0.3 * torch.rand(*shape, generator=g) - 0.15).clamp(0, 1)


def test_ssim_loss_is_one_minus_the_reported_ssim_in_float32():
    x, y = _pair(0)
    reference = np.mean([_window_ssim(x[n].double().numpy(), y[n].double().numpy()) for n in range(2)])
    loss = ssim_loss(x, y)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(1.0 - reference, abs=2e-6)
    assert float(1.0 - metrics.ssim(x, y).mean()) == pytest.approx(1.0 - reference, abs=1e-12)
    assert float(ssim_loss(y, y)) == pytest.approx(0.0, abs=1e-6)


def test_ssim_loss_gradient_is_the_true_one():
    x, y = _pair(1, (1, 2, 12, 13))
    x = x.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: ssim_loss(t, y.double()), (x,), eps=1e-6, atol=1e-6)


def test_descending_ssim_loss_raises_the_reported_ssim():
    x, y = _pair(2)
    before = float(metrics.ssim(x, y).mean())
    x = x.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([x], lr=20.0)
    for _ in range(5):
        optimizer.zero_grad()
        ssim_loss(x, y).backward()
        optimizer.step()
    after = float(metrics.ssim(x.detach(), y).mean())
    assert before < 0.97 and after > 0.99, (before, after)


def test_shown_composites_the_enhanced_colours_over_the_backdrop_with_the_enhanced_matte():
    g = torch.Generator().manual_seed(4)
    lifted, backdrop = torch.rand(2, 4, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    alpha = lifted[:, 3:]
    torch.testing.assert_close(shown(lifted, backdrop), alpha * lifted[:, :3] + (1 - alpha) * backdrop)
    opaque, clear = lifted.clone(), lifted.clone()
    opaque[:, 3:], clear[:, 3:] = 1.0, 0.0
    torch.testing.assert_close(shown(opaque, backdrop), lifted[:, :3])   # all person: the enhanced colours
    torch.testing.assert_close(shown(clear, backdrop), backdrop)         # no person: the backdrop
    rgb = lifted[:, :3]
    assert shown(rgb, None) is rgb
    with pytest.raises(ValueError, match="backdrop"):
        shown(lifted, None)


def test_shown_mse_is_the_squared_error_of_the_composite_so_the_matte_counts_only_where_it_shows():
    g = torch.Generator().manual_seed(5)
    truth = torch.rand(2, 4, 8, 8, generator=g)
    truth[:, 3:] = (truth[:, 3:] > 0.5).float()
    backdrop = torch.rand(2, 3, 8, 8, generator=g)
    lifted = torch.rand(2, 4, 8, 8, generator=g)
    alpha = lifted[:, 3:]
    by_hand = (alpha * lifted[:, :3] + (1 - alpha) * backdrop - truth[:, :3]).square().mean()
    torch.testing.assert_close(reenacted_loss(lifted, truth, "shown_mse", backdrop), by_hand)
    # a clear matte shows the backdrop, not the truth: the person missing costs what it shows
    clear = lifted.clone()
    clear[:, 3:] = 0.0
    torch.testing.assert_close(reenacted_loss(clear, truth, "shown_mse", backdrop),
                               (backdrop - truth[:, :3]).square().mean())
    # where the person is drawn in the backdrop's own colours, the matte cannot show: no cost
    truth[:, :3] = backdrop
    same = lifted.clone()
    same[:, :3] = backdrop
    assert float(reenacted_loss(same, truth, "shown_mse", backdrop)) < 1e-12
    assert float(reenacted_loss(same, truth, "mse")) > 0.01  # the mask form holds the matte to the mask
    rgb = lifted[:, :3]
    torch.testing.assert_close(reenacted_loss(rgb, truth[:, :3], "shown_mse"), reenacted_loss(rgb, truth[:, :3], "mse"))
