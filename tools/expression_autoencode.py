#!/usr/bin/env python3
"""Can the model render a face's features at all? Each held-out head driven by its own image.

    python tools/expression_autoencode.py runs/demo128_from_bundle/model_last.pt [more checkpoints] [--images 32]

Why: the expression evaluation (``expression-eval``) asks whether the driver's expression code
moves the eyes, brows and mouth; when it does not, the question before it is whether the
renderer can show them in the first place. Here the source is also the driver (no motion, no
expression change: the easiest reenactment there is), and the rendering is scored on the face
features of that image (eyes, brows, mouth, nose, glasses;
:func:`~megaportraits_export.data.expression_pairs.face_feature_region`) and on the whole image.
A model that renders features scores high on them; a model that renders a smooth face scores
what a blur of the face would. Beside it, Gaussian blurs of the image (sigma 1, 2 and 4 px at
128 px, scaled) on the same pixels: a model at or below those lines is not rendering the features.
Prints one line per checkpoint.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np


def held_out_heads(count: int, size: int, seed: int = 0):
    """(images (N, S, S, 3) uint8, feature regions (N, S, S) bool): held-out identities with
    random poses and expressions, deterministic in ``seed``."""
    from megaportraits_export.data import synthetic
    from megaportraits_export.data.expression_pairs import face_feature_region

    rng = np.random.default_rng([0xAE70, seed])
    images, regions = [], []
    for identity_seed in synthetic.identity_seeds("eval", count):
        identity = synthetic.Identity.sample(identity_seed)
        motion = synthetic.HeadMotion.random(rng)
        image = synthetic.render(identity, motion.pose, motion.expression, size)
        images.append(image)
        regions.append(face_feature_region(identity, motion.pose, motion.expression, size, image))
    return np.stack(images), np.stack(regions)


def psnr_on(prediction: np.ndarray, target: np.ndarray, region: np.ndarray | None = None) -> float:
    """Mean over images of 10 log10(1 / mse) on ``region`` (all pixels when None), [0, 1] scale."""
    values = []
    for index in range(len(target)):
        error = (prediction[index].astype(np.float64) - target[index].astype(np.float64)) / 255.0
        error = error if region is None else error[region[index]]
        values.append(10 * np.log10(1.0 / max(float(np.mean(error ** 2)), 1e-10)))
    return float(np.mean(values))


def self_renderings(model, images: np.ndarray) -> np.ndarray:
    """The model's rendering of each image driven by itself, composited over the image (whose
    backdrop is the true one) for a matte model; uint8 like ``images``."""
    import torch

    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    outputs = []
    with torch.no_grad():
        for start in range(0, len(batch), 8):
            chunk = batch[start:start + 8]
            out = model(chunk, chunk)
            image = out["image"] if out["matte"] is None else out["matte"] * out["image"] + (1 - out["matte"]) * chunk
            outputs.append(image.clamp(0, 1))
    return (torch.cat(outputs).permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT", help="model_*.pt or state_*.pt files")
    parser.add_argument("--images", type=int, default=32, help="held-out heads (default 32)")
    args = parser.parse_args(argv)
    missing = [c for c in args.checkpoints if not Path(c).is_file()]
    if missing:
        print(f"error: no checkpoint at {missing[0]}", file=sys.stderr)
        return 1
    if args.images < 1:
        print("error: --images must be at least 1", file=sys.stderr)
        return 1
    import torch

    from megaportraits_export.checkpoint import CheckpointError, load_model_from_checkpoint

    torch.set_num_threads(1)
    try:
        models = [load_model_from_checkpoint(checkpoint)[:2] for checkpoint in args.checkpoints]
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    sizes = {config.image_size for _, config in models}
    if len(sizes) != 1:
        print(f"error: the checkpoints render different sizes ({sorted(sizes)}); compare one size at a time",
              file=sys.stderr)
        return 1
    size = sizes.pop()
    images, regions = held_out_heads(args.images, size)
    print(f"{args.images} held-out heads at {size} px, each driven by itself; PSNR (dB) on the face features "
          f"({regions.mean() * 100:.1f} % of the pixels) / the whole image")
    for sigma in (1.0 * size / 128, 2.0 * size / 128, 4.0 * size / 128):
        blurred = np.stack([cv2.GaussianBlur(image, (0, 0), sigma) for image in images])
        print(f"  Gaussian blur, sigma {sigma:g} px: {psnr_on(blurred, images, regions):.2f} / "
              f"{psnr_on(blurred, images):.2f}")
    for checkpoint, (model, _) in zip(args.checkpoints, models):
        rendered = self_renderings(model, images)
        print(f"  {checkpoint}: {psnr_on(rendered, images, regions):.2f} / {psnr_on(rendered, images):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
