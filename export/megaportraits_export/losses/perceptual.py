"""Perceptual losses: VGG19 features (ImageNet weights when on disk), plus hooks for the face
identity and gaze networks of the paper.

MegaPortraits compares generated and real images through three networks: ImageNet VGG19
(lambda_IN = 20), VGGFace (lambda_face = 4) and a VGG16 gaze model (lambda_gaze = 5). None of
their weights can be downloaded here, so:

- VGG19 is built in torch with exactly the layer indexing of ``torchvision.models.vgg19().features``
  (conv/ReLU/max-pool entries 0..36), so a torchvision state dict loads as it is. With
  ``weights="auto"`` the ImageNet checkpoint is taken from ``torch.hub.get_dir()/checkpoints/
  vgg19-*.pth`` when present. Otherwise the documented fallback is a *fixed random-weight VGG19*
  (Kaiming init from a fixed seed, the same on every machine) **plus a multi-scale L1**: random
  convolutional features still measure multi-scale structure (He, Wang & Hopcroft, "A Powerful
  Generative Model Using Random Weights for the Deep Image Representation", NeurIPS 2016; Liu et
  al., "Generic Perceptual Loss for Modeling Structured Output Dependencies", CVPR 2021), and the
  L1 pyramid anchors colours, which random features weigh poorly. A one-time message says which
  is in use; ``VGG19Features.pretrained`` tells it too.
- The face-identity and gaze terms are hooks: pass any callable ``image -> tensor or list of
  tensors`` (e.g. a VGGFace or gaze network you have) and its features are compared with L1. Not
  provided -> the term is disabled, said once.

Images are (N, 3, H, W) RGB in [0, 1].
"""
from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

FeatureExtractor = Callable[[torch.Tensor], "torch.Tensor | Sequence[torch.Tensor]"]

# torchvision's configuration "E" (VGG19): channels, "M" = 2x2 max-pool.
VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                512, 512, 512, 512, "M", 512, 512, 512, 512, "M")
# Indices in vgg19().features of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1.
VGG19_LAYERS = (1, 6, 11, 20, 29)
# pix2pixHD's weights for those layers: deeper layers are smaller and count more.
VGG19_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_VGG_SEED = 20160530

_announced: set[str] = set()


def _announce_once(key: str, message: str) -> None:
    if key not in _announced:
        _announced.add(key)
        logger.warning(message)


def vgg19_feature_stack(last_index: int = max(VGG19_LAYERS)) -> nn.Sequential:
    """``torchvision.models.vgg19().features[: last_index + 1]``, same modules and indices."""
    layers: list[nn.Module] = []
    channels = 3
    for entry in VGG19_CONFIG:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, entry, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            channels = entry
    return nn.Sequential(*layers[: last_index + 1])


def find_imagenet_vgg19() -> Path | None:
    """The torchvision ImageNet VGG19 checkpoint in the torch hub cache, if someone put it there."""
    pattern = os.path.join(torch.hub.get_dir(), "checkpoints", "vgg19-*.pth")
    matches = sorted(glob.glob(pattern))
    return Path(matches[0]) if matches else None


class VGG19Features(nn.Module):
    """Frozen VGG19 returning the activations at :data:`VGG19_LAYERS`.

    ``weights``: ``"auto"`` (ImageNet checkpoint if found, else fixed random), ``"imagenet"``
    (must be found), ``"random"``, or a path to a torchvision-format state dict.
    """

    def __init__(self, weights: str | os.PathLike = "auto", layers: Sequence[int] = VGG19_LAYERS):
        super().__init__()
        self.layers = tuple(layers)
        self.features = vgg19_feature_stack(max(self.layers))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        checkpoint = self._resolve(weights)
        if checkpoint is None:
            self._init_random()
            self.pretrained, self.source = False, f"random (seed {RANDOM_VGG_SEED})"
        else:
            self._load(checkpoint)
            self.pretrained, self.source = True, str(checkpoint)
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def _resolve(weights) -> Path | None:
        if weights == "random":
            return None
        if weights in ("auto", "imagenet"):
            found = find_imagenet_vgg19()
            if found is None and weights == "imagenet":
                raise FileNotFoundError(
                    "ImageNet VGG19 weights not found: put torchvision's vgg19-*.pth in "
                    f"{os.path.join(torch.hub.get_dir(), 'checkpoints')} or use weights='random'")
            if found is None:
                _announce_once("vgg19", "perceptual loss: no ImageNet VGG19 checkpoint in "
                               f"{os.path.join(torch.hub.get_dir(), 'checkpoints')}; using a fixed "
                               "random-weight VGG19 plus multi-scale L1 (see losses/perceptual.py)")
            return found
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"VGG19 weights file {path} does not exist")
        return path

    def _init_random(self) -> None:
        generator = torch.Generator().manual_seed(RANDOM_VGG_SEED)
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
                with torch.no_grad():
                    module.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=generator)
                    module.bias.zero_()

    def _load(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        wanted = {f"{index}.{name}" for index, module in enumerate(self.features)
                  if isinstance(module, nn.Conv2d) for name in ("weight", "bias")}
        features = {key[len("features."):]: value for key, value in state.items()
                    if key.startswith("features.") and key[len("features."):] in wanted}
        missing = wanted - features.keys()
        if missing:
            raise ValueError(f"{path} is not a torchvision VGG19 state dict: missing features.{sorted(missing)[0]}")
        self.features.load_state_dict(features)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = (image - self.mean) / self.std
        outputs = []
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self.layers:
                outputs.append(x)
        return outputs


def multiscale_l1(prediction: torch.Tensor, target: torch.Tensor, scales: int = 4) -> torch.Tensor:
    """Mean L1 over an average-pooled pyramid (full, 1/2, 1/4, 1/8 resolution)."""
    total = F.l1_loss(prediction, target)
    for _ in range(scales - 1):
        if min(prediction.shape[-2:]) < 2:
            break
        prediction, target = F.avg_pool2d(prediction, 2), F.avg_pool2d(target, 2)
        total = total + F.l1_loss(prediction, target)
    return total / scales


def feature_l1(prediction_features, target_features, weights: Sequence[float] | None = None) -> torch.Tensor:
    """Weighted sum of mean L1 distances between matching feature tensors; targets are detached."""
    if isinstance(prediction_features, torch.Tensor):
        prediction_features, target_features = [prediction_features], [target_features]
    weights = weights if weights is not None else [1.0] * len(prediction_features)
    return sum(w * F.l1_loss(p, t.detach()) for w, p, t in zip(weights, prediction_features, target_features))


class PerceptualLoss(nn.Module):
    """Unweighted perceptual terms ``{"perceptual", "face", "gaze"}`` (present ones only).

    The paper's lambdas are applied by :func:`megaportraits_export.losses.combine_losses`.
    """

    def __init__(
        self,
        vgg_weights: str | os.PathLike = "auto",
        face_features: FeatureExtractor | None = None,
        gaze_features: FeatureExtractor | None = None,
    ):
        super().__init__()
        self.vgg = VGG19Features(vgg_weights)
        self.face_features = face_features
        self.gaze_features = gaze_features
        if face_features is None:
            _announce_once("face", "perceptual loss: no face-identity network given "
                           "(face_features=...); the face term (lambda_face) is disabled")
        if gaze_features is None:
            _announce_once("gaze", "perceptual loss: no gaze network given "
                           "(gaze_features=...); the gaze term (lambda_gaze) is disabled")

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            target_vgg = self.vgg(target)
        terms = {"perceptual": feature_l1(self.vgg(prediction), target_vgg, VGG19_LAYER_WEIGHTS)}
        if not self.vgg.pretrained:
            terms["perceptual"] = terms["perceptual"] + multiscale_l1(prediction, target)
        for name, extractor in (("face", self.face_features), ("gaze", self.gaze_features)):
            if extractor is not None:
                with torch.no_grad():
                    target_features = extractor(target)
                terms[name] = feature_l1(extractor(prediction), target_features)
        return terms
