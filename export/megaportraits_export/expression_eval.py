"""Does the driver's facial expression reach the output? An evaluation of the expression path alone.

Why: the whole-image metrics of :mod:`megaportraits_export.evaluation` are dominated by head
pose, hair and backdrop; a model that renders every face at rest scores nearly as well there as
one that opens the mouth and closes the eyes. This evaluation isolates the expression path.

Protocol (deterministic for a given ``seed``). Pair k takes two held-out identities A != B
(seeds never used in training), two random poses p_s, p_d, a neutral expression e_s and a
strong expression e_d of kind ``STRONG_EXPRESSIONS[k % 4]`` (open mouth, closed eyes, raised
brows, smile; :func:`~megaportraits_export.data.expression_pairs.strong_expression`):

- source:     A with (p_s, e_s)               driver:    B with (p_d, e_d)
- reference:  B with (p_s, e_s), the driver's first frame for relative motion (as the SDK does
  for videos, and as :mod:`~megaportraits_export.evaluation` does for cross-reenactment)
- target:     A with (p_d, e_d)               own-expression truth: A with (p_d, e_s)
- region:     where target and own-expression truth differ
  (:func:`~megaportraits_export.data.expression_pairs.expression_region`): the pixels where the
  expression shows.

The model renders the pair twice with the same relative pose theta_d theta_d0^-1 theta_s:
with the driver's expression code z_s + (z_d - z_d0) ("driver code") and with the source's own
z_s ("source code"). The expression gain is the PSNR on the region of the first minus that of
the second: a model that ignores the code gains 0 dB, one that carries it gains more. Beside
it: the own-expression truth on the region (a perfect model fed the source's code would score
that), "source unchanged", and the whole-image and foreground-masked L1/PSNR/SSIM of both
renderings on the same pairs. A matte model is scored composited over the source's inpainted
backdrop, as the SDK shows it.

PSNR on a region: per pair, the mean squared error over the region's pixels (all three
channels), then 10 log10(1 / mse); averaged over pairs, like the other PSNRs here.

Inputs: a checkpoint (PyTorch) or a bundle (through the SDK). Command:
``python -m megaportraits_export expression-eval --checkpoint CKPT | --bundle DIR``.
"""
from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import torch

from megaportraits_export import command, metrics
from megaportraits_export.data.expression_pairs import (STRONG_EXPRESSIONS, expression_region, neutral_expression,
                                                         strong_expression)
from megaportraits_export.evaluation.options import add_evaluation_options, check_counts
from megaportraits_export.evaluation.reenactors import to_uint8

DEFAULT_PAIRS = 48
DEFAULT_IDENTITIES = 32
CODES = ("driver_code", "source_code")
MAX_PSNR = 100.0


@dataclasses.dataclass
class ExpressionPairs:
    """Images (N, 3, S, S) float32 in [0, 1] and regions (N, 1, S, S) in {0, 1} (module doc)."""

    source: torch.Tensor
    driver: torch.Tensor
    reference: torch.Tensor
    target: torch.Tensor
    own_expression_target: torch.Tensor
    region: torch.Tensor
    target_mask: torch.Tensor
    edit_target: torch.Tensor   # A with (p_s, e_d): what an expression edit of the source should draw
    kinds: list          # the strong expression of each pair's driver
    identities: list     # (A, B) per pair
    poses: list          # (p_s, p_d) per pair: the synthetic Pose of the source and of the driver


def expression_pairs(pairs: int, size: int, seed: int = 0, identities: int = DEFAULT_IDENTITIES) -> ExpressionPairs:
    """The held-out cross-reenactment pairs with strong driver expressions, rendered at ``size``."""
    from megaportraits_export.data import synthetic

    if identities < 2:
        raise ValueError("cross-reenactment needs at least 2 held-out identities")
    if pairs < 1:
        raise ValueError("need at least 1 pair")
    seeds = synthetic.identity_seeds("eval", identities)
    rng = np.random.default_rng([0xE4E7, seed])
    columns = {k: [] for k in ("source", "driver", "reference", "target", "own_expression_target", "edit_target")}
    regions, masks, kinds, chosen, poses = [], [], [], [], []
    for k in range(pairs):
        a = seeds[k % len(seeds)]
        b = seeds[(k % len(seeds) + 1 + int(rng.integers(len(seeds) - 1))) % len(seeds)]
        person, driver_person = synthetic.Identity.sample(a), synthetic.Identity.sample(b)
        kind = STRONG_EXPRESSIONS[k % len(STRONG_EXPRESSIONS)]
        source_pose, driver_pose = synthetic.Pose.random(rng), synthetic.Pose.random(rng)
        rest, strong = neutral_expression(rng), strong_expression(rng, kind)
        target, mask = synthetic.render(person, driver_pose, strong, size, with_mask=True)
        own = synthetic.render(person, driver_pose, rest, size)
        columns["source"].append(synthetic.render(person, source_pose, rest, size))
        columns["driver"].append(synthetic.render(driver_person, driver_pose, strong, size))
        columns["reference"].append(synthetic.render(driver_person, source_pose, rest, size))
        columns["target"].append(target)
        columns["own_expression_target"].append(own)
        columns["edit_target"].append(synthetic.render(person, source_pose, strong, size))
        regions.append(expression_region(target, own)[None])
        masks.append(mask[None])
        kinds.append(kind)
        chosen.append((a, b))
        poses.append((source_pose, driver_pose))

    def images(batch) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.stack(batch).transpose(0, 3, 1, 2))).float() / 255.0

    return ExpressionPairs(**{k: images(v) for k, v in columns.items()},
                           region=torch.from_numpy(np.stack(regions).astype(np.float32)),
                           target_mask=torch.from_numpy(np.stack(masks)).float() / 255.0,
                           kinds=kinds, identities=chosen, poses=poses)


# ---- the two renderings of a pair -----------------------------------------------------------------
class CheckpointExpressionReenactor:
    """A PyTorch model: the relative pose of the driver with the driver's or the source's code."""

    def __init__(self, model: torch.nn.Module, batch_size: int = 8, background: str = "source",
                 true_poses: bool = False):
        from megaportraits_export.evaluation import CheckpointReenactor  # the evaluation's compositing

        self.shown = CheckpointReenactor(model, batch_size=batch_size, background=background)
        self.model = model.eval()
        self.batch_size = batch_size
        self.image_size = model.config.image_size
        self.true_poses = true_poses   # the pairs' true poses in place of the regressor's ([train] true_poses)

    @torch.no_grad()
    def reenact_codes(self, source: torch.Tensor, driver: torch.Tensor, reference: torch.Tensor,
                      poses: list | None = None) -> dict:
        """``poses``: the pairs' (p_s, p_d), read when ``true_poses``: the source encoded with
        p_s, and the relative pose exact (theta_d theta_d0^-1 theta_s = theta_d, the reference
        being in the source's pose)."""
        from megaportraits_export.evaluation import relative_motion
        from megaportraits_export.warp import pose_from_parameters

        if self.true_poses and poses is None:
            raise ValueError("true_poses needs the pairs' poses")
        outputs = {code: [] for code in CODES}
        for i in range(0, source.shape[0], self.batch_size):
            part = slice(i, i + self.batch_size)
            known = [None, None, None]
            if self.true_poses:
                source_theta, driver_theta = (pose_from_parameters(torch.from_numpy(np.stack(
                    [pair[k].model_parameters() for pair in poses[part]]))) for k in (0, 1))
                known = [source_theta, driver_theta, source_theta]
            avatar = self.model.source_branch.encode(source[part], known[0])[0]
            pose, expression = relative_motion((avatar.pose, avatar.expression),
                                               tuple(self.model.driver_branch(driver[part], known[1])),
                                               tuple(self.model.driver_branch(reference[part], known[2])))
            plates = self.shown.backdrop_plates(avatar, source[part])  # per avatar, not per rendering
            for code, z in (("driver_code", expression), ("source_code", avatar.expression)):
                rendering = self.model.generator(avatar.canonical_volume, avatar.global_descriptor, pose, z,
                                                 *avatar.source_pixels)
                outputs[code].append(self.shown.shown_image(rendering, plates))
        return {code: torch.cat(v).clamp(0.0, 1.0) for code, v in outputs.items()}


class BundleExpressionReenactor:
    """An exported bundle through the SDK (``crop=False``, ``paste_back=False``, relative motion):
    the frame the SDK shows, and the same frame with the avatar's own expression code; at the base
    model's size, a bundle's enhancer off, as ``evaluate --bundle``."""

    def __init__(self, bundle: str, provider: str = "cpu", background: str = "source"):
        import megaportraits

        self.animator = megaportraits.Animator(bundle, provider=provider, motion="relative", crop=False,
                                               paste_back=False, background=background, enhance=False)
        self.image_size = self.animator.image_size

    def reenact_codes(self, source: torch.Tensor, driver: torch.Tensor, reference: torch.Tensor) -> dict:
        from megaportraits.animator import to_image
        from megaportraits.motion import Motion

        outputs = {code: [] for code in CODES}
        for n in range(source.shape[0]):
            avatar = self.animator.prepare(to_uint8(source[n]))
            performance = self.animator.performance(avatar)
            performance.set_reference(to_uint8(reference[n]))
            driver_frame = to_uint8(driver[n])
            shown = performance(driver_frame)  # the public path: what a user gets
            # the same relative pose with the avatar's own expression: the generator step of
            # the Performance, fed a motion of our making
            motion = performance._relative(performance._driver_motion(driver_frame))
            own = to_image(performance._generate(Motion(motion.pose, avatar.motion.expression)))
            for code, frame in (("driver_code", shown), ("source_code", own)):
                outputs[code].append(torch.from_numpy(frame.astype(np.float32) / 255.0).permute(2, 0, 1))
        return {code: torch.stack(v) for code, v in outputs.items()}


# ---- scores ----------------------------------------------------------------------------------------
def region_psnr(prediction: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(N,) PSNR in dB over each pair's region pixels (all channels); NaN for an empty region."""
    weight = region.double().expand_as(target)
    squared = (prediction.double() - target.double()).pow(2) * weight
    count = weight.flatten(1).sum(1)
    mse = squared.flatten(1).sum(1) / count.clamp_min(1.0)
    value = -10.0 * torch.log10(mse.clamp_min(10.0 ** (-MAX_PSNR / 10.0)))
    return torch.where(count > 0, value, torch.full_like(value, float("nan")))


def region_l1(prediction: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """(N,) mean absolute error over each pair's region pixels; NaN for an empty region."""
    weight = region.double().expand_as(target)
    count = weight.flatten(1).sum(1)
    value = ((prediction.double() - target.double()).abs() * weight).flatten(1).sum(1) / count.clamp_min(1.0)
    return torch.where(count > 0, value, torch.full_like(value, float("nan")))


def _mean(values: torch.Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else float("nan")


def score(renderings: dict, pairs: ExpressionPairs) -> dict:
    """Every number of the evaluation from the two renderings (``{"driver_code", "source_code"}``)."""
    rows = {**renderings, "own_expression_truth": pairs.own_expression_target, "source_unchanged": pairs.source}
    region = {name: {"psnr": _mean(region_psnr(image, pairs.target, pairs.region)),
                     "l1": _mean(region_l1(image, pairs.target, pairs.region))} for name, image in rows.items()}
    per_kind = {}
    kinds = np.array(pairs.kinds)
    for kind in STRONG_EXPRESSIONS:
        chosen = torch.from_numpy(np.flatnonzero(kinds == kind))
        if len(chosen):
            per_kind[kind] = {code: _mean(region_psnr(renderings[code][chosen], pairs.target[chosen],
                                                      pairs.region[chosen])) for code in CODES}
    whole, masked = {}, {}
    for name in ("driver_code", "source_code", "source_unchanged"):
        raw, fg = metrics.MetricAccumulator(), metrics.MetricAccumulator()
        raw.add(rows[name], pairs.target)
        fg.add(rows[name] * pairs.target_mask, pairs.target * pairs.target_mask)
        whole[name], masked[name] = raw.means(), fg.means()
    return {
        "expression_region": region,
        "expression_gain_db": region["driver_code"]["psnr"] - region["source_code"]["psnr"],
        "expression_region_fraction": float(pairs.region.mean()),
        "per_kind_region_psnr": per_kind,
        "whole_image": whole,
        "masked": masked,
    }


def run_expression_evaluation(reenactor, pairs: int = DEFAULT_PAIRS, seed: int = 0,
                              identities: int = DEFAULT_IDENTITIES, background: str = "source") -> dict:
    pair_set = expression_pairs(pairs, reenactor.image_size, seed=seed, identities=identities)
    poses = {"poses": pair_set.poses} if getattr(reenactor, "true_poses", False) else {}
    results = score(reenactor.reenact_codes(pair_set.source, pair_set.driver, pair_set.reference, **poses), pair_set)
    results["protocol"] = {
        "data": "synthetic held-out identities (seeds >= EVAL_IDENTITY_SEED_OFFSET), cross-reenactment, "
                "neutral sources, strong driver expressions", "pairs": pairs, "heldout_identities": identities,
        "seed": seed, "motion": "relative", "image_size": reenactor.image_size, "background": background,
        "region": "pixels where the target and the source's own expression in the driver's pose differ",
        "poses": "true (an oracle)" if getattr(reenactor, "true_poses", False) else "regressed",
    }
    return results


def format_report(results: dict, header: str) -> str:
    region = results["expression_region"]
    labels = {"driver_code": "driver's expression code", "source_code": "source's own code",
              "own_expression_truth": "truth with source's expr.", "source_unchanged": "source unchanged"}
    lines = [header,
             f"expression region ({100 * results['expression_region_fraction']:.1f} % of the pixels):"
             f"{'PSNR':>9}{'L1':>9}"]
    for name, label in labels.items():
        lines.append(f"  {label:48}{region[name]['psnr']:>9.2f}{region[name]['l1']:>9.4f}")
    lines.append(f"  expression gain (driver's code - source's code): {results['expression_gain_db']:+.2f} dB")
    lines.append("  per kind, region PSNR driver's / source's code: " + ", ".join(
        f"{kind} {v['driver_code']:.2f} / {v['source_code']:.2f}" for kind, v in results["per_kind_region_psnr"].items()))
    lines.append(f"{'same pairs':50}{'L1':>9}{'PSNR':>9}{'SSIM':>9}")
    for scope in ("whole_image", "masked"):
        for name in ("driver_code", "source_code", "source_unchanged"):
            m = results[scope][name]
            lines.append(f"  {scope.replace('_', ' ') + ', ' + labels[name]:48}{m['l1']:>9.4f}{m['psnr']:>9.2f}"
                         f"{m['ssim']:>9.4f}")
    lines.append("PSNR in dB, higher is better; L1 lower is better; masked: the target's person only.")
    return "\n".join(lines)


def build_parser() -> command.Parser:
    parser = command.parser(
        "expression-eval",
        "The expression path alone: held-out cross-reenactment with strong expressions, the driver's "
        "expression code against the source's own, PSNR where the expression shows.")
    add_evaluation_options(parser, pairs=DEFAULT_PAIRS, identities=DEFAULT_IDENTITIES)
    parser.add_argument("--true-poses", action="store_true",
                        help="(a checkpoint only) drive it by the pairs' true poses, not its regressor's: the "
                             "oracle a model trained with [train] true_poses is scored with")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_counts(parser, args)
    if args.true_poses and not args.checkpoint:
        parser.error("--true-poses scores a checkpoint (--checkpoint): a bundle runs its own regressor")
    return command.run(_evaluate_expressions, args)  # CheckpointError, SDK errors: one line, exit 1


def _evaluate_expressions(args) -> int:
    torch.manual_seed(args.seed)
    if args.checkpoint:
        from megaportraits_export.checkpoint import load_model_from_checkpoint

        model, _, _ = load_model_from_checkpoint(args.checkpoint)
        reenactor = CheckpointExpressionReenactor(model, background=args.background, true_poses=args.true_poses)
        subject = f"checkpoint {args.checkpoint}" + (" with the true poses" if args.true_poses else "")
    else:
        reenactor = BundleExpressionReenactor(args.bundle, provider=args.provider, background=args.background)
        subject = f"bundle {args.bundle}"
    results = run_expression_evaluation(reenactor, args.pairs, args.seed, args.identities, args.background)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        p = results["protocol"]
        print(format_report(results, f"{subject}: {p['pairs']} cross-reenactment pairs of {p['heldout_identities']} "
                                     f"held-out synthetic identities at {p['image_size']}px, strong expressions"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
