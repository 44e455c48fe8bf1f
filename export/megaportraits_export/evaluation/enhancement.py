"""The enhancer's scores: G_enh against bicubic upsampling, both against the renderer's truth at 2x.

On held-out synthetic identities (:func:`heldout_pairs`, rendered once at the base size and once
at twice it: the same identities and motions, so the 2x render is the exact ground truth):

- ``self_reenactment``: the frozen base model reenacts the source with its own identity's driver
  at the base size; its frame, enhanced or bicubic-upsampled, is scored against the driver
  frame rendered at 2x. A matte model's frame is treated as the SDK treats it: the RGBA
  rendering is lifted (enhanced or bicubic), then composited at 2x over the backdrop cut from the
  2x source with the lifted matte of the source re-rendered with its own motion;
- ``super_resolution``: the 2x ground truth box-downsampled to the base size (with its mask for a
  matte enhancer) and lifted back: pure super-resolution.

Scores are :mod:`megaportraits_export.metrics` means (PSNR, SSIM, ...) per task and method.
For a matte enhancer, ``by_channel`` adds two methods that say where a difference from bicubic
comes from: ``colours`` (the enhancer's colours with bicubic's matte) and ``matte`` (bicubic's
colours with the enhancer's matte). (On the demo enhancer of session 5 every gain on the base
model's renderings came from the matte; its colours scored exactly bicubic's.)
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..metrics import MetricAccumulator
from .pairs import DEFAULT_HELDOUT_IDENTITIES, heldout_pairs

METHODS = ("enhanced", "bicubic")
BY_CHANNEL = ("colours", "matte")   # a matte enhancer's colours / matte alone, the rest bicubic's


def bicubic(image: torch.Tensor) -> torch.Tensor:
    return F.interpolate(image, scale_factor=2, mode="bicubic", align_corners=False).clamp(0.0, 1.0)


def _lifted(enhancer: torch.nn.Module, rendering: torch.Tensor, by_channel: bool = False) -> dict:
    lifted = {"enhanced": enhancer(rendering), "bicubic": bicubic(rendering)}
    if by_channel:
        enhanced, plain = lifted["enhanced"], lifted["bicubic"]
        lifted["colours"] = torch.cat([enhanced[:, :3], plain[:, 3:]], dim=1)
        lifted["matte"] = torch.cat([plain[:, :3], enhanced[:, 3:]], dim=1)
    return lifted


def _composited(lifted: torch.Tensor, own: torch.Tensor, source_high: torch.Tensor) -> torch.Tensor:
    """A lifted RGBA frame over the backdrop of the 2x source, cut with the lifted own matte."""
    from megaportraits.compositing import background_plate, composite

    plates = np.stack([background_plate(s.numpy(), m) for s, m in zip(source_high, own[:, 3:].numpy())])
    return torch.from_numpy(composite(lifted[:, :3].numpy(), lifted[:, 3:].numpy(), plates))


@torch.no_grad()
def enhancement_scores(base_model: torch.nn.Module, enhancer: torch.nn.Module, pairs: int = 64, seed: int = 0,
                       identities: int = DEFAULT_HELDOUT_IDENTITIES, batch_size: int = 8,
                       by_channel: bool = False) -> dict:
    """{task: {method: {metric: mean}}} for the tasks and methods of the module docstring."""
    size = enhancer.config.base_size
    if base_model.config.image_size != size:
        raise ValueError(f"the base model renders {base_model.config.image_size} px but the enhancer reads {size} px")
    matte = enhancer.config.matte
    if by_channel and not matte:
        raise ValueError("by-channel scores split colours from the matte: this enhancer has no matte")
    methods = METHODS + (BY_CHANNEL if by_channel else ())
    low = heldout_pairs(pairs, size, seed, identities)
    high = heldout_pairs(pairs, 2 * size, seed, identities)
    scores = {task: {m: MetricAccumulator() for m in methods} for task in ("self_reenactment", "super_resolution")}
    base_model.eval()
    enhancer.eval()
    for i in range(0, pairs, batch_size):
        part = slice(i, i + batch_size)
        avatar = base_model.source_branch(low.source[part])
        rendering = base_model.reenact(avatar, base_model.driver_branch(low.self_driver[part]))
        target = high.target[part]
        lifted = _lifted(enhancer, rendering, by_channel)
        if matte:
            own = base_model.reenact(avatar, base_model.driver_branch(low.source[part]))
            own_lifted = _lifted(enhancer, own, by_channel)
            lifted = {m: _composited(frame, own_lifted[m], high.source[part]) for m, frame in lifted.items()}
        for method, frame in lifted.items():
            scores["self_reenactment"][method].add(frame, target)
        truth = torch.cat([target, high.target_mask[part]], dim=1) if matte else target
        down = F.avg_pool2d(truth, 2)
        for method, frame in _lifted(enhancer, down, by_channel).items():
            scores["super_resolution"][method].add(frame[:, :3], target)
    return {task: {m: acc.means() for m, acc in methods.items()} for task, methods in scores.items()}


def format_scores(scores: dict) -> str:
    lines = [f"{'task':<18}{'method':<10}" + "".join(f"{k:>10}" for k in next(iter(scores.values()))["enhanced"])]
    for task, methods in scores.items():
        for method, values in methods.items():
            lines.append(f"{task:<18}{method:<10}" + "".join(f"{v:>10.4f}" for v in values.values()))
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m megaportraits_export evaluate-enhancer --base CKPT --enhancer CKPT [--pairs N] [--json]``."""
    from .. import command

    parser = command.parser("evaluate-enhancer", "the enhancer against bicubic upsampling on held-out synthetic "
                                                 "identities, against the renderer's truth at 2x")
    parser.add_argument("--base", required=True, metavar="CKPT", help="the base model's model_*.pt")
    parser.add_argument("--enhancer", required=True, metavar="CKPT", help="the enhancer run's model_*.pt")
    parser.add_argument("--pairs", type=int, default=64, help="held-out pairs (default 64)")
    parser.add_argument("--identities", type=int, default=DEFAULT_HELDOUT_IDENTITIES, help="held-out identities")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--by-channel", action="store_true",
                        help="a matte enhancer: also score its colours alone and its matte alone (the other "
                             "channels bicubic's), to see where a difference from bicubic comes from")
    parser.add_argument("--write-provenance", action="store_true",
                        help="store the scores in the enhancer checkpoint's provenance (metrics), which "
                             "add-enhancer copies into the bundle manifest")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.identities < 2:
        parser.error("--pairs must be at least 1 and --identities at least 2")
    return command.run(_evaluate, args)


def _evaluate(args) -> int:
    import json

    from ..checkpoint import load_model_from_checkpoint
    from ..training.enhancement import load_enhancer_checkpoint

    base, _, base_provenance = load_model_from_checkpoint(args.base)
    enhancer, config, provenance = load_enhancer_checkpoint(args.enhancer)
    try:
        scores = enhancement_scores(base, enhancer, args.pairs, args.seed, args.identities,
                                    by_channel=args.by_channel)
    except ValueError as e:
        raise command_error(str(e)) from None
    print(json.dumps(scores, indent=2) if args.json else format_scores(scores))
    if args.write_provenance:
        from ..evaluate import write_metrics_to_checkpoint

        write_metrics_to_checkpoint(args.enhancer, enhancer, config, provenance, {
            "enhancement": scores, "pairs": args.pairs, "identities": args.identities, "seed": args.seed,
            "base_checkpoint": base_provenance.get("checkpoint")})
        print(f"scores stored in {args.enhancer}'s provenance")
    return 0


def command_error(message: str):
    from ..command import CommandError

    return CommandError(message)
