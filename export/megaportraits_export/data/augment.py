"""The paper's training augmentations for a (source, driver) pair.

MegaPortraits augments with colour jitter and flips, and gives the driver a random thin-plate-
spline warp and strong colour jitter (the paper, arXiv 2207.07621). Why each, and to which image:

- Flip: source and driver together. A pair is one head in two frames of one video; flipping
  only one would make the motion to transfer a mirror image, which no real video contains.
- Mild colour jitter: the same parameters for source and driver, so the model never has to
  invent a colour shift it cannot see in the source; different pairs get different jitter.
- Thin-plate-spline warp + strong colour jitter: only on ``driver_input``, the copy the motion
  encoders read. Face shape and colours of the driver then carry no reliable identity signal,
  so appearance cannot leak through the motion code. The reconstruction target stays the
  un-warped ``driver``.

Images are float32 tensors (3, H, W) in [0, 1]; randomness comes from a numpy Generator so a
dataset item is reproducible from its seed.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

# RGB -> YIQ: hue is a rotation of the (I, Q) chroma plane.
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_LUMA = _RGB_TO_YIQ[0]


@dataclasses.dataclass(frozen=True)
class ColourJitter:
    """Ranges of random colour changes: factors drawn from [1 - x, 1 + x]; hue as a fraction of
    a full turn drawn from [-hue, hue]."""

    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02

    def sample(self, rng: np.random.Generator) -> tuple[float, float, float, float]:
        return (float(rng.uniform(1 - self.brightness, 1 + self.brightness)),
                float(rng.uniform(1 - self.contrast, 1 + self.contrast)),
                float(rng.uniform(1 - self.saturation, 1 + self.saturation)),
                float(rng.uniform(-self.hue, self.hue)))


STRONG_COLOUR_JITTER = ColourJitter(brightness=0.4, contrast=0.4, saturation=0.5, hue=0.1)


def adjust_colour(image: torch.Tensor, brightness: float, contrast: float, saturation: float,
                  hue: float) -> torch.Tensor:
    """Brightness, contrast (about the mean grey), saturation (about the pixel's grey) and hue
    (rotation of the YIQ chroma plane by ``hue`` turns), clamped to [0, 1]."""
    image = image * brightness
    grey = torch.einsum("c,chw->hw", _LUMA, image)
    image = (image - grey.mean()) * contrast + grey.mean()
    grey = torch.einsum("c,chw->hw", _LUMA, image)[None]
    image = grey + (image - grey) * saturation
    if hue:
        angle = 2 * math.pi * hue
        rotation = torch.tensor([[1.0, 0.0, 0.0],
                                 [0.0, math.cos(angle), -math.sin(angle)],
                                 [0.0, math.sin(angle), math.cos(angle)]])
        image = torch.einsum("dc,chw->dhw", _YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ, image)
    return image.clamp(0.0, 1.0)


def _tps_kernel(distance_squared: np.ndarray) -> np.ndarray:
    """U(r) = r^2 log r^2, with U(0) = 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(distance_squared > 0, distance_squared * np.log(distance_squared), 0.0)


def thin_plate_spline_grid(control: np.ndarray, displacement: np.ndarray, height: int, width: int,
                           resolution: int = 32) -> torch.Tensor:
    """Sampling grid (1, H, W, 2) of the thin-plate spline that moves each ``control`` point
    (K, 2), normalised (x, y), by ``displacement`` (K, 2) and interpolates smoothly between.

    The spline is evaluated on at most ``resolution`` x ``resolution`` pixel centres and the
    grid upsampled bilinearly: it is smooth, and this keeps the warp cheap at 512 px.
    """
    k = len(control)
    system = np.zeros((k + 3, k + 3))
    system[:k, :k] = _tps_kernel(((control[:, None] - control[None]) ** 2).sum(-1))
    system[:k, k:] = np.concatenate([np.ones((k, 1)), control], axis=1)
    system[k:, :k] = system[:k, k:].T
    rhs = np.zeros((k + 3, 2))
    rhs[:k] = displacement
    coefficients = np.linalg.solve(system, rhs)
    coarse_h, coarse_w = min(height, resolution), min(width, resolution)
    xs = (np.arange(coarse_w) * 2 + 1) / coarse_w - 1
    ys = (np.arange(coarse_h) * 2 + 1) / coarse_h - 1
    points = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    basis = np.concatenate([_tps_kernel(((points[:, None] - control[None]) ** 2).sum(-1)),
                            np.ones((len(points), 1)), points], axis=1)
    offsets = torch.from_numpy((basis @ coefficients).reshape(1, coarse_h, coarse_w, 2)).float()
    if (coarse_h, coarse_w) != (height, width):
        offsets = F.interpolate(offsets.permute(0, 3, 1, 2), size=(height, width), mode="bilinear",
                                align_corners=False).permute(0, 2, 3, 1)
    xs = (torch.arange(width) * 2 + 1) / width - 1
    ys = (torch.arange(height) * 2 + 1) / height - 1
    identity = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)[None]
    return identity + offsets


def random_thin_plate_spline_warp(image: torch.Tensor, rng: np.random.Generator, strength: float = 0.05,
                                  points_per_side: int = 4) -> torch.Tensor:
    """``image`` warped by a random thin-plate spline: a ``points_per_side``^2 grid of control
    points, each moved by a normal offset of deviation ``strength`` (normalised units)."""
    ticks = np.linspace(-0.8, 0.8, points_per_side)
    control = np.stack(np.meshgrid(ticks, ticks), axis=-1).reshape(-1, 2)
    displacement = rng.normal(0.0, strength, size=control.shape)
    grid = thin_plate_spline_grid(control, displacement, *image.shape[-2:])
    warped = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return warped[0]


class PairAugmentation:
    """Flip + shared colour jitter for (source, driver), then TPS + strong jitter for the
    driver's input copy. Returns ``(source, driver, driver_input, flipped)``."""

    def __init__(
        self,
        flip_probability: float = 0.5,
        colour: ColourJitter | None = ColourJitter(),
        driver_colour: ColourJitter | None = STRONG_COLOUR_JITTER,
        warp_strength: float = 0.05,
    ):
        self.flip_probability = flip_probability
        self.colour = colour
        self.driver_colour = driver_colour
        self.warp_strength = warp_strength

    def __call__(self, source: torch.Tensor, driver: torch.Tensor, rng: np.random.Generator):
        flipped = bool(rng.uniform() < self.flip_probability)
        if flipped:
            source, driver = source.flip(-1), driver.flip(-1)
        if self.colour is not None:
            parameters = self.colour.sample(rng)
            source, driver = adjust_colour(source, *parameters), adjust_colour(driver, *parameters)
        driver_input = driver
        if self.warp_strength > 0:
            driver_input = random_thin_plate_spline_warp(driver_input, rng, self.warp_strength)
        if self.driver_colour is not None:
            driver_input = adjust_colour(driver_input, *self.driver_colour.sample(rng))
        return source, driver, driver_input, flipped
