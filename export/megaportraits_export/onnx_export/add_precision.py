"""``python -m megaportraits_export add-precision BUNDLE -o OUT --precision fp32,int8[,fp16]``:
an existing bundle's student or enhancer graph in other precisions, written to a new bundle.

The student (``distill``) and the enhancer (``add-enhancer``) are added to bundles after the
base export, so their reduced-precision flavours are too: this command copies ``BUNDLE`` and
converts its ``student`` graph (a student bundle) or its ``enhancer`` graph (a bundle with one)
by the exporter's own routine (:func:`.precision.add_graph_flavours`), the fp32 file kept as the
main one. int8 calibrates on the frames each graph is meant for: the student on driver crops
(the synthetic training heads by default, or ``--calibration-frames DIR``), the enhancer on the
base model's own renderings of those frames. ``distill --precision`` and ``add-enhancer
--precision`` call the same routine while they write their bundle.

The input bundle is never modified; the output is staged and renamed into place at the end.

Measured (benchmarks/precision_accuracy.py, 1 thread, loaded 2-core box): the demo student's
int8 flavour is 2.75x faster than its fp32 (2.05 vs 5.64 ms per frame, 64 frames interleaved,
load 4.0; image PSNR vs fp32 median 50.7, min 43.2 dB), since issue 18's int8 graph rewrites
(:mod:`.int8_graph`; before them it was no faster, 0.97x: the float work between its small
convolutions outweighed the int8 GEMMs). The SDK's ``auto`` picks int8 on the CPU whenever a
bundle carries it. The enhancer's (256 px output) measured 1.18x faster before those rewrites.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from megaportraits import manifest as mf
from megaportraits.schema import ENHANCER, STUDENT
from megaportraits_export.onnx_export.errors import ExportError


def flavoured_roles(manifest) -> tuple:
    """The roles of ``manifest`` this command converts: the student graph, the enhancer graph."""
    return tuple(role for role in (STUDENT, ENHANCER) if role in manifest.graphs)


def calibration_feeds_for(bundle_dir: Path, manifest, role: str, frames) -> tuple:
    """(int8 feeds, what they are) of the ``role`` graph from the calibration ``frames``."""
    from megaportraits_export.onnx_export import precision as pr

    if role == STUDENT:
        count = len(manifest.student["avatars"])
        return pr.student_calibration_feeds(frames, count), f"driver crops: {frames.origin}, {count} avatar(s)"
    return (pr.enhancer_calibration_feeds(bundle_dir, manifest, frames),
            f"the base model's fp32 renderings of {frames.origin}, frame i's avatar driven by frame i + 1")


def check_fp32_first(precisions: tuple) -> None:
    """The student and enhancer graphs keep their fp32 main file; the others become flavours."""
    if not precisions or precisions[0] != "fp32":
        raise ExportError(f"--precision {','.join(precisions)}: start with fp32 (the main file stays fp32; the "
                          "others become flavours beside it), e.g. fp32,int8")


def add_flavours_in_place(staging: Path, manifest, precisions: tuple, frames=None) -> tuple:
    """Give the student/enhancer graphs of the bundle staged in ``staging`` (``manifest`` in
    memory, written by the caller) their ``precisions`` flavours; returns the roles converted."""
    from megaportraits_export.onnx_export import precision as pr

    check_fp32_first(precisions)
    roles = flavoured_roles(manifest)
    reduced = tuple(p for p in precisions if p != "fp32")
    if not reduced:
        return ()
    if "int8" in reduced and frames is None:
        frames = pr.synthetic_calibration_frames(manifest.image_size)
    for role in roles:
        feeds, origin = calibration_feeds_for(staging, manifest, role, frames) if "int8" in reduced else (None, None)
        pr.add_graph_flavours(staging, manifest, role, reduced, feeds, origin)
    return roles


def add_precision(bundle: str | Path, output: str | Path, precisions: tuple, frames=None) -> Path:
    """Write at ``output`` a copy of ``bundle`` whose student/enhancer graphs carry ``precisions``."""
    from megaportraits_export.onnx_export.writing import check_output_dir, staged_bundle

    bundle, output = Path(bundle), Path(output)
    manifest = mf.load_manifest(bundle)
    mf.verify_files(bundle, manifest)
    if output.resolve() == bundle.resolve():
        raise ExportError(f"--output {output} is the input bundle; give a new directory (the input is never modified)")
    if not flavoured_roles(manifest):
        raise ExportError(f"{bundle} has neither a student nor an enhancer graph; give the base graphs their "
                          "precisions with export --precision")
    check_fp32_first(precisions)
    check_output_dir(output)
    with staged_bundle(output) as staging:
        for name in manifest.files:
            shutil.copy2(bundle / name, staging / name)
        add_flavours_in_place(staging, manifest, precisions, frames)
        mf.write_manifest(staging, manifest)
    return output


def main(argv=None) -> int:
    from megaportraits_export import command
    from megaportraits_export.onnx_export.precision import CALIBRATION_FRAMES

    parser = command.parser("add-precision", "give a bundle's student or enhancer graph int8/fp16 flavours "
                                             "(written to a new directory)")
    parser.add_argument("bundle", help="a student bundle, or a bundle with an enhancer (not modified)")
    parser.add_argument("-o", "--output", required=True, help="the new bundle's directory")
    parser.add_argument("--precision", default="fp32,int8", metavar="fp32,int8[,fp16]",
                        help="the precisions the graph is carried in, fp32 first (default fp32,int8)")
    parser.add_argument("--calibration-frames", metavar="DIR",
                        help=f"int8: calibrate on up to {CALIBRATION_FRAMES} face images of DIR "
                             "(default: the synthetic training heads)")
    args = parser.parse_args(argv)
    return command.run(_add_precision, args)


def _add_precision(args) -> int:
    from megaportraits_export.onnx_export.precision import calibration_frames_from, parse_precisions

    precisions = parse_precisions(args.precision)
    frames = None
    if args.calibration_frames:
        if "int8" not in precisions:
            raise ExportError("--calibration-frames calibrates int8 quantization; add int8 to --precision")
        frames = calibration_frames_from(args.calibration_frames, mf.load_manifest(args.bundle).image_size)
    out = add_precision(args.bundle, args.output, precisions, frames)
    manifest = mf.load_manifest(out)
    carried = ", ".join(f"{role} {'/'.join(manifest.graphs[role].precisions)}" for role in flavoured_roles(manifest))
    print(f"wrote {out}: {carried}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
