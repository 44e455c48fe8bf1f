"""``python -m megaportraits_export evaluate``: reenactment quality on held-out synthetic heads.

Protocol (deterministic for a given ``--seed``). For each pair k, two different held-out
identities A and B (identity seeds never used in training) and two random motions m_s, m_d:

- source:                A performing m_s
- self-reenactment:      driver A performing m_d
- cross-reenactment:     driver B performing m_d
- target (both tasks):   A performing m_d, rendered exactly by the synthetic renderer

Motion transfer is *relative* by default, as the SDK does it for videos: the driver's
reference frame d0 is the driver identity performing the source's motion m_s (for self-
reenactment that is the source image itself), and the generator receives
theta = theta_d theta_d0^-1 theta_s, z = z_s + (z_d - z_d0). This is the correct protocol for
cross-reenactment: the pose and expression encoders see B's face, and whatever part of their
output is specific to B's face (rather than to the motion) cancels in the difference to d0,
while the ground truth is A with B's motion *parameters*. With ``--motion absolute`` the
generator gets (theta_d, z_d) as they are; for self-reenactment both modes coincide up to
rounding, so the difference between them on cross-reenactment measures identity leakage
through the motion code.

The trivial baseline "output the source unchanged" is scored on the same targets; since the
two tasks share their targets, its numbers are the same for both.

Every metric is reported twice, as the paper does: on the whole image ("raw") and on the
foreground only ("masked": prediction and target multiplied by the target's person mask,
which the synthetic renderer gives exactly). A model with a matte is scored on what a user sees:
its rendering composited over the source's inpainted backdrop
(:mod:`megaportraits.compositing`, the same code the SDK runs); ``--background generated``
scores the raw rendering instead.

Inputs: a training checkpoint (``--checkpoint``, run in PyTorch) or an exported bundle
(``--bundle``, run through the SDK's Animator on already-cropped frames: no face crop, no
paste-back). LPIPS is not reported: its pretrained weights are not available here.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from megaportraits.animator import BACKGROUNDS  # the SDK's choices: the evaluation scores what it shows

from . import metrics

TASKS = ("self", "cross")
DEFAULT_PAIRS = 48
DEFAULT_HELDOUT_IDENTITIES = 32


@dataclasses.dataclass
class PairSet:
    """Images (N, 3, S, S) float32 in [0, 1] of the evaluation pairs (see module docstring)."""

    source: torch.Tensor
    self_driver: torch.Tensor
    cross_driver: torch.Tensor
    cross_reference: torch.Tensor     # B performing the source's motion: d0 for relative motion
    target: torch.Tensor
    target_mask: torch.Tensor         # (N, 1, S, S) the target's person mask, for masked metrics
    identities: list                  # (A, B) seeds per pair
    source_pose: torch.Tensor         # (N, 7) ground truth of the model's theta (Pose.model_parameters)
    driver_pose: torch.Tensor         # (N, 7) for the drivers of both tasks


def heldout_pairs(pairs: int, size: int, seed: int = 0,
                  identities: int = DEFAULT_HELDOUT_IDENTITIES) -> PairSet:
    """The evaluation pairs of held-out identities, rendered at ``size``."""
    from .data import synthetic

    if identities < 2:
        raise ValueError("cross-reenactment needs at least 2 held-out identities")
    seeds = synthetic.identity_seeds("eval", identities)
    rng = np.random.default_rng([0xE7A1, seed])

    def tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0

    images = {k: [] for k in ("source", "self_driver", "cross_driver", "cross_reference")}
    masks = []
    chosen, poses = [], {"source_pose": [], "driver_pose": []}
    for k in range(pairs):
        a = seeds[k % len(seeds)]
        b = seeds[(k % len(seeds) + 1 + int(rng.integers(len(seeds) - 1))) % len(seeds)]
        id_a, id_b = synthetic.Identity.sample(a), synthetic.Identity.sample(b)
        m_s, m_d = synthetic.HeadMotion.random(rng), synthetic.HeadMotion.random(rng)
        images["source"].append(synthetic.render(id_a, m_s.pose, m_s.expression, size))
        target, mask = synthetic.render(id_a, m_d.pose, m_d.expression, size, with_mask=True)
        images["self_driver"].append(target)
        masks.append(torch.from_numpy(mask).float().div(255.0)[None])
        images["cross_driver"].append(synthetic.render(id_b, m_d.pose, m_d.expression, size))
        images["cross_reference"].append(synthetic.render(id_b, m_s.pose, m_s.expression, size))
        chosen.append((a, b))
        poses["source_pose"].append(torch.from_numpy(m_s.pose.model_parameters()))
        poses["driver_pose"].append(torch.from_numpy(m_d.pose.model_parameters()))
    stacked = {k: torch.stack([tensor(i) for i in v]) for k, v in images.items()}
    stacked.update({k: torch.stack(v) for k, v in poses.items()})
    return PairSet(target=stacked["self_driver"], target_mask=torch.stack(masks), identities=chosen, **stacked)


# ---- reenactment through a checkpoint (PyTorch) ------------------------------------------------
def _homogeneous(pose: torch.Tensor) -> torch.Tensor:
    bottom = torch.zeros(pose.shape[0], 1, 4, dtype=pose.dtype, device=pose.device)
    bottom[:, 0, 3] = 1.0
    return torch.cat((pose, bottom), dim=1)


def relative_motion(source_motion, driver_motion, reference_motion) -> tuple:
    """theta = theta_d theta_d0^-1 theta_s, z = z_s + (z_d - z_d0) (docs/interfaces.md)."""
    from .warp import invert_pose

    pose = (_homogeneous(driver_motion[0]) @ _homogeneous(invert_pose(reference_motion[0]))
            @ _homogeneous(source_motion[0]))[:, :3]
    expression = source_motion[1] + (driver_motion[1] - reference_motion[1])
    return pose, expression


class CheckpointReenactor:
    """A PyTorch model from a checkpoint, reenacting batches of already-cropped frames.

    A matte model's renderings are composited over the source's inpainted backdrop with the
    SDK's own compositing code (``background="source"``, what the SDK shows), or returned raw
    (``"generated"``)."""

    def __init__(self, model: torch.nn.Module, batch_size: int = 8, background: str = "source"):
        self.model = model.eval()
        self.batch_size = batch_size
        self.image_size = model.config.image_size
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, not {background!r}")
        self.background = background

    @torch.no_grad()
    def reenact(self, source: torch.Tensor, driver: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        outputs = []
        for i in range(0, source.shape[0], self.batch_size):
            part = slice(i, i + self.batch_size)
            avatar = self.model.source_branch(source[part])
            motion = tuple(self.model.driver_branch(driver[part]))
            if reference is not None:
                base = tuple(self.model.driver_branch(reference[part]))
                motion = relative_motion((avatar.pose, avatar.expression), motion, base)
            rendering = self.model.generator(avatar.canonical_volume, avatar.global_descriptor, *motion)
            outputs.append(self._shown(rendering, avatar, source[part]))
        return torch.cat(outputs).clamp(0.0, 1.0)

    def _shown(self, rendering: torch.Tensor, avatar, source: torch.Tensor) -> torch.Tensor:
        """The image a user sees: the rendering, composited over the backdrop for a matte model."""
        from megaportraits.compositing import background_plate, composite

        from .model import split_matte

        image, matte = split_matte(rendering)
        if matte is None or self.background == "generated":
            return image
        # the backdrop is cut out with the matte of the source re-rendered with its own motion,
        # as the SDK does when it prepares an avatar
        own = self.model.generator(avatar.canonical_volume, avatar.global_descriptor, avatar.pose, avatar.expression)
        source_matte = split_matte(own)[1].numpy()
        plates = np.stack([background_plate(s.numpy(), m) for s, m in zip(source, source_matte)])
        return torch.from_numpy(composite(image.numpy(), matte.numpy(), plates))

    @torch.no_grad()
    def pose_errors(self, pairs: PairSet) -> dict:
        """Mean absolute error of the head-pose regressor on the held-out frames."""
        images = torch.cat((pairs.source, pairs.self_driver, pairs.cross_driver))
        truth = torch.cat((pairs.source_pose, pairs.driver_pose, pairs.driver_pose)).double()
        scale, rotation, translation = (t.double() for t in
                                        self.model.driver_branch.head_pose.pose_parameters(images))
        degrees = (rotation - truth[:, 1:4]).abs().mean(0) * 180.0 / math.pi
        return {"yaw_deg": float(degrees[0]), "pitch_deg": float(degrees[1]), "roll_deg": float(degrees[2]),
                "translation": float((translation - truth[:, 4:7]).abs().mean()),
                "scale_relative": float(((scale.mean(1) - truth[:, 0]).abs() / truth[:, 0]).mean())}


# ---- reenactment through a bundle (the SDK) -------------------------------------------------------
class BundleReenactor:
    """An exported bundle run by ``megaportraits.Animator`` on already-cropped frames
    (``crop=False``, ``paste_back=False``), one pair at a time as a user would."""

    def __init__(self, bundle: str, provider: str = "cpu", background: str = "source"):
        import megaportraits

        self.bundle = bundle
        self.provider = provider
        self.animators = {mode: megaportraits.Animator(bundle, provider=provider, motion=mode, crop=False,
                                                       paste_back=False, background=background)
                          for mode in ("relative", "absolute")}
        self.image_size = self.animators["relative"].image_size

    def reenact(self, source: torch.Tensor, driver: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        animator = self.animators["absolute" if reference is None else "relative"]
        outputs = []
        for n in range(source.shape[0]):
            avatar = animator.prepare(_to_uint8(source[n]))
            frame = animator.animate_frame(avatar, _to_uint8(driver[n]),
                                           reference_frame=None if reference is None else _to_uint8(reference[n]))
            outputs.append(torch.from_numpy(frame.astype(np.float32) / 255.0).permute(2, 0, 1))
        return torch.stack(outputs)


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) RGB uint8, as an image file would hold it."""
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


# ---- the evaluation -------------------------------------------------------------------------------
def evaluate(reenactor, pairs: PairSet, motion: str = "relative") -> dict:
    """Metrics of the model and of the "source unchanged" baseline, per task."""
    def scores(prediction: torch.Tensor) -> tuple:
        raw, masked = metrics.MetricAccumulator(), metrics.MetricAccumulator()
        raw.add(prediction, pairs.target)
        masked.add(prediction * pairs.target_mask, pairs.target * pairs.target_mask)
        return raw.means(), masked.means()

    results = {"model": {}, "source_unchanged": {}, "masked": {"model": {}, "source_unchanged": {}}}
    baseline = scores(pairs.source)
    for task in TASKS:
        driver = pairs.self_driver if task == "self" else pairs.cross_driver
        reference = None
        if motion == "relative":
            reference = pairs.source if task == "self" else pairs.cross_reference
        model = scores(reenactor.reenact(pairs.source, driver, reference))
        for row, (raw, masked) in (("model", model), ("source_unchanged", baseline)):
            results[row][task] = raw
            results["masked"][row][task] = masked
    return results


def format_table(results: dict, header: str) -> str:
    names = [("l1", "L1", "{:.4f}"), ("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.4f}")]
    lines = [header,
             f"{'':27}" + "".join(f"{t + '-reenactment':^27}" for t in TASKS),
             f"{'':27}" + "".join(f"{label:>9}" for _ in TASKS for _, label, _ in names)]
    for scope, table in (("raw", results), ("masked", results.get("masked"))):
        if table is None:
            continue
        for row, label in (("model", "model"), ("source_unchanged", "source unchanged")):
            cells = "".join(f"{fmt.format(table[row][t][key]):>9}" for t in TASKS for key, _, fmt in names)
            lines.append(f"{label + ' (' + scope + ')':27}{cells}")
    lines.append("L1 lower is better; PSNR (dB) and SSIM higher are better; masked: the target's person "
                 "only (both images times its mask). " + metrics.LPIPS_UNAVAILABLE + ".")
    return "\n".join(lines)


def run_evaluation(reenactor, pairs: int, seed: int, identities: int, motion: str, background: str = "source") -> dict:
    pair_set = heldout_pairs(pairs, reenactor.image_size, seed=seed, identities=identities)
    results = evaluate(reenactor, pair_set, motion=motion)
    if hasattr(reenactor, "pose_errors"):
        results["head_pose_error"] = reenactor.pose_errors(pair_set)
    results["protocol"] = {
        "data": "synthetic held-out identities (seeds >= EVAL_IDENTITY_SEED_OFFSET)",
        "pairs": pairs, "heldout_identities": identities, "seed": seed, "motion": motion,
        "image_size": reenactor.image_size, "lpips": None, "background": background,
        "masked": "prediction and target times the target's person mask",
    }
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m megaportraits_export evaluate",
                                     description="Self- and cross-reenactment metrics on held-out "
                                                 "synthetic identities, next to the 'source unchanged' baseline.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", metavar="CKPT", help="a training checkpoint (model_*.pt or state_*.pt)")
    what.add_argument("--bundle", metavar="DIR", help="an exported bundle, run through the SDK")
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS, help=f"pairs per task (default {DEFAULT_PAIRS})")
    parser.add_argument("--identities", type=int, default=DEFAULT_HELDOUT_IDENTITIES,
                        help=f"held-out identities to draw from (default {DEFAULT_HELDOUT_IDENTITIES})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--motion", choices=("relative", "absolute"), default="relative",
                        help="motion transfer (default relative; see the module docstring)")
    parser.add_argument("--background", choices=BACKGROUNDS, default="source",
                        help="matte models: score the rendering composited over the source's inpainted "
                             "backdrop as the SDK shows it (source, default) or the raw rendering (generated)")
    parser.add_argument("--provider", default="cpu", help="bundle only: SDK provider (auto, cpu, cuda)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--write-provenance", action="store_true",
                        help="checkpoint only: store the results in the checkpoint's provenance "
                             "(metrics), which the exporter copies into the bundle manifest")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.pairs < 1:
        print("error: --pairs must be at least 1", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    if args.checkpoint:
        from .checkpoint import CheckpointError, load_model_from_checkpoint

        try:
            model, _, provenance = load_model_from_checkpoint(args.checkpoint)
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        reenactor = CheckpointReenactor(model, background=args.background)
        subject = f"checkpoint {args.checkpoint}"
    else:
        if args.write_provenance:
            print("error: --write-provenance needs --checkpoint", file=sys.stderr)
            return 2
        reenactor = BundleReenactor(args.bundle, provider=args.provider, background=args.background)
        subject = f"bundle {args.bundle}"
    results = run_evaluation(reenactor, args.pairs, args.seed, args.identities, args.motion, args.background)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        p = results["protocol"]
        print(format_table(results, f"{subject}: {p['pairs']} pairs of {p['heldout_identities']} held-out "
                                    f"synthetic identities at {p['image_size']}px, {p['motion']} motion"))
        if "head_pose_error" in results:
            e = results["head_pose_error"]
            print(f"head-pose regressor, mean absolute error: yaw {e['yaw_deg']:.2f} deg, pitch "
                  f"{e['pitch_deg']:.2f} deg, roll {e['roll_deg']:.2f} deg, translation {e['translation']:.4f}, "
                  f"scale {100 * e['scale_relative']:.2f} %")
    if args.write_provenance:
        write_metrics_to_checkpoint(args.checkpoint, results)
    return 0


def write_metrics_to_checkpoint(path: str, results: dict) -> None:
    """Re-save the checkpoint with ``provenance["metrics"]`` set to ``results``."""
    from .checkpoint import load_model_from_checkpoint, save_checkpoint

    model, config, provenance = load_model_from_checkpoint(path)
    for added_by_loader in ("preset", "checkpoint"):
        provenance.pop(added_by_loader, None)
    provenance["metrics"] = {"evaluation": results}
    preset = config.name
    save_checkpoint(Path(path), model, config, preset, provenance)
