"""How faithful a student is: against its teacher on held-out drivers, and against ground truth.

``python -m megaportraits_export distill-fidelity --student BUNDLE --teacher BUNDLE
[--avatar NAME] [--frames 64] [--source-identity K] [--json OUT]``

1. **Student vs teacher** (the paper's distillation figure, PSNR 23.14): both render the avatar
   with the absolute motion of ``--frames`` driver crops that no part of the distillation saw:
   synthetic talking heads of *held-out* identities (seeds at or above the evaluation offset; the
   distillation's drivers are training identities) with fresh random motions. The student's
   ``image`` output is compared with the teacher's raw rendering (the distillation target: base
   model, enhancer off), both as uint8 frames: PSNR and SSIM (``megaportraits_export.metrics``),
   and the matte's L1 for matte students.
2. **Ground truth** (synthetic cross-reenactment, only when the avatar is a synthetic identity:
   ``--source-identity K``, the held-out identity the avatar's photo was rendered from, e.g. 107
   for the demo portrait): held-out identity B performs motion m, the target is the avatar's own
   identity performing m, rendered at the photo's size and cut at the avatar's crop (the framing
   the networks see). Teacher and student frames are composited onto the avatar's backdrop as the
   SDK shows them, and scored raw and on the person (the target's mask), side by side.

The teacher runs through the SDK (:class:`~megaportraits_export.distill.targets.TeacherRenderer`,
exactly as the targets were made), the student through ONNX Runtime on its bundle's graph.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from megaportraits_export import metrics

HELDOUT_SEED = 0x5EED


def heldout_drivers(count: int, size: int, seed: int = HELDOUT_SEED, exclude: int | None = None):
    """``count`` driver crops of held-out identities (never ``exclude``) with random motions, and
    the motions (to render ground truth with)."""
    from megaportraits_export.data import synthetic

    rng = np.random.default_rng(seed)
    seeds = [s for s in synthetic.identity_seeds("eval", 32) if s != exclude]
    frames, motions = np.empty((count, size, size, 3), np.uint8), []
    for i in range(count):
        identity = synthetic.Identity.sample(seeds[int(rng.integers(len(seeds)))])
        motion = synthetic.HeadMotion.random(rng)
        frames[i] = synthetic.render(identity, motion.pose, motion.expression, size)
        motions.append(motion)
    return frames, motions


class StudentRunner:
    """The student bundle's graph in ONNX Runtime: driver crops -> (image, matte or None), uint8."""

    def __init__(self, bundle, threads: int = 0):
        from megaportraits import manifest as mf
        from megaportraits.bundle import find_bundle, open_bundle
        from megaportraits.precision import reference_precision
        from megaportraits.schema import STUDENT, STUDENT_ROLES

        self.bundle = open_bundle(bundle, provider="cpu", threads=threads, roles=STUDENT_ROLES,
                                  precision=reference_precision(mf.load_manifest(find_bundle(bundle))))
        self.session = self.bundle.sessions[STUDENT]
        self.names = self.bundle.manifest.avatar_names()

    def render(self, index: int, drivers: np.ndarray, chunk: int = 16) -> np.ndarray:
        from megaportraits.schema import AVATAR_INDEX, DRIVER_IMAGE

        out = []
        for start in range(0, len(drivers), chunk):
            batch = drivers[start:start + chunk].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
            outputs = self.session.run(None, {DRIVER_IMAGE: batch,
                                              AVATAR_INDEX: np.full(len(batch), index, np.int64)})
            rendering = np.concatenate(outputs, axis=1)
            out.append(np.clip(rendering.transpose(0, 2, 3, 1) * 255 + 0.5, 0, 255).astype(np.uint8))
        return np.concatenate(out)


def _tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).double() / 255.0


def _scores(prediction: torch.Tensor, target: torch.Tensor) -> dict:
    return {"psnr": float(metrics.psnr(prediction, target).mean()), "ssim": float(metrics.ssim(prediction, target).mean())}


def _on_backdrop(rendering: np.ndarray, backdrop: np.ndarray | None) -> torch.Tensor:
    """(F, S, S, 3 or 4) uint8 -> (F, 3, S, S) the frame as shown: over the backdrop when matted."""
    frames = _tensor(rendering)
    if frames.shape[1] == 3 or backdrop is None:
        return frames[:, :3]
    plate = torch.from_numpy(np.ascontiguousarray(backdrop)).double()[None]
    return frames[:, 3:] * frames[:, :3] + (1 - frames[:, 3:]) * plate


def student_vs_teacher(student: np.ndarray, teacher: np.ndarray) -> dict:
    scores = _scores(_tensor(student[..., :3]), _tensor(teacher[..., :3]))
    if student.shape[-1] == 4:
        scores["matte_l1"] = float((_tensor(student[..., 3:]) - _tensor(teacher[..., 3:])).abs().mean())
    return scores


def ground_truth(renderer, runner, index: int, avatar, backdrop, identity_index: int, count: int, size: int) -> dict:
    """Teacher and student against the avatar's identity performing held-out drivers' motions."""
    from megaportraits.faces import cut_crop
    from megaportraits_export.data import synthetic

    seed = synthetic.EVAL_IDENTITY_SEED_OFFSET + identity_index
    drivers, motions = heldout_drivers(count, size, seed=HELDOUT_SEED + 1, exclude=seed)
    identity = synthetic.Identity.sample(seed)
    photo_side = avatar.image.shape[0]
    targets, masks = [], []
    for motion in motions:
        image, mask = synthetic.render(identity, motion.pose, motion.expression, photo_side, with_mask=True)
        targets.append(cut_crop(image, avatar.crop, size))
        masks.append(cut_crop(np.repeat(mask[..., None], 3, axis=2), avatar.crop, size)[..., :1])
    target, mask = _tensor(np.stack(targets)), _tensor(np.stack(masks))
    plate = None if backdrop is None else backdrop
    result = {}
    for name, rendering in (("teacher", renderer.render(avatar, drivers)), ("student", runner.render(index, drivers))):
        shown = _on_backdrop(rendering, plate)
        result[name] = {"raw": _scores(shown, target), "masked": _scores(shown * mask, target * mask)}
    return result


def main(argv=None) -> int:
    from megaportraits_export import command

    parser = command.parser("distill-fidelity", "a student's fidelity against its teacher and the ground truth")
    parser.add_argument("--student", required=True, help="the student bundle")
    parser.add_argument("--teacher", required=True, help="the teacher bundle it was distilled from")
    parser.add_argument("--avatar", default=None, help="the avatar's name (default: the student's first)")
    parser.add_argument("--frames", type=int, default=64, help="held-out driver frames (default 64)")
    parser.add_argument("--source-identity", type=int, default=None, metavar="K",
                        help="the held-out synthetic identity the avatar's photo shows (enables the ground-truth protocol)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be at least 1")
    return command.run(_fidelity, args)


def _fidelity(args) -> int:
    from megaportraits_export import command
    from megaportraits_export.distill.targets import TeacherRenderer

    from megaportraits.files import atomic_output, check_output_path

    if args.json:  # before any work: a writable, new name (never one of the bundles' files)
        check_output_path(args.json, (".json",))
    runner = StudentRunner(args.student, threads=args.threads)
    name = args.avatar or runner.names[0]
    if name not in runner.names:
        raise command.CommandError(f"the student has no avatar {name!r}; its avatars are {', '.join(runner.names)}")
    index = runner.names.index(name)
    entry = runner.bundle.manifest.student["avatars"][index]
    renderer = TeacherRenderer(args.teacher, threads=args.threads)
    recorded = runner.bundle.manifest.student["teacher"]["manifest_sha256"]
    if recorded != renderer.record["manifest_sha256"]:
        print(f"note: the teacher's manifest ({renderer.record['manifest_sha256'][:12]}) is not the one the student "
              f"records ({recorded[:12]}); its base model is compared all the same (enhancer off)", file=sys.stderr)
    from megaportraits.images import load_image

    photo = load_image(runner.bundle.directory / entry["image"], f"avatar {name!r} image")
    avatar, backdrop = renderer.avatar(photo)
    size = renderer.image_size
    drivers, _ = heldout_drivers(args.frames, size)
    print(f"fidelity: {name}, {args.frames} held-out driver frames at {size} px", file=sys.stderr, flush=True)
    report = {"avatar": name, "frames": args.frames, "image_size": size,
              "student_vs_teacher": student_vs_teacher(runner.render(index, drivers), renderer.render(avatar, drivers))}
    vs = report["student_vs_teacher"]
    print(f"student vs teacher (held-out drivers): PSNR {vs['psnr']:.2f} dB  SSIM {vs['ssim']:.4f}"
          + (f"  matte L1 {vs['matte_l1']:.4f}" if "matte_l1" in vs else ""))
    if args.source_identity is not None:
        gt = ground_truth(renderer, runner, index, avatar, backdrop, args.source_identity, args.frames, size)
        report["ground_truth"] = gt
        print("against ground truth (synthetic cross-reenactment, absolute motion, frames on the backdrop):")
        for who in ("teacher", "student"):
            raw, masked = gt[who]["raw"], gt[who]["masked"]
            print(f"  {who:<8} raw PSNR {raw['psnr']:.2f} SSIM {raw['ssim']:.4f}   "
                  f"masked PSNR {masked['psnr']:.2f} SSIM {masked['ssim']:.4f}")
    if args.json:
        with atomic_output(args.json) as tmp:  # never a half-written file
            Path(tmp).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
