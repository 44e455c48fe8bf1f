"""``python -m megaportraits_export export``: the command line of the exporter (conventions of
:mod:`megaportraits_export.command`: one error line, exit 1; usage errors exit 2)."""
from __future__ import annotations

import logging
import time

from megaportraits_export import command
from megaportraits_export.onnx_export.errors import ExportError
from megaportraits_export.onnx_export.precision import CALIBRATION_FRAMES, PRECISIONS, calibration_frames_from
from megaportraits_export.onnx_export.writing import export_bundle, export_random_init

log = logging.getLogger("megaportraits_export.onnx_export")


def build_parser() -> command.Parser:
    p = command.parser("export", "Export a checkpoint, or a randomly initialised preset, to an ONNX model bundle.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="CKPT", help="training checkpoint to export")
    source.add_argument("--preset", metavar="NAME", help="architecture preset (with --random-init)")
    p.add_argument("--random-init", action="store_true", help="export random weights (tests, benchmarks)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="bundle directory to write")
    p.add_argument("--portable", action="store_true",
                   help="standard ONNX ops only (no custom-op graphs) for runtimes without our library")
    p.add_argument("--external-weights", action="store_true",
                   help="keep each graph's weights in a .data file beside it, shared with its portable twin "
                        "(a default bundle then holds each weight once)")
    p.add_argument("--verify", action="store_true",
                   help="compare every graph with PyTorch in ONNX Runtime (batch 1 and 3) before writing")
    p.add_argument("--precision", type=_precisions, default=("fp32",), metavar="|".join(PRECISIONS) + "[,...]",
                   help="fp32 (default); int8: the per-frame graphs quantized for CPUs (static QDQ, "
                        "calibrated); fp16: the per-frame graphs in half precision for GPUs. Grids, pose "
                        "maths and normalisation statistics stay float32; the source graph stays fp32. "
                        "Several, e.g. fp32,int8,fp16: the bundle carries each (the first as its main files) "
                        "and the SDK picks by provider and its own --precision")
    p.add_argument("--calibration-frames", metavar="DIR",
                   help=f"int8: calibrate on up to {CALIBRATION_FRAMES} face images from DIR (cropped as the SDK "
                        "crops them) instead of the synthetic heads the demo models were trained on")
    return p


def _precisions(text: str) -> tuple:
    import argparse

    from megaportraits_export.onnx_export.precision import parse_precisions

    try:
        return parse_precisions(text)
    except ExportError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.preset and not args.random_init:
        parser.error("--preset exports an untrained architecture; add --random-init to confirm, "
                     "or give --checkpoint CKPT")
    if args.random_init and not args.preset:
        parser.error("--random-init needs --preset NAME")
    if args.calibration_frames and "int8" not in args.precision:
        parser.error("--calibration-frames calibrates int8 quantization; add --precision int8")
    return command.run(_export, args)


def _export(args) -> int:
    if not log.handlers:
        log.addHandler(logging.StreamHandler())
        log.setLevel(logging.INFO)
    started = time.perf_counter()
    if args.checkpoint:
        from megaportraits_export.checkpoint import load_model_from_checkpoint

        model, config, provenance = load_model_from_checkpoint(args.checkpoint)
        out = export_bundle(model, config, args.output, preset=provenance["preset"],
                            provenance=provenance, portable=args.portable, verify=args.verify,
                            external_weights=args.external_weights, precision=",".join(args.precision),
                            calibration_frames=_calibration_frames(args, config.image_size))
    else:
        from megaportraits_export.config import PRESETS

        if args.preset not in PRESETS:
            raise command.CommandError(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
        out = export_random_init(args.preset, args.seed, args.output, portable=args.portable,
                                 verify=args.verify, external_weights=args.external_weights,
                                 precision=",".join(args.precision),
                                 calibration_frames=_calibration_frames(args, PRESETS[args.preset].image_size))
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({size / 2**20:.1f} MiB, {time.perf_counter() - started:.0f} s)")
    return 0


def _calibration_frames(args, image_size: int):
    """The user's calibration frames, read before the slow export so a bad directory fails first."""
    return calibration_frames_from(args.calibration_frames, image_size) if args.calibration_frames else None
