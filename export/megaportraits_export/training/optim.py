"""Optimisers and learning-rate schedules as in the paper.

AdamW with betas (0.5, 0.999) and weight decay 1e-2; the learning rate follows a cosine from
2e-4 down to 1e-6 over the main stage. The schedule is the closed form of the cosine (a
LambdaLR multiplier), not the recursive update of CosineAnnealingLR, so the learning rate at
step t is the same whether or not the run was resumed in between.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def cosine_multiplier(total_steps: int, lr: float, lr_min: float):
    """Multiplier m(t) with lr * m(t) going from lr at t = 0 to lr_min at t = total_steps."""
    floor = lr_min / lr if lr > 0 else 0.0

    def multiplier(step: int) -> float:
        progress = min(max(step, 0), total_steps) / max(total_steps, 1)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def trainable(parameters) -> list:
    return [p for p in parameters if p.requires_grad]


def build_adamw(groups: list, betas: tuple, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over parameter groups [{"params": [...], "lr": ...}, ...] (empty groups dropped)."""
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("nothing to optimise: every parameter is frozen")
    return torch.optim.AdamW(groups, betas=tuple(betas), weight_decay=weight_decay)


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, lr: float,
                    lr_min: float, warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """The cosine from ``lr`` to ``lr_min``, its first ``warmup_steps`` ramped linearly from
    lr / warmup_steps: the first Adam steps move every weight by about the learning rate
    whatever its gradient, which put a random residual of -3.4 dB into a zero-initialised
    enhancer's output at lr 1e-3 (docs/demo_model.md)."""
    cosine = cosine_multiplier(total_steps, lr, lr_min)
    if warmup_steps <= 0:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine(step) * min(1.0, (step + 1) / warmup_steps))


def clip_gradients(module: nn.Module, max_norm: float) -> None:
    if max_norm > 0:
        torch.nn.utils.clip_grad_norm_(trainable(module.parameters()), max_norm)
