#!/usr/bin/env python3
"""A picture of the expression path: the first pairs of the expression evaluation, side by side.

    python tools/expression_grid.py --checkpoint runs/demo128_expression/model_last.pt -o grid.png
    python tools/expression_grid.py --bundle sdk/megaportraits/assets/demo_bundle -o grid.png --pairs 8

Why: the expression evaluation (``python -m megaportraits_export expression-eval``) says in
decibels whether the driver's expression reaches the output; this shows it. One row per pair
(the kinds cycle: open mouth, closed eyes, raised brows, smile), columns: source (neutral),
driver (another person, strong expression), the model with the driver's expression code, the
model with the source's own code, the truth, and the region where the expression shows.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", metavar="CKPT")
    what.add_argument("--bundle", metavar="DIR")
    parser.add_argument("-o", "--output", required=True, type=Path, help="the PNG to write")
    parser.add_argument("--pairs", type=int, default=8, help="rows (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="the evaluation's seed (default 0: its first pairs)")
    args = parser.parse_args(argv)
    if args.output.suffix.lower() != ".png":
        print(f"error: the output must be a .png file, not {args.output}", file=sys.stderr)
        return 1
    if args.pairs < 1:
        print("error: --pairs must be at least 1", file=sys.stderr)
        return 1
    import torch

    from megaportraits_export import expression_eval
    from megaportraits_export.training.logs import image_grid, save_png

    torch.set_num_threads(1)
    if args.checkpoint:
        from megaportraits_export.checkpoint import CheckpointError, load_model_from_checkpoint

        try:
            model, _, _ = load_model_from_checkpoint(args.checkpoint)
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        reenactor = expression_eval.CheckpointExpressionReenactor(model)
    else:
        reenactor = expression_eval.BundleExpressionReenactor(args.bundle)
    pairs = expression_eval.expression_pairs(args.pairs, reenactor.image_size, seed=args.seed,
                                             identities=expression_eval.DEFAULT_IDENTITIES)
    rendered = reenactor.reenact_codes(pairs.source, pairs.driver, pairs.reference)
    columns = [pairs.source, pairs.driver, rendered["driver_code"], rendered["source_code"], pairs.target,
               pairs.region.expand(-1, 3, -1, -1)]
    save_png(image_grid(columns), args.output)
    print(f"wrote {args.output}: {args.pairs} pairs; columns: source, driver, driver's code, source's code, "
          "truth, expression region")
    return 0


if __name__ == "__main__":
    sys.exit(main())
