"""The three graphs of a LivePortrait bundle, as modules whose outputs follow
:data:`megaportraits.schema.LIVEPORTRAIT_GRAPH_IO`.

* source (once per avatar): the appearance feature volume and the source's own motion;
* driver (per frame): the motion extractor alone;
* generator (per frame): stitching of the driving keypoints, the warping module, the decoder.

Composing the driving keypoints from the motion (angles from bins, the relative-motion rule)
is cheap arithmetic on 21 points and is done by the SDK
(:mod:`megaportraits.motion_liveportrait`), where it can follow the user's options.
"""
from __future__ import annotations

import torch
from torch import nn

from .stitching import stitch
from .weights import LivePortraitNetworks


def _motion(heads: dict, num_kp: int) -> tuple:
    n = heads["kp"].shape[0]
    return (heads["pitch"], heads["yaw"], heads["roll"], heads["t"], heads["exp"].reshape(n, num_kp, 3),
            heads["scale"], heads["kp"].reshape(n, num_kp, 3))


class SourceGraph(nn.Module):
    def __init__(self, networks: LivePortraitNetworks):
        super().__init__()
        self.appearance = networks.appearance_feature_extractor
        self.motion = networks.motion_extractor
        self.num_kp = networks.config.num_kp

    def forward(self, source_image: torch.Tensor) -> tuple:
        return (self.appearance(source_image),) + _motion(self.motion(source_image), self.num_kp)


class DriverGraph(nn.Module):
    def __init__(self, networks: LivePortraitNetworks):
        super().__init__()
        self.motion = networks.motion_extractor
        self.num_kp = networks.config.num_kp

    def forward(self, driver_image: torch.Tensor) -> tuple:
        return _motion(self.motion(driver_image), self.num_kp)


class GeneratorGraph(nn.Module):
    def __init__(self, networks: LivePortraitNetworks):
        super().__init__()
        self.stitching = networks.stitching
        self.warping = networks.warping_module
        self.decoder = networks.spade_generator

    def forward(self, feature_volume: torch.Tensor, source_keypoints: torch.Tensor,
                driving_keypoints: torch.Tensor) -> torch.Tensor:
        driving = stitch(self.stitching, source_keypoints, driving_keypoints)
        return self.decoder(self.warping(feature_volume, source_keypoints, driving))


def role_modules(networks: LivePortraitNetworks) -> dict:
    return {"source": SourceGraph(networks).eval(), "driver": DriverGraph(networks).eval(),
            "generator": GeneratorGraph(networks).eval()}
