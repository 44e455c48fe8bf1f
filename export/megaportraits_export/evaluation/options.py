"""The command-line options every evaluation command shares (``evaluate``, ``expression-eval``):
what is evaluated (a checkpoint or a bundle), how many held-out pairs, and how it is shown."""
from __future__ import annotations

import argparse

from megaportraits.animator import BACKGROUNDS  # the SDK's choices: the evaluation scores what it shows


def add_evaluation_options(parser: argparse.ArgumentParser, pairs: int, identities: int) -> None:
    """``--checkpoint | --bundle``, ``--pairs``, ``--identities``, ``--seed``, ``--background``,
    ``--provider`` and ``--json``, with the command's own default counts."""
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", metavar="CKPT", help="a training checkpoint (model_*.pt or state_*.pt)")
    what.add_argument("--bundle", metavar="DIR", help="an exported bundle, run through the SDK")
    parser.add_argument("--pairs", type=int, default=pairs, help=f"pairs per task (default {pairs})")
    parser.add_argument("--identities", type=int, default=identities,
                        help=f"held-out identities to draw from (default {identities})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--background", choices=BACKGROUNDS, default="source",
                        help="matte models: score the rendering composited over the source's inpainted "
                             "backdrop as the SDK shows it (source, default) or the raw rendering (generated)")
    parser.add_argument("--provider", default="cpu", help="bundle only: SDK provider (auto, cpu, cuda)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def check_counts(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, as a usage error, counts that cannot make a cross-reenactment pair."""
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if args.identities < 2:
        parser.error("--identities must be at least 2 (cross-reenactment pairs two people)")
