#!/usr/bin/env python3
"""The README's picture of the demo: the source portrait, five driver frames and the demo model's
output at those frames, in one PNG (issue 13: the strip where expressions should show).

    python tools/demo_strip.py -o docs/demo_strip.png
    python tools/demo_strip.py -o strip.png --bundle BUNDLE --source photo.jpg --driver driver.mp4

The frames are taken at 10, 30, 50, 70 and 90 % of the driver (evenly, not chosen for looks),
animated exactly as ``megaportraits demo`` does (one stream, relative motion, crop and paste-back),
each cell resized to ``--cell`` pixels. Row 1: the source, then the driver frames; row 2: the
bundle's name, then the output frames.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)


def _cell(rgb: np.ndarray, side: int) -> np.ndarray:
    return cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA)


def _label(cell: np.ndarray, text: str) -> np.ndarray:
    out = cell.copy()
    cv2.putText(out, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def main(argv=None) -> int:
    from megaportraits.cli import DEMO_DRIVER, DEMO_SOURCE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", required=True, type=Path, help="the PNG to write")
    parser.add_argument("--bundle", default=None, help="bundle (default: the bundled demo model)")
    parser.add_argument("--source", default=str(DEMO_SOURCE), help="source portrait (default: the demo's)")
    parser.add_argument("--driver", default=str(DEMO_DRIVER), help="driver video (default: the demo's)")
    parser.add_argument("--cell", type=int, default=160, help="side of each cell in pixels (default 160)")
    args = parser.parse_args(argv)
    from megaportraits.errors import MegaportraitsError
    from megaportraits.files import atomic_output, check_output_path

    try:
        if args.output.suffix.lower() != ".png":
            raise MegaportraitsError(f"the output must be a .png file, not {args.output}")
        check_output_path(args.output, (".png",))
        strip = _strip(args)
        ok, png = cv2.imencode(".png", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
        if not ok:
            raise MegaportraitsError("could not encode the strip as PNG")
        with atomic_output(args.output) as tmp:
            tmp.write_bytes(png.tobytes())
    except MegaportraitsError as e:
        print(f"demo_strip: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({strip.shape[1]}x{strip.shape[0]})")
    return 0


def _count_frames(path) -> int:
    from megaportraits.video import VideoReader

    with VideoReader(path) as reader:
        return sum(1 for _ in reader)


def _strip(args) -> np.ndarray:
    from megaportraits import Animator
    from megaportraits.bundle import find_bundle
    from megaportraits.images import load_image
    from megaportraits.video import VideoReader

    bundle = find_bundle(args.bundle)
    animator = Animator(bundle)
    source = load_image(args.source, "source portrait")
    avatar = animator.prepare(source, source_path=args.source)
    with VideoReader(args.driver) as reader:
        # the header's frame count picks the frames while streaming; without one, count first
        count = reader.frame_count or _count_frames(args.driver)
        picks = sorted({min(count - 1, int(f * count)) for f in FRACTIONS})
        performance = animator.performance(avatar, float(reader.fps))
        drivers, outputs = [], []
        for index, frame in enumerate(reader):  # the whole stream up to the last pick, as the demo runs it
            out = performance(frame)
            if index in picks:
                drivers.append(_label(_cell(frame, args.cell), f"driver {index}"))
                outputs.append(_label(_cell(out, args.cell), f"output {index}"))
            if index >= picks[-1]:
                break
    first = [_label(_cell(source, args.cell), "source"),
             _label(np.zeros((args.cell, args.cell, 3), np.uint8), Path(str(bundle)).name[:20])]
    return np.concatenate([np.concatenate([first[0]] + drivers, 1), np.concatenate([first[1]] + outputs, 1)], 0)


if __name__ == "__main__":
    sys.exit(main())
