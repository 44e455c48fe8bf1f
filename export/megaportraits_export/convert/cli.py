"""``python -m megaportraits_export convert FAMILY [options]``: one dispatcher for every converter
of other projects' released weights. Each converter is a module with ``main(argv) -> int``
(:mod:`megaportraits_export.command` conventions), imported only when run."""
from __future__ import annotations

import importlib
import sys

from megaportraits_export.command import PROG

CONVERTERS = {
    "emoportraits": ("megaportraits_export.convert.emoportraits.command",
                     "the official EMOPortraits stage-1 model (CC BY-NC-SA 4.0)"),
    "liveportrait": ("megaportraits_export.convert.liveportrait",
                     "LivePortrait's published weights (MIT)"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "\n".join([f"usage: python -m {PROG} convert {{{','.join(CONVERTERS)}}} [options]", "", "converters:"]
                      + [f"  {name:<13} {help_}" for name, (_, help_) in CONVERTERS.items()])
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    if not argv or argv[0] not in CONVERTERS:
        what = f"unknown converter {argv[0]!r}" if argv else "give a converter"
        print(f"{PROG}: error: {what}; choose one of {', '.join(CONVERTERS)} "
              f"(see python -m {PROG} convert --help)", file=sys.stderr)
        return 2
    return importlib.import_module(CONVERTERS[argv[0]][0]).main(argv[1:]) or 0
