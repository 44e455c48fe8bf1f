"""The evaluation pairs: held-out identities A and B, a source, self and cross drivers, the exact
target and its person mask, and the poses behind them (see the package docstring)."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

DEFAULT_HELDOUT_IDENTITIES = 32


@dataclasses.dataclass
class PairSet:
    """Images (N, 3, S, S) float32 in [0, 1] of the evaluation pairs (see module docstring)."""

    source: torch.Tensor
    self_driver: torch.Tensor
    cross_driver: torch.Tensor
    cross_reference: torch.Tensor     # B performing the source's motion: d0 for relative motion
    target: torch.Tensor
    target_mask: torch.Tensor         # (N, 1, S, S) the target's person mask, for masked metrics
    identities: list                  # (A, B) seeds per pair
    source_pose: torch.Tensor         # (N, 7) ground truth of the model's theta (Pose.model_parameters)
    driver_pose: torch.Tensor         # (N, 7) for the drivers of both tasks


def heldout_pairs(pairs: int, size: int, seed: int = 0,
                  identities: int = DEFAULT_HELDOUT_IDENTITIES) -> PairSet:
    """The evaluation pairs of held-out identities, rendered at ``size``."""
    from megaportraits_export.data import synthetic

    if identities < 2:
        raise ValueError("cross-reenactment needs at least 2 held-out identities")
    seeds = synthetic.identity_seeds("eval", identities)
    rng = np.random.default_rng([0xE7A1, seed])

    def tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0

    images = {k: [] for k in ("source", "self_driver", "cross_driver", "cross_reference")}
    masks = []
    chosen, poses = [], {"source_pose": [], "driver_pose": []}
    for k in range(pairs):
        a = seeds[k % len(seeds)]
        b = seeds[(k % len(seeds) + 1 + int(rng.integers(len(seeds) - 1))) % len(seeds)]
        id_a, id_b = synthetic.Identity.sample(a), synthetic.Identity.sample(b)
        m_s, m_d = synthetic.HeadMotion.random(rng), synthetic.HeadMotion.random(rng)
        images["source"].append(synthetic.render(id_a, m_s.pose, m_s.expression, size))
        target, mask = synthetic.render(id_a, m_d.pose, m_d.expression, size, with_mask=True)
        images["self_driver"].append(target)
        masks.append(torch.from_numpy(mask).float().div(255.0)[None])
        images["cross_driver"].append(synthetic.render(id_b, m_d.pose, m_d.expression, size))
        images["cross_reference"].append(synthetic.render(id_b, m_s.pose, m_s.expression, size))
        chosen.append((a, b))
        poses["source_pose"].append(torch.from_numpy(m_s.pose.model_parameters()))
        poses["driver_pose"].append(torch.from_numpy(m_d.pose.model_parameters()))
    stacked = {k: torch.stack([tensor(i) for i in v]) for k, v in images.items()}
    stacked.update({k: torch.stack(v) for k, v in poses.items()})
    return PairSet(target=stacked["self_driver"], target_mask=torch.stack(masks), identities=chosen, **stacked)
