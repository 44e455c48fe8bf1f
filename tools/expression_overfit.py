#!/usr/bin/env python3
"""Can a model carry the driver's expression at all? Fine-tune it on two fixed pairs and watch.

    python tools/expression_overfit.py runs/demo128_from_bundle/model_last.pt --steps 200 -o overfit.png

Why: when a model renders every face as a blur, more data and steps (the real fix) cost hours;
this asks in minutes whether the architecture can render the features and move them with the
expression code once the signal is strong: two self-reenactment pairs of ExpressionPairHeads
(neutral source, strong driver), the stage 3 loss (foreground pyramid L1 + the expression-region
term + the matte), the head-pose regressor frozen. Every 50 steps it prints, per pair, the region
PSNR of the driver's expression code and of the source's own code (the expression evaluation's
two renderings, here in self-reenactment); the PNG shows source, driver, the model's driver-code
rendering before and after, and the source-code rendering after (raw, not composited).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("-o", "--output", type=Path, help="a PNG of the renderings before and after")
    args = parser.parse_args(argv)
    if args.steps < 1:
        print("error: --steps must be at least 1", file=sys.stderr)
        return 1
    import torch

    from megaportraits_export.checkpoint import CheckpointError, load_model_from_checkpoint
    from megaportraits_export.data.expression_pairs import ExpressionPairHeads
    from megaportraits_export.expression_eval import region_psnr
    from megaportraits_export.losses import multiscale_l1, region_l1
    from megaportraits_export.model import split_matte
    from megaportraits_export.training.data_stream import collate_items
    from megaportraits_export.training.logs import image_grid, save_png

    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        model, _, _ = load_model_from_checkpoint(args.checkpoint)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    model.train()
    if not model.config.matte:
        print("error: this check trains the matte model's loss; give a matte checkpoint (demo128)", file=sys.stderr)
        return 1
    pairs = ExpressionPairHeads(100, model.config.image_size, seed=9, strong_fraction=1.0)
    batch = collate_items([pairs[0], pairs[1]])
    model.driver_branch.head_pose.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)

    @torch.no_grad()
    def renderings():
        avatar = model.source_branch(batch["source"])
        motion = model.driver_branch(batch["driver"])
        driver_code, source_code = (split_matte(model.generator(avatar.canonical_volume, avatar.global_descriptor,
                                                                motion.pose, z))[0].clamp(0, 1)
                                    for z in (motion.expression, avatar.expression))
        scores = [region_psnr(r, batch["driver"], batch["driver_expression_region"]).tolist()
                  for r in (driver_code, source_code)]
        return driver_code, source_code, scores

    def report(step, scores, started):
        cells = ", ".join(f"pair {n}: {d:.2f} / {s:.2f} ({d - s:+.2f})" for n, (d, s) in enumerate(zip(*scores)))
        print(f"step {step:4d} ({time.monotonic() - started:5.0f} s) region PSNR driver's / source's code: {cells}",
              flush=True)

    started = time.monotonic()
    before, _, scores = renderings()
    report(0, scores, started)
    foreground, region = batch["driver_mask"], batch["driver_expression_region"]
    for step in range(1, args.steps + 1):
        out = model(batch["source"], batch["driver"])
        prediction, target = out["image"] * foreground, batch["driver"] * foreground
        loss = (multiscale_l1(prediction, target, 4) + region_l1(prediction, target, region)
                + multiscale_l1(out["matte"], foreground, 4))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == args.steps:
            after, own, scores = renderings()
            report(step, scores, started)
    if args.output:
        save_png(image_grid([batch["source"], batch["driver"], before, after, own]), args.output)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
