"""``python -m megaportraits_export train --config FILE [--resume STATE]``.

One command for one process or many: under ``torchrun --nproc_per_node N`` (any number of
nodes) every process runs this same entry point and joins the process group torchrun set up.

    python -m megaportraits_export train --config configs/demo128_synthetic.toml
    torchrun --nproc_per_node 2 -m megaportraits_export train --config configs/tiny_test.toml
    python -m megaportraits_export train --config configs/demo128_synthetic.toml \\
        --resume runs/demo128/state_last.pt

Outputs in ``[log] out_dir``: ``state_last.pt`` (everything for an exact resume),
``model_last.pt`` (weights + config + provenance, what ``export --checkpoint`` reads),
``tensorboard/`` event files and ``images/`` PNG grids of source / driver / prediction.
"""
from __future__ import annotations

import sys
from pathlib import Path

from . import command
from .training.config import load_config


def build_parser() -> command.Parser:
    parser = command.parser("train", "Train a MegaPortraits model from a TOML config.")
    parser.add_argument("--config", required=True, metavar="FILE", help="training config (TOML)")
    parser.add_argument("--resume", metavar="STATE",
                        help="continue exactly from a state_*.pt file; 'auto': the out_dir's "
                             "state_last.pt if it exists")
    parser.add_argument("--out-dir", metavar="DIR", help="override [log] out_dir")
    parser.add_argument("--steps", type=int, metavar="N", help="override [train] steps")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return parser


def main(argv=None) -> int:
    return command.run(_train, build_parser().parse_args(argv))


def _train(args) -> int:
    cfg = load_config(args.config)  # a ConfigError is the user's to fix: one line, exit 1
    if args.out_dir:
        cfg = cfg.replace("log", out_dir=args.out_dir)
    if args.steps is not None:
        cfg = cfg.replace("train", steps=args.steps)

    import torch

    from .training.distributed import setup, teardown
    from .training.trainer import Trainer

    if cfg.train.threads > 0:
        # On a shared CPU, more threads than free cores makes every op wait for the slowest
        # thread: one thread per process can be several times faster.
        torch.set_num_threads(cfg.train.threads)

    ctx = setup(cfg.train.device)
    try:
        resume = args.resume
        if resume == "auto":
            candidate = Path(cfg.log.out_dir) / "state_last.pt"
            resume = str(candidate) if candidate.is_file() else None
        if resume and not Path(resume).is_file():
            raise command.CommandError(f"resume state {resume!r} does not exist; give a state_*.pt file "
                                       "or --resume auto")
        try:
            # a resumed run takes its weights from the state: [model] init_from is not read again
            if cfg.enhancer.preset:  # G_enh on top of the frozen base model
                from .training.enhancement import EnhancerTrainer

                trainer = EnhancerTrainer(cfg, ctx, config_path=str(args.config), initialise=not resume)
            else:
                trainer = Trainer(cfg, ctx, config_path=str(args.config), initialise=not resume)
        except ValueError as e:  # a config the model or the data cannot take (CheckpointError: command.run)
            raise command.CommandError(str(e)) from None
        if resume:
            trainer.load(resume)
        trainer.run(progress=not args.no_progress and cfg.log.progress)
        if ctx.is_main:
            print(f"done: {getattr(trainer, 'pose_step', 0)} pose-pretraining steps, {trainer.step} main steps, "
                  f"{trainer.elapsed:.0f} s; checkpoints in {cfg.log.out_dir}")
    finally:
        teardown(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
