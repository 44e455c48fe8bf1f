"""LivePortrait's stitching and retargeting MLPs, and the keypoint maths around them.

The stitching MLP reads the source and driving keypoints and returns a correction of the
driving ones (3K expression offsets and a 2-D shift), which keeps the shoulders and the crop's
border where the source has them so the crop pastes back without seams. The eye and lip MLPs
retarget those regions from landmark-based open ratios (kept loadable here; the SDK has no
landmark model to drive them yet).
"""
from __future__ import annotations

import torch
from torch import nn

from .config import MLPSize


class StitchingRetargetingNetwork(nn.Module):
    """Linear/ReLU stack; ``mlp`` indices match the published state dicts."""

    def __init__(self, size: MLPSize):
        super().__init__()
        widths = (size.input_size, *size.hidden_sizes)
        layers = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], size.output_size))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def stitch(stitching: StitchingRetargetingNetwork, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
    """Driving keypoints (N, K, 3) corrected by the stitching MLP: + its 3K offsets, and + its
    (tx, ty) on every keypoint's x and y."""
    n, k, _ = kp_source.shape
    delta = stitching(torch.cat([kp_source.reshape(n, -1), kp_driving.reshape(n, -1)], dim=1))
    shift = torch.cat([delta[:, 3 * k:3 * k + 2], delta.new_zeros(n, 1)], dim=1)
    return kp_driving + delta[:, :3 * k].reshape(n, k, 3) + shift[:, None, :]
