"""``python -m megaportraits_export distill --teacher BUNDLE --avatar NAME=IMAGE [--avatar ...]
[--drivers VIDEO_OR_DIR ...] -o OUT``: distil a real-time student of the given avatars.

OUT is the run's directory: ``targets/`` (the teacher's renderings, made once), the checkpoint
(``student_checkpoint.pt``, written every --save-every steps), ``tensorboard/``, and at the end
the student bundle ``OUT/bundle`` that ``megaportraits animate --bundle OUT/bundle NAME ...``
runs. Run the same command again to resume an interrupted run where its checkpoint left off
(more --steps continue a finished one). Under ``torchrun`` each process trains on its share of
every batch.
"""
from __future__ import annotations

import sys
from pathlib import Path

from megaportraits_export import command

DEFAULT_FRAMES = 256


def build_parser():
    parser = command.parser("distill", "distil a real-time student of some avatars from a teacher bundle")
    parser.add_argument("--teacher", required=True, help="the teacher bundle directory (any bundle the SDK runs)")
    parser.add_argument("--avatar", action="append", required=True, metavar="NAME=IMAGE",
                        help="an avatar: its name and source photo (repeat for more avatars)")
    parser.add_argument("--drivers", action="append", default=[], metavar="VIDEO_OR_DIR",
                        help="driver videos or image folders (default: the project's synthetic talking heads)")
    parser.add_argument("-o", "--output", required=True, help="the run directory (the bundle goes to OUT/bundle)")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help=f"driver frames (default {DEFAULT_FRAMES})")
    parser.add_argument("--steps", type=int, default=2000, help="training steps in all (default 2000)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--lr", type=float, default=2e-4, help="learning rate of the shared weights")
    parser.add_argument("--perceptual-weight", type=float, default=1.0, help="VGG19 term weight (0: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads for the teacher")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--precision", default="fp32", metavar="fp32[,int8][,fp16]",
                        help="the precisions the student graph is carried in, fp32 first (int8 is calibrated on "
                             "synthetic heads as driver crops; the SDK's auto picks it on the CPU: the demo "
                             "student's int8 measured 2.75x its fp32, 1 thread)")
    return parser


def parse_avatars(specs: list) -> list:
    """``NAME=IMAGE`` strings -> [(name, path)], names distinct, files present."""
    avatars, names = [], set()
    for spec in specs:
        name, sep, image = spec.partition("=")
        if not sep or not name or not image:
            raise command.CommandError(f"--avatar {spec!r} is not NAME=IMAGE (e.g. --avatar ann=ann.jpg)")
        if name in names:
            raise command.CommandError(f"--avatar names {name!r} twice; give each avatar its own name")
        if not Path(image).is_file():
            raise command.CommandError(f"--avatar {name}: {image!r} is not a file; give the avatar's photo")
        names.add(name)
        avatars.append((name, image))
    return avatars


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag in ("frames", "steps", "batch", "save_every", "log_every"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    return command.run(_distill, args)


def _distill(args) -> int:
    import torch

    from megaportraits_export.distill.graph import StudentAvatar, write_student_bundle
    from megaportraits_export.distill.targets import TeacherRenderer, build_targets, synthetic_drivers, user_drivers
    from megaportraits_export.distill.trainer import DistillOptions, distill
    from megaportraits_export.student_config import for_teacher

    from megaportraits_export.onnx_export.add_precision import check_fp32_first
    from megaportraits_export.onnx_export.precision import parse_precisions

    precisions = parse_precisions(args.precision)
    check_fp32_first(precisions)
    avatars = parse_avatars(args.avatar)
    for path in args.drivers:
        if not Path(path).exists():
            raise command.CommandError(f"--drivers {path!r} does not exist; give a video file or a folder of images")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise command.CommandError(f"--output {out} is a file; give a directory for the run")
    renderer = TeacherRenderer(args.teacher, threads=args.threads)
    try:
        config = for_teacher(renderer.manifest.preset, renderer.image_size)
    except ValueError as e:
        raise command.CommandError(str(e)) from None
    config = config.replace(num_avatars=len(avatars), matte=renderer.has_matte)
    prepared = [renderer.avatar(image) for _, image in avatars]
    size = renderer.image_size
    drivers = (user_drivers(args.drivers, args.frames, size) if args.drivers
               else synthetic_drivers(args.frames, size, seed=args.seed))
    print(f"distill: {len(avatars)} avatar(s) x {len(drivers)} driver frames, student preset {config.name}",
          file=sys.stderr, flush=True)
    targets = build_targets(renderer, [a for a, _ in prepared], drivers, out / "targets")
    options = DistillOptions(steps=args.steps, batch=args.batch, lr=args.lr, perceptual_weight=args.perceptual_weight,
                             seed=args.seed, save_every=args.save_every, log_every=args.log_every)
    try:
        student = distill(config, targets, out, options, device=args.device)
    except ValueError as e:
        raise command.CommandError(str(e)) from None
    if int(torch.distributed.get_rank() if torch.distributed.is_initialized() else 0) != 0:
        return 0
    entries = []
    for (name, _), (avatar, backdrop) in zip(avatars, prepared):
        crop = (avatar.crop.x, avatar.crop.y, avatar.crop.side)
        plate = None if backdrop is None else (backdrop.transpose(1, 2, 0) * 255 + 0.5).clip(0, 255).astype("uint8")
        entries.append(StudentAvatar(name, avatar.image, crop, plate))
    teacher_dir = renderer.animator.bundle.directory
    bundle = write_student_bundle(student.cpu().eval(), entries, Path(teacher_dir), out / "bundle",
                                  provenance={"distilled_from": renderer.manifest.model_name, "steps": args.steps,
                                              "driver_frames": len(drivers),
                                              "drivers": "user" if args.drivers else "synthetic"},
                                  teacher=targets.teacher, precisions=precisions)
    print(f"distill: wrote the student bundle {bundle} (teacher manifest {targets.teacher['manifest_sha256'][:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
