#!/usr/bin/env python3
"""What the source's own expression field costs each frame in the source-pixel path.

    python tools/probe_source_field_cost.py checkpoints/demo128_ws/trial_tp7_model_4000.pt [--threads 2] [--runs 30]

Why: the source-pixel path (networks/source_pixels.py) moves a pixel by M(m_d) - M(m_s), and
M(m_s), the field of the avatar's own motion, is the same for every frame of an avatar; the
generator still computes it per frame. This times it (PyTorch eager, batch 1, median of --runs
after 5 warm-up calls) beside the generator's whole frame, to say what moving it into the avatar
(the source graph's outputs) would save.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path


def _median_ms(call, runs: int) -> float:
    for _ in range(5):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def _probe(args) -> int:
    import torch

    from megaportraits.benchmark.machine import machine_info
    from megaportraits_export.checkpoint import load_model_from_checkpoint
    from megaportraits_export.networks.source_pixels import SourcePixelWarp

    torch.set_num_threads(args.threads)
    model = load_model_from_checkpoint(args.checkpoint)[0].eval()
    paths = [m for m in model.modules() if isinstance(m, SourcePixelWarp)]
    if not paths:
        print(f"error: {args.checkpoint} has no source-pixel path (presets demo128_ws*, tiny_ws*)", file=sys.stderr)
        return 1
    path, size = paths[0], model.config.image_size
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        avatar = model.source_branch(torch.rand(1, 3, size, size, generator=generator))
        motion = tuple(model.driver_branch(torch.rand(1, 3, size, size, generator=generator)))
        field = _median_ms(lambda: path.expression_motion(path.motion_code(avatar.pose, avatar.expression),
                                                          avatar.global_descriptor), args.runs)
        frame = _median_ms(lambda: model.generator(avatar.canonical_volume, avatar.global_descriptor, *motion,
                                                   *avatar.source_pixels), args.runs)
    info = machine_info()
    print(f"{info.get('cpu_model')}, torch {torch.__version__}, {args.threads} thread(s), batch 1, "
          f"median of {args.runs}")
    print(f"M(m_s), the avatar's own field: {field:.2f} ms of the generator's {frame:.2f} ms a frame "
          f"({100 * field / frame:.1f} %)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a model checkpoint with the source-pixel path")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.runs < 1:
        parser.error("--threads and --runs must be at least 1")
    if not Path(args.checkpoint).is_file():
        print(f"error: no checkpoint at {args.checkpoint}", file=sys.stderr)
        return 1
    from megaportraits_export import command

    return command.run(_probe, args)


if __name__ == "__main__":
    sys.exit(main())
