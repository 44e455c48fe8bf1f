"""Their weight reparameterisations folded into plain weights (what the exported graphs hold).

- spectral norm (their ``utils/spectral_norm.py``, eval mode): W = W_orig / sigma with
  sigma = u . (W_orig v), W_orig reshaped to (out, -1); u and v are the stored power-iteration
  vectors (no iteration at inference, so the fold is exact);
- weight standardisation (their ``Conv2d_ws`` / ``Conv3d_ws``): W = (w - mean) / (std + 1e-5)
  per output filter, std unbiased;
- BatchNorm (the head-pose ResNet-18, eval mode): conv(x) * g / sqrt(var + eps) + (b - mean * g /
  sqrt(var + eps)).
"""
from __future__ import annotations

import torch

from ...liveportrait.weights import fold_spectral_norm  # noqa: F401 - the one spectral-norm fold

WS_EPS = 1e-5
BN_EPS = 1e-5


def fold_weight_standardisation(weight: torch.Tensor) -> torch.Tensor:
    flat = weight.reshape(weight.shape[0], -1)
    mean = flat.mean(dim=1, keepdim=True)
    std = (flat - mean).std(dim=1, keepdim=True)
    return ((flat - mean) / (std + WS_EPS)).reshape_as(weight)


def fold_batch_norm(weight: torch.Tensor, bias: torch.Tensor | None, gamma: torch.Tensor, beta: torch.Tensor,
                    running_mean: torch.Tensor, running_var: torch.Tensor, eps: float = BN_EPS) -> tuple:
    """(conv weight, conv bias) of conv followed by an eval-mode BatchNorm."""
    factor = gamma / torch.sqrt(running_var + eps)
    folded_weight = weight * factor.reshape(-1, *([1] * (weight.dim() - 1)))
    folded_bias = beta - running_mean * factor + (bias * factor if bias is not None else 0)
    return folded_weight, folded_bias
