"""``python -m megaportraits_export convert FAMILY ...``: pick the converter of a model family."""
from __future__ import annotations

import importlib
import sys

FAMILIES = {
    "emoportraits": ("megaportraits_export.convert.emoportraits.command",
                     "the official EMOPortraits stage-1 checkpoint + head-pose file"),
    "liveportrait": ("megaportraits_export.convert.liveportrait", "LivePortrait's published weights directory (MIT)"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m megaportraits_export convert {" + ",".join(FAMILIES) + "} [options]")
        for name, (_, what) in FAMILIES.items():
            print(f"  {name:<13} {what}")
        return 0 if argv else 2
    if argv[0] not in FAMILIES:
        print(f"megaportraits_export: error: unknown family {argv[0]!r}; choose one of {', '.join(FAMILIES)}",
              file=sys.stderr)
        return 2
    return importlib.import_module(FAMILIES[argv[0]][0]).main(argv[1:]) or 0
