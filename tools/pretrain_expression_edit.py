#!/usr/bin/env python3
"""Teach a model's expression edit alone, before the main stage: cheap steps on its own target.

    python tools/pretrain_expression_edit.py INIT_CKPT -o OUT.pt [--preset demo128_wse] [--steps 4000]

Why: the expression edit (networks/expression_edit.py) has a target of its own in every training
pair, the source drawn with the driver's expression (``ExpressionPairHeads``' ``source_edit_target``),
and needs none of the rest of the model to reach it: the expression encoder (both codes, frozen)
and the small U-Net are a fraction of a main-stage step (measured on one core: 0.2 s a step
against 1.1 s), so most of its learning is done here, and the main stage starts from an edit that
already redraws eyes, brows and mouth. The loss is the ``expression_edit`` term (pyramid L1 over 4
levels plus the L1 on the pixels the expression changes). ``INIT_CKPT`` initialises the model
(``init_from`` semantics: a model without the edit gets a new one); ``OUT`` is a model checkpoint
for a main stage's ``init_from``. Deterministic in ``--seed``. Ctrl-C or SIGTERM writes what the
steps so far have learned, then exits 130.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("init", metavar="INIT_CKPT", help="model_*.pt to start from")
    parser.add_argument("-o", "--output", required=True, help="the model checkpoint to write")
    parser.add_argument("--preset", default="demo128_wse", help="a preset with the expression edit")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    output = Path(args.output)
    if not Path(args.init).is_file():
        print(f"error: no checkpoint at {args.init}", file=sys.stderr)
        return 1
    if output.resolve() == Path(args.init).resolve():
        print("error: the output would overwrite the initial checkpoint; give another -o", file=sys.stderr)
        return 1
    if args.steps < 1 or args.batch_size < 1 or args.lr <= 0:
        print("error: --steps and --batch-size must be at least 1 and --lr positive", file=sys.stderr)
        return 1
    import torch

    from megaportraits_export import checkpoint, losses
    from megaportraits_export.config import get_config
    from megaportraits_export.data.expression_pairs import ExpressionPairHeads
    from megaportraits_export.model import build_model

    try:
        config = get_config(args.preset)
    except (KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not config.expression_edit_channels:
        print(f"error: preset {args.preset} has no expression edit; use demo128_wse or tiny_wse", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = build_model(config)
    try:
        initialised = checkpoint.initialise_from_checkpoint(model, args.init)
    except checkpoint.CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    model.train()
    encoder, edit = model.driver_branch, model.generator.expression_edit
    encoder.requires_grad_(False)
    optimizer = torch.optim.AdamW(edit.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps, eta_min=args.lr * 0.01)
    pairs = ExpressionPairHeads(num_identities=5000, size=config.image_size, seed=args.seed, split="train",
                                strong_fraction=1.0, length=args.steps * args.batch_size)
    loader = torch.utils.data.DataLoader(pairs, batch_size=args.batch_size, shuffle=False)
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append("SIGTERM"))
    bar = None
    if not args.no_progress:
        from tqdm import tqdm
        bar = tqdm(total=args.steps, desc="expression edit", dynamic_ncols=True)
    step, started, recent = 0, time.time(), []
    try:
        for batch in loader:
            if stopped:
                break
            with torch.no_grad():
                change = encoder(batch["driver"]).expression - encoder(batch["source"]).expression
            edited = edit(batch["source"], change)
            target = batch["source_edit_target"]
            loss = (losses.multiscale_l1(edited, target, scales=4)
                    + losses.region_l1(edited, target, batch["source_edit_region"]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            recent = (recent + [float(loss.detach())])[-50:]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
    except KeyboardInterrupt:
        stopped.append("Ctrl-C")
    finally:
        if bar is not None:
            bar.close()
    provenance = {"expression_edit_pretraining": {"steps": step, "batch_size": args.batch_size, "lr": args.lr,
                                                  "seed": args.seed, "final_loss": sum(recent) / max(len(recent), 1),
                                                  "seconds": round(time.time() - started, 1)},
                  "initialised_from": {k: initialised[k] for k in ("checkpoint", "sha256", "provenance")}}
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    checkpoint.save_checkpoint(partial, model.eval(), config, args.preset, provenance)
    partial.replace(output)
    print(f"wrote {output}: {step} steps in {time.time() - started:.0f} s, loss {provenance['expression_edit_pretraining']['final_loss']:.4f}"
          + (f" (stopped by {stopped[0]})" if stopped else ""))
    return 130 if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
