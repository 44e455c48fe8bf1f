"""The cycle-consistency loss of MegaPortraits: a CosFace-style contrast between motion codes.

Why: the expression code z of a driver must carry motion only. If the image generated from
source s with driver d's motion is encoded again, its code z_s->d must match z_d (same motion)
whatever the source; and the image generated from another person s* with the same motion must
give a code z_s*->d that matches z_d too. Codes of a different motion (z_d*, the driver of the
second pair) are the negatives. So appearance cannot leak through z without raising the loss.

With cos(a, b) the cosine similarity, for each positive pair (k, l) (paper: s = 5, m = 0.2)

    L = -log( exp(s (cos(z_k, z_l) - m)) / (exp(s (cos(z_k, z_l) - m)) + sum_(i,j in N) exp(s cos(z_i, z_j))) )

summed over the positive pairs P = {(z_s->d, z_d), (z_s*->d, z_d)} with the negatives
N = {(z_s->d, z_d*), (z_s*->d, z_d*)}, averaged over the batch. The margin m acts on positives
only, as in CosFace (Wang et al., CVPR 2018) and in the authors' successor code; a margin on
every term would cancel out of the ratio.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

COSFACE_SCALE = 5.0
COSFACE_MARGIN = 0.2

Pair = tuple[torch.Tensor, torch.Tensor]


def cosface_loss(
    positives: Sequence[Pair],
    negatives: Sequence[Pair],
    scale: float = COSFACE_SCALE,
    margin: float = COSFACE_MARGIN,
) -> torch.Tensor:
    """The loss above for any pairs of (N, Z) codes (flattened past the batch axis)."""
    if not positives or not negatives:
        raise ValueError("cosface_loss needs at least one positive and one negative pair")

    def cosine(pair: Pair) -> torch.Tensor:
        a, b = pair
        return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-8)

    negative_logits = torch.stack([scale * cosine(pair) for pair in negatives], dim=1)  # (N, |neg|)
    total = 0.0
    for pair in positives:
        positive_logit = scale * (cosine(pair) - margin)                                  # (N,)
        logits = torch.cat([positive_logit[:, None], negative_logits], dim=1)
        total = total + (torch.logsumexp(logits, dim=1) - positive_logit).mean()
    return total


def motion_cycle_loss(
    z_source_to_driver: torch.Tensor,
    z_source2_to_driver: torch.Tensor,
    z_driver: torch.Tensor,
    z_driver2: torch.Tensor,
    scale: float = COSFACE_SCALE,
    margin: float = COSFACE_MARGIN,
) -> torch.Tensor:
    """MegaPortraits' L_cos from the four codes it compares.

    ``z_source_to_driver``: code of the image generated from the source with the driver's motion;
    ``z_source2_to_driver``: code of the image generated from the second pair's source (another
    person) with the same motion; ``z_driver``/``z_driver2``: codes of the two drivers.
    """
    positives = [(z_source_to_driver, z_driver), (z_source2_to_driver, z_driver)]
    negatives = [(z_source_to_driver, z_driver2), (z_source2_to_driver, z_driver2)]
    return cosface_loss(positives, negatives, scale, margin)
