"""The expression code's first entries read as the synthetic heads' expression parameters.

Why: on the bundled demo model the code carried no expression at all. A ridge regression from
the shipped model's code z to the six parameters the synthetic renderer obeys (mouth opening,
smile, eye closure, brow raise, gaze x / y) explains none of their variance on held-out heads
(R^2 <= 0.02 for every one), so the warping generators had nothing to move the face by: a
renderer that draws a blur gives the encoder no gradient towards the eyes or the mouth, and the
encoder gives the renderer no reason to draw them. Synthetic heads come with the parameters;
asking the code to hold them (as the head-pose regressor is asked to hold the pose in its
pretraining stage) breaks that loop. Only the first ``len(parameters)`` entries are asked for:
the rest of the code stays free for what the parameters do not say. Video data has no labels,
so recipes on real video leave the term at 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH_L1_BETA = 0.1   # the parameters span about [0, 1]: quadratic within a tenth of the range


def expression_label_loss(code: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
    """Smooth L1 between ``code[:, :P]`` ((N, Z) expression codes) and ``parameters`` (N, P)."""
    if code.dim() != 2 or parameters.dim() != 2 or code.shape[0] != parameters.shape[0]:
        raise ValueError(f"expected codes (N, Z) and parameters (N, P), got {tuple(code.shape)} and "
                         f"{tuple(parameters.shape)}")
    if code.shape[1] < parameters.shape[1]:
        raise ValueError(f"the expression code has {code.shape[1]} entries, fewer than the {parameters.shape[1]} "
                         "parameters it should hold")
    return F.smooth_l1_loss(code[:, :parameters.shape[1]], parameters.to(code.dtype), beta=SMOOTH_L1_BETA)
