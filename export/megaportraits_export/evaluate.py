"""``python -m megaportraits_export evaluate``: reenactment quality on held-out synthetic heads.

The command only: the protocol, the reenactors and the scores are :mod:`megaportraits_export.evaluation`.
Inputs: a training checkpoint (``--checkpoint``, run in PyTorch) or an exported bundle
(``--bundle``, run through the SDK's Animator on already-cropped frames). Failures print one
line and exit 1 (:mod:`megaportraits_export.command`).
"""
from __future__ import annotations

import json
from pathlib import Path

from megaportraits_export import command
from megaportraits_export.evaluation import (
    DEFAULT_HELDOUT_IDENTITIES,
    BundleReenactor,
    CheckpointReenactor,
    format_table,
    run_evaluation,
)
from megaportraits_export.evaluation.options import add_evaluation_options, check_counts

DEFAULT_PAIRS = 48


def build_parser() -> command.Parser:
    parser = command.parser("evaluate", "Self- and cross-reenactment metrics on held-out synthetic "
                                        "identities, next to the 'source unchanged' baseline.")
    add_evaluation_options(parser, pairs=DEFAULT_PAIRS, identities=DEFAULT_HELDOUT_IDENTITIES)
    parser.add_argument("--motion", choices=("relative", "absolute"), default="relative",
                        help="motion transfer (default relative; see megaportraits_export.evaluation)")
    parser.add_argument("--write-provenance", action="store_true",
                        help="checkpoint only: store the results in the checkpoint's provenance "
                             "(metrics), which the exporter copies into the bundle manifest")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_counts(parser, args)
    if args.bundle and args.write_provenance:
        parser.error("--write-provenance needs --checkpoint")
    return command.run(_evaluate, args)


def _evaluate(args) -> int:
    import torch

    torch.manual_seed(args.seed)
    if args.checkpoint:
        from megaportraits_export.checkpoint import load_model_from_checkpoint

        model, config, provenance = load_model_from_checkpoint(args.checkpoint)
        reenactor = CheckpointReenactor(model, background=args.background)
        subject = f"checkpoint {args.checkpoint}"
    else:
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
        write_metrics_to_checkpoint(args.checkpoint, model, config, provenance, results)
    return 0


def write_metrics_to_checkpoint(path: str, model, config, provenance: dict, results: dict) -> None:
    """Re-save the checkpoint at ``path`` (``model``, ``config``, ``provenance`` as
    :func:`~megaportraits_export.checkpoint.load_model_from_checkpoint` gave them, not loaded
    twice) with ``provenance["metrics"]`` set to ``results``."""
    from megaportraits_export.checkpoint import save_checkpoint

    provenance = dict(provenance)
    for added_by_loader in ("preset", "checkpoint"):
        provenance.pop(added_by_loader, None)
    provenance["metrics"] = {"evaluation": results}
    preset = config.name
    save_checkpoint(Path(path), model, config, preset, provenance)
