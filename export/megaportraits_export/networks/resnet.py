"""ResNet-18/50-style trunks with GroupNorm and weight standardisation.

The paper's global descriptor, head-pose and expression networks are ResNets. torchvision is
not a dependency, so the trunks are our own, laid out like torchvision's (``conv1``, ``layer1``
... ``layer4``, ``downsample``) with ``norm`` where torchvision has ``bn``. That lets
:func:`load_torchvision_weights` take ImageNet weights from a torchvision checkpoint already in
the torch hub cache, when there is one: construction never needs the network.

Note that an ImageNet checkpoint was trained with BatchNorm and unstandardised weights, so it is
a starting point for fine-tuning, not a drop-in: the convs here standardise whatever they load.
"""
from __future__ import annotations

import glob
import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BackboneConfig
from .blocks import group_norm, plain_conv, ws_conv

log = logging.getLogger(__name__)
_reported_missing: set = set()


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        self.conv1 = ws_conv(2, in_channels, width, 3, stride=stride)
        self.norm1 = group_norm(width)
        self.conv2 = ws_conv(2, width, width, 3)
        self.norm2 = group_norm(width)
        self.downsample = _shortcut(in_channels, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.relu(h + self.downsample(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int):
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = ws_conv(2, in_channels, width, 1)
        self.norm1 = group_norm(width)
        self.conv2 = ws_conv(2, width, width, 3, stride=stride)
        self.norm2 = group_norm(width)
        self.conv3 = ws_conv(2, width, out_channels, 1)
        self.norm3 = group_norm(out_channels)
        self.downsample = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = F.relu(self.norm2(self.conv2(h)))
        h = self.norm3(self.conv3(h))
        return F.relu(h + self.downsample(x))


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(ws_conv(2, in_channels, out_channels, 1, stride=stride), group_norm(out_channels))


class ResNetTrunk(nn.Module):
    """Stem (plain 7x7 conv, stride 2, max pool) and four stages; output stride 32, no head."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        block = Bottleneck if config.block == "bottleneck" else BasicBlock
        self.config = config
        self.conv1 = plain_conv(2, 3, config.width, 7, stride=2, bias=False)
        self.norm1 = group_norm(config.width)
        channels = config.width
        stages = []
        for index, count in enumerate(config.layers):
            width = config.width * 2 ** index
            blocks = []
            for block_index in range(count):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(block(channels, width, stride))
                channels = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(image)))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def build_trunk(config: BackboneConfig, pretrained: bool = False) -> ResNetTrunk:
    """A trunk, optionally initialised from a cached torchvision checkpoint (see module doc)."""
    trunk = ResNetTrunk(config)
    if pretrained and trunk.conv1.weight.device.type != "meta":
        load_torchvision_weights(trunk, config.torchvision_arch)
    return trunk


def torchvision_checkpoint(arch: str) -> str | None:
    """The cached torchvision checkpoint for ``arch`` (e.g. resnet18-f37072fd.pth), if any."""
    pattern = os.path.join(torch.hub.get_dir(), "checkpoints", f"{arch}-*.pth")
    matches = sorted(glob.glob(pattern))
    return matches[0] if matches else None


def load_torchvision_weights(trunk: ResNetTrunk, arch: str) -> int:
    """Copy every tensor of a cached torchvision ``arch`` checkpoint whose name and shape match.

    Returns how many tensors were loaded. When no checkpoint is cached it logs once per arch
    that the trunk is built without ImageNet weights, and returns 0.
    """
    path = torchvision_checkpoint(arch)
    if path is None:
        if arch not in _reported_missing:
            _reported_missing.add(arch)
            log.warning("no cached %s checkpoint under %s; building without ImageNet weights "
                        "(put torchvision's %s-*.pth there to use them)",
                        arch, os.path.join(torch.hub.get_dir(), "checkpoints"), arch)
        return 0
    source = torch.load(path, map_location="cpu", weights_only=True)
    own = trunk.state_dict()
    loaded = {}
    for key, tensor in source.items():
        ours = _our_key(key)
        if ours in own and own[ours].shape == tensor.shape:
            loaded[ours] = tensor
    trunk.load_state_dict(loaded, strict=False)
    log.info("loaded %d of %d %s tensors from %s", len(loaded), len(own), arch, path)
    return len(loaded)


def _our_key(torchvision_key: str) -> str:
    """torchvision's name for a tensor -> ours (``bn`` -> ``norm``; ``downsample.1`` is the norm)."""
    if torchvision_key.startswith("bn1."):
        return "norm1." + torchvision_key[4:]
    return torchvision_key.replace(".bn", ".norm")
