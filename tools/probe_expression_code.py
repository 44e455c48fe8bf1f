#!/usr/bin/env python3
"""Does the expression code carry the expression? A ridge regression from z to the parameters.

    python tools/probe_expression_code.py CKPT [more checkpoints] [--images 600]

Why: the expression gain (``expression-eval``) needs a code that says what the driver's face
does, and a renderer that draws it; when the gain is near zero, this tells the two apart. Held-out
synthetic heads with random poses and expressions go through each checkpoint's driver branch
(head pose, then the expression encoder on the aligned crop); a ridge regression from the code to
the six parameters the renderer obeys (mouth opening, smile, eye closure, brow raise, gaze x / y)
is fitted on three quarters of them and scored on the rest: R^2 per parameter, 1 for a code that
holds it exactly, 0 (or below) for a code that holds nothing of it. The shipped demo model's code
scores about 0 on all six. The regression reads the whole code, so it applies to any model,
trained with the ``expression_labels`` term or not.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

RIDGE = 1.0   # on codes of unit-ish scale; the figures move in the third decimal from 0.01 to 1


def held_out_heads(count: int, size: int, seed: int = 0):
    """(images (N, S, S, 3) uint8, expression parameters (N, 6)), deterministic in ``seed``."""
    from megaportraits_export.data import synthetic

    rng = np.random.default_rng([0xC0DE, seed])
    images, parameters = [], []
    for identity_seed in synthetic.identity_seeds("eval", count):
        identity = synthetic.Identity.sample(identity_seed)
        motion = synthetic.HeadMotion.random(rng)
        images.append(synthetic.render(identity, motion.pose, motion.expression, size))
        parameters.append(motion.expression.as_array())
    return np.stack(images), np.stack(parameters)


def codes(model, images: np.ndarray) -> np.ndarray:
    import torch

    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return np.concatenate([model.driver_branch(batch[i:i + 50]).expression.double().numpy()
                               for i in range(0, len(batch), 50)])


def ridge_r2(code: np.ndarray, parameters: np.ndarray, fit: int) -> np.ndarray:
    """R^2 per parameter on rows ``fit:`` of a ridge regression fitted on rows ``:fit``."""
    design = np.c_[code, np.ones(len(code))]
    penalty = RIDGE * np.eye(design.shape[1])
    penalty[-1, -1] = 0.0                                   # the intercept is not shrunk
    weights = np.linalg.solve(design[:fit].T @ design[:fit] + penalty, design[:fit].T @ parameters[:fit])
    residual = design[fit:] @ weights - parameters[fit:]
    spread = parameters[fit:] - parameters[fit:].mean(axis=0)
    return 1.0 - (residual ** 2).sum(axis=0) / (spread ** 2).sum(axis=0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT", help="model_*.pt or state_*.pt files")
    parser.add_argument("--images", type=int, default=600, help="held-out heads (default 600; a quarter scores)")
    args = parser.parse_args(argv)
    missing = [c for c in args.checkpoints if not Path(c).is_file()]
    if missing:
        print(f"error: no checkpoint at {missing[0]}", file=sys.stderr)
        return 1
    if args.images < 40:
        print("error: --images must be at least 40 (a quarter of them score the fit)", file=sys.stderr)
        return 1
    import torch

    from megaportraits_export.checkpoint import CheckpointError, load_model_from_checkpoint
    from megaportraits_export.data.synthetic.parameters import EXPRESSION_PARAMETER_NAMES

    torch.set_num_threads(1)
    try:
        models = [load_model_from_checkpoint(checkpoint)[:2] for checkpoint in args.checkpoints]
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    fit = args.images * 3 // 4
    by_size: dict = {}
    print(f"R^2 of a ridge regression from the expression code to each parameter ({fit} held-out heads fit, "
          f"{args.images - fit} score)")
    print("  " + " ".join(f"{name:>11}" for name in EXPRESSION_PARAMETER_NAMES) + "  checkpoint")
    for checkpoint, (model, config) in zip(args.checkpoints, models):
        if config.image_size not in by_size:
            by_size[config.image_size] = held_out_heads(args.images, config.image_size)
        images, parameters = by_size[config.image_size]
        r2 = ridge_r2(codes(model.eval(), images), parameters.astype(np.float64), fit)
        print("  " + " ".join(f"{value:11.3f}" for value in r2) + f"  {checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
