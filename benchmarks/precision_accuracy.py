"""How far a reduced-precision bundle's frames are from its fp32 bundle's: image PSNR per frame.

The reduced bundle is made from the fp32 one by the exporter's own conversion
(``megaportraits_export.onnx_export.precision``, int8 calibrated on synthetic training heads),
then both animate the same held-out synthetic identities (evaluation seeds, never seen by the
calibration) through the same sessions the SDK builds: source fp32 once per avatar, then the
driver and generator graphs per frame, cross-driven (avatar i, motion of identity i + 1).

    python benchmarks/precision_accuracy.py                       # the bundled demo model, int8
    python benchmarks/precision_accuracy.py --bundle DIR --precision fp16 --pairs 32 --json
    python benchmarks/precision_accuracy.py --graph student        # the shipped demo student, int8
    python benchmarks/precision_accuracy.py --graph enhancer --bundle DIR_WITH_ENHANCER

Prints the PSNR (dB, images in [0, 1]) of every frame's image against fp32: median, minimum,
and the PSNR of the whole set (mean squared error over all frames), plus the pose and
expression error of the driver graph.

``--graph student`` and ``--graph enhancer`` score the graphs added after the base export: the
reduced flavour is made by the exporter's ``add-precision`` routine (student calibrated on
synthetic training heads as driver crops, the enhancer on the base model's renderings of them),
then the student renders each held-out frame as its driver crop (the avatars in turn), the
enhancer enlarges the fp32 base model's rendering of each held-out cross-driven frame; both
flavours of the graph see the same inputs. The matte's PSNR is printed beside the image's.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from megaportraits import manifest as mf
from megaportraits.schema import GRAPH_IO, GENERATOR, SOURCE, DRIVER


def demo_bundle() -> Path:
    import megaportraits

    return Path(megaportraits.__file__).resolve().parent / "assets" / "demo_bundle"


def held_out_frames(image_size: int, count: int, seed: int = 1) -> np.ndarray:
    """(count, 3, S, S) float32: evaluation identities in random poses and expressions."""
    from megaportraits_export.data.synthetic import HeadMotion, Identity, identity_seeds, render

    rng = np.random.default_rng(seed)
    images = []
    for identity_seed in identity_seeds("eval", count):
        motion = HeadMotion.random(rng)
        images.append(render(Identity.sample(identity_seed), motion.pose, motion.expression, image_size))
    return np.stack([i.transpose(2, 0, 1) for i in images]).astype(np.float32) / 255.0


def reduced_copy(bundle: Path, precision: str, workdir: Path, keep_float: tuple = ()) -> Path:
    """A copy of ``bundle`` whose per-frame graphs are converted to ``precision``."""
    from megaportraits_export.onnx_export.precision import convert_written_graphs, record_conversion

    out = workdir / f"{bundle.name}-{precision}"
    shutil.copytree(bundle, out)
    manifest = mf.load_manifest(out)
    report = convert_written_graphs(out, manifest.graphs, precision, manifest.image_size,
                                    matte=manifest.has_matte, keep_float=keep_float)
    record_conversion(manifest, report)
    mf.write_manifest(out, manifest)
    return out


class BundleRunner:
    """The bundle's three graphs in CPU sessions built as the SDK builds them."""

    def __init__(self, bundle: Path, threads: int = 1):
        from megaportraits import sessions

        self.manifest = mf.load_manifest(bundle)
        flavour = sessions.choose_flavour(self.manifest)
        if flavour.problem:
            raise SystemExit(f"error: {flavour.problem}")
        options = sessions.session_options(threads, flavour.library)
        self.sessions = {
            role: sessions.create_session(bundle / self.manifest.graph_file(role, flavour.portable),
                                          ["CPUExecutionProvider"], options)
            for role in (SOURCE, DRIVER, GENERATOR)}

    def run(self, role: str, feed: dict) -> dict:
        names = [o.name for o in self.manifest.graphs[role].outputs]
        return dict(zip(names, self.sessions[role].run(names, feed)))

    def frames(self, images: np.ndarray, avatar_runner: "BundleRunner | None" = None):
        """(images, motions) of avatar i driven by frame i + 1; the avatars come from
        ``avatar_runner`` (the fp32 bundle) when given, so both sides share the avatar state."""
        source = (avatar_runner or self)
        out, motions = [], []
        for i in range(len(images)):
            avatar = source.run(SOURCE, {"source_image": images[i:i + 1]})
            motion = self.run(DRIVER, {"driver_image": images[(i + 1) % len(images)][None]})
            state = {**avatar, **motion}
            rendering = self.run(GENERATOR, {n: state[n] for n in GRAPH_IO[GENERATOR].inputs})
            out.append(rendering["image"][0])
            motions.append(motion)
        return np.stack(out), motions


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def compare(reference: Path, reduced: Path, pairs: int, threads: int = 1) -> dict:
    ref, low = BundleRunner(reference, threads), BundleRunner(reduced, threads)
    images = held_out_frames(ref.manifest.image_size, pairs)
    ref_images, ref_motions = ref.frames(images)
    low_images, low_motions = low.frames(images, avatar_runner=ref)
    per_frame = [psnr(a, b) for a, b in zip(ref_images, low_images)]
    pose_error = max(float(np.abs(a["pose"] - b["pose"]).max()) for a, b in zip(ref_motions, low_motions))
    expression_error = max(float(np.abs(a["expression"] - b["expression"]).max() /
                                 max(np.abs(a["expression"]).max(), 1e-12))
                           for a, b in zip(ref_motions, low_motions))
    return {
        "reference": str(reference), "precision": low.manifest.precision,
        "graph_precisions": {role: g.precision for role, g in low.manifest.graphs.items()},
        "calibration": low.manifest.provenance.get("precision", {}).get("calibration"),
        "pairs": pairs, "image_size": ref.manifest.image_size,
        "psnr_db_median": float(np.median(per_frame)), "psnr_db_min": float(np.min(per_frame)),
        "psnr_db_all": psnr(ref_images, low_images),
        "max_abs_image": float(np.abs(ref_images - low_images).max()),
        "pose_max_abs": pose_error, "expression_max_rel": expression_error,
    }


def flavoured_copy(bundle: Path, precision: str, workdir: Path) -> Path:
    """A copy of ``bundle`` whose student or enhancer graph also carries ``precision``."""
    from megaportraits_export.onnx_export.add_precision import add_precision

    return add_precision(bundle, workdir / f"{bundle.name}-{precision}", ("fp32", precision))


def graph_session(bundle: Path, role: str, precision: str, threads: int = 1):
    """A CPU session of the ``role`` graph's ``precision`` flavour, as the SDK builds it."""
    from megaportraits import sessions

    manifest = mf.load_manifest(bundle)
    return sessions.create_session(bundle / manifest.graph_file(role, precision=precision),
                                   ["CPUExecutionProvider"], sessions.session_options(threads))


def graph_inputs(bundle: Path, role: str, pairs: int, threads: int = 1) -> list:
    """The held-out inputs of the student (driver crops, the avatars in turn) or of the enhancer
    (the fp32 base model's renderings, avatar i driven by frame i + 1)."""
    from megaportraits.schema import AVATAR_INDEX, BASE_IMAGE, BASE_MATTE, DRIVER_IMAGE, IMAGE_OUTPUT, MATTE_OUTPUT

    manifest = mf.load_manifest(bundle)
    images = held_out_frames(manifest.image_size, pairs)
    if role == "student":
        count = len(manifest.student["avatars"])
        return [{DRIVER_IMAGE: images[i:i + 1], AVATAR_INDEX: np.array([i % count], np.int64)} for i in range(pairs)]
    base = BundleRunner(bundle, threads)
    feeds = []
    for i in range(pairs):
        state = {**base.run(SOURCE, {"source_image": images[i:i + 1]}),
                 **base.run(DRIVER, {"driver_image": images[(i + 1) % pairs][None]})}
        rendering = base.run(GENERATOR, {n: state[n] for n in GRAPH_IO[GENERATOR].inputs})
        feeds.append({BASE_IMAGE: rendering[IMAGE_OUTPUT],
                      **({BASE_MATTE: rendering[MATTE_OUTPUT]} if manifest.has_matte else {})})
    return feeds


def cv2_bicubic(image: np.ndarray, size: int) -> np.ndarray:
    """(3, s, s) -> (3, size, size) bicubic (half-pixel centres, a = -0.75, as the enhancer's own)."""
    import cv2

    return cv2.resize(image.transpose(1, 2, 0), (size, size), interpolation=cv2.INTER_CUBIC).transpose(2, 0, 1)


def compare_graph(reference: Path, reduced: Path, role: str, precision: str, pairs: int, threads: int = 1) -> dict:
    """PSNR of the ``role`` graph's ``precision`` flavour against its fp32 file on held-out inputs."""
    from megaportraits.schema import IMAGE_OUTPUT, MATTE_OUTPUT

    manifest = mf.load_manifest(reduced)
    outputs = [t.name for t in manifest.graphs[role].outputs]
    fp32, low = graph_session(reduced, role, "fp32", threads), graph_session(reduced, role, precision, threads)
    feeds = graph_inputs(reduced, role, pairs, threads)
    ref = [dict(zip(outputs, fp32.run(outputs, f))) for f in feeds]
    got = [dict(zip(outputs, low.run(outputs, f))) for f in feeds]
    per_frame = [psnr(a[IMAGE_OUTPUT], b[IMAGE_OUTPUT]) for a, b in zip(ref, got)]
    timings = {"fp32": [], precision: []}
    for _ in range(3):  # interleaved per frame, so both flavours see the same machine load
        for feed in feeds:
            for name, session in (("fp32", fp32), (precision, low)):
                started = time.perf_counter()
                session.run(outputs, feed)
                timings[name].append(time.perf_counter() - started)
    ref_images = np.concatenate([r[IMAGE_OUTPUT] for r in ref])
    low_images = np.concatenate([g[IMAGE_OUTPUT] for g in got])
    result = {
        "reference": str(reference), "graph": role, "precision": precision,
        "calibration": manifest.provenance.get("precision_flavours", {}).get(precision, {})
                       .get("calibration_by_role", {}).get(role),
        "pairs": pairs, "image_size": int(ref_images.shape[-1]),
        "psnr_db_median": float(np.median(per_frame)), "psnr_db_min": float(np.min(per_frame)),
        "psnr_db_all": psnr(ref_images, low_images),
        "max_abs_image": float(np.abs(ref_images - low_images).max()),
        "ms_per_frame_median": {p: 1000 * float(np.median(t)) for p, t in timings.items()},
        "threads": threads,
        "file_bytes": {p: (reduced / manifest.graph_file(role, precision=p)).stat().st_size
                       for p in ("fp32", precision)},
    }
    if role == "enhancer":  # the enhancer adds a residual to bicubic: how much of that change int8 keeps
        from megaportraits.schema import BASE_IMAGE

        bicubic = np.stack([cv2_bicubic(f[BASE_IMAGE][0], ref_images.shape[-1]) for f in feeds])
        change = float(np.sqrt(np.mean((ref_images.astype(np.float64) - bicubic) ** 2)))
        error = float(np.sqrt(np.mean((ref_images.astype(np.float64) - low_images) ** 2)))
        result["rms_change_over_bicubic"], result["rms_error"] = change, error
    if MATTE_OUTPUT in outputs:
        mattes = [psnr(a[MATTE_OUTPUT], b[MATTE_OUTPUT]) for a, b in zip(ref, got)]
        result["matte_psnr_db_median"], result["matte_psnr_db_min"] = float(np.median(mattes)), float(np.min(mattes))
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, default=None,
                   help="fp32 bundle (default: the bundled demo model; --graph student: the shipped demo student)")
    p.add_argument("--graph", choices=("base", "student", "enhancer"), default="base",
                   help="which graphs to score: the base per-frame graphs (default), a student bundle's student, "
                        "or a bundle's enhancer")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads (default 1)")
    p.add_argument("--precision", choices=("int8", "fp16"), default="int8")
    p.add_argument("--pairs", type=int, default=24, help="held-out frames to animate (default 24)")
    p.add_argument("--keep-float", default=None,
                   help="int8: comma list of first,last (convolutions kept in float), or none "
                        "(default: the exporter's choice)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.pairs < 2:
        print("error: --pairs must be at least 2", file=sys.stderr)
        return 1
    if args.graph == "student" and args.bundle is None:
        from megaportraits.student import DEMO_STUDENT

        args.bundle = DEMO_STUDENT
    if args.graph == "enhancer" and args.bundle is None:
        print("error: --graph enhancer needs --bundle DIR, a bundle with an enhancer (the demo model ships none; "
              "make one with python -m megaportraits_export add-enhancer)", file=sys.stderr)
        return 1
    bundle = args.bundle or demo_bundle()
    try:
        reference = mf.load_manifest(bundle)
    except mf.BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.graph != "base":
        return _main_graph(args, bundle, reference)
    if reference.precision != "fp32":
        print(f"error: {bundle} is a {reference.precision} bundle; give the fp32 bundle to compare against",
              file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from megaportraits_export.onnx_export.precision import DEFAULT_KEEP_FLOAT

    keep_float = DEFAULT_KEEP_FLOAT if args.keep_float is None else tuple(
        k for k in args.keep_float.split(",") if k and k != "none")
    if set(keep_float) - {"first", "last"}:
        print(f"error: --keep-float takes first, last or none, not {args.keep_float!r}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="megaportraits-precision-") as tmp:
        reduced = reduced_copy(bundle, args.precision, Path(tmp), keep_float)
        result = compare(bundle, reduced, args.pairs)
    result["keep_float"] = list(keep_float)
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.precision} vs fp32 on {bundle} ({result['pairs']} held-out cross-driven frames, "
              f"{result['image_size']} px, convolutions kept in float: {','.join(keep_float) or 'none'}): image PSNR median "
              f"{result['psnr_db_median']:.2f} dB, min {result['psnr_db_min']:.2f} dB, all {result['psnr_db_all']:.2f} dB; "
              f"max |image diff| {result['max_abs_image']:.4f}; pose max abs {result['pose_max_abs']:.2e}, "
              f"expression max rel {result['expression_max_rel']:.2e}")
    return 0


def _main_graph(args, bundle: Path, reference) -> int:
    """``--graph student|enhancer``: one graph's flavour against its fp32 file."""
    role = args.graph
    if role not in reference.graphs:
        print(f"error: {bundle} has no {role} graph; give a {'student bundle (distill)' if role == 'student' else 'bundle with an enhancer (add-enhancer)'}",
              file=sys.stderr)
        return 1
    if reference.graphs[role].precision != "fp32":
        print(f"error: {bundle}'s {role} graph is {reference.graphs[role].precision}; give its fp32 bundle",
              file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="megaportraits-precision-") as tmp:
        reduced = flavoured_copy(Path(bundle), args.precision, Path(tmp))
        result = compare_graph(bundle, reduced, role, args.precision, args.pairs, args.threads)
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    matte = (f"; matte PSNR median {result['matte_psnr_db_median']:.2f} dB, min {result['matte_psnr_db_min']:.2f} dB"
             if "matte_psnr_db_median" in result else "")
    if "rms_change_over_bicubic" in result:
        matte += (f"; rms error {result['rms_error']:.5f} vs the fp32 enhancer's rms change over bicubic "
                  f"{result['rms_change_over_bicubic']:.5f}")
    sizes, ms = result["file_bytes"], result["ms_per_frame_median"]
    matte += (f"; per frame ({args.threads} thread(s), interleaved, median) fp32 {ms['fp32']:.2f} ms, "
              f"{args.precision} {ms[args.precision]:.2f} ms ({ms['fp32'] / ms[args.precision]:.2f}x)")
    print(f"{args.precision} vs fp32, {role} graph of {bundle} ({result['pairs']} held-out frames, "
          f"{result['image_size']} px): image PSNR median {result['psnr_db_median']:.2f} dB, min "
          f"{result['psnr_db_min']:.2f} dB, all {result['psnr_db_all']:.2f} dB; max |image diff| "
          f"{result['max_abs_image']:.4f}{matte}; files {sizes['fp32'] / 1e6:.2f} MB fp32, "
          f"{sizes[args.precision] / 1e6:.2f} MB {args.precision}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
