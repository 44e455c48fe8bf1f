"""CPU speed of LivePortrait: their PyTorch modules against our bundle, same random weights.

    python benchmarks/bench_liveportrait.py --repo PATH/TO/LivePortrait [--work DIR] [--runs 5]

Uses the work directory of ``tools/parity_liveportrait.py`` (their networks with seeded random
weights in their layout, and our bundle converted from them; made here if missing). Per thread
count (1 and 2, torch and ONNX Runtime alike) it prints medians of:

* per frame: a driver frame to the rendered 512x512 image, as their pipeline runs it
  (motion extractor, relative rule, stitching, warping module, SPADE decoder) and as our SDK
  runs the bundle (driver graph, motion module, generator graph);
* the warping module alone (dense motion + both 5-D samples + occlusion), theirs in PyTorch,
  ours as an ONNX graph with GridSample3D (exported here from our module).

Both sides get the same inputs; results are also compared so the figures are of equal work.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def load_parity_tool():
    spec = importlib.util.spec_from_file_location("parity_liveportrait", ROOT / "tools" / "parity_liveportrait.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def median_ms(fn, runs: int, warmup: int = 1) -> float:
    """The benchmark package's timing loop (megaportraits.benchmark.stats.measure)."""
    from megaportraits.benchmark.stats import measure

    return measure(fn, warmup=warmup, runs=runs, min_runs=1).median_ms


def session(path: Path, threads: int):
    """A session made as the SDK makes its own, with the op library registered."""
    from megaportraits.sessions import create_session, require_custom_op_library, session_options

    return create_session(path, ["CPUExecutionProvider"], session_options(threads, require_custom_op_library()))


def export_warping(ours, path: Path) -> None:
    """Our warping module alone as an ONNX graph, in the form the bundle holds it (both samples
    on GridSample3D, the dense motion on depth slices: ``convert.liveportrait.deployable``)."""
    from megaportraits_export.convert.liveportrait import deployable
    from megaportraits_export.onnx_export import export_graph, save_graph

    c = ours.config
    g = torch.Generator().manual_seed(1)
    volume = torch.randn(2, c.reshape_channel, c.reshape_depth, c.feature_size, c.feature_size, generator=g)
    kp = torch.rand(2, c.num_kp, 3, generator=g) - 0.5
    program = export_graph(deployable(ours).warping_module, (volume, kp, kp + 0.05),
                           ("feature_volume", "source_keypoints", "driving_keypoints"), ("warped",))
    save_graph(program, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", required=True, type=Path, help="a checkout of KwaiVGI/LivePortrait")
    p.add_argument("--work", type=Path, default=Path("parity_liveportrait_work"))
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    parity = load_parity_tool()
    config, classes, mlp_class, camera, fn = parity.import_theirs(args.repo.resolve())
    weights, bundle = args.work / "weights", args.work / "bundle"
    if not (bundle / "manifest.json").is_file():
        sys.exit(f"bench_liveportrait: error: no bundle in {args.work}; run tools/parity_liveportrait.py "
                 f"--repo {args.repo} --work {args.work} first")
    theirs = parity.build_theirs(config, classes, mlp_class)
    parity.check_their_loader_accepts(config, classes, mlp_class, weights)
    for name in parity.NETWORK_CLASSES:
        theirs[name].load_state_dict(torch.load(weights / "base_models" / f"{name}.pth", weights_only=True))
    s = torch.load(weights / "retargeting_models" / "stitching_retargeting_module.pth", weights_only=True)
    theirs["stitching"].load_state_dict({k[len("module."):]: v for k, v in s["retarget_shoulder"].items()})

    from megaportraits import motion_liveportrait as mlp
    from megaportraits.schema import LIVEPORTRAIT_MOTION
    from megaportraits_export.liveportrait.weights import load_networks

    ours, _ = load_networks(weights)
    warping_path = args.work / "warping_only.onnx"
    if not warping_path.is_file():
        export_warping(ours, warping_path)

    g = torch.Generator().manual_seed(7)
    source = torch.rand(1, 3, 256, 256, generator=g)
    driver = torch.rand(1, 3, 256, 256, generator=g)
    shim = parity.their_wrapper(fn, theirs)
    results = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        sessions = {r: session(bundle / f"{r}.onnx", threads) for r in ("source", "driver", "generator")}
        warp_session = session(warping_path, threads)
        with torch.no_grad():
            # their pipeline, per frame (after the source is prepared once)
            x_s_info = parity.their_kp_info(theirs, camera, source)
            f_s = theirs["appearance_feature_extractor"](source)
            x_s = fn["transform_keypoint"](None, x_s_info)
            first = parity.their_kp_info(theirs, camera, driver)

            def their_frame():
                info = parity.their_kp_info(theirs, camera, driver)
                (x_d,) = parity.their_relative_keypoints(fn, camera, x_s_info, [first, info])[1:]
                x_d = shim.stitching(x_s, x_d)
                return theirs["spade_generator"](theirs["warping_module"](f_s, kp_driving=x_d, kp_source=x_s)["out"])

            x_d_fixed = shim.stitching(x_s, parity.their_relative_keypoints(fn, camera, x_s_info, [first, first])[1])

            def their_warp():
                return theirs["warping_module"](f_s, kp_driving=x_d_fixed, kp_source=x_s)["out"]

            # our SDK path
            src = sessions["source"].run(None, {"source_image": source.numpy()})
            volume, source_motion = src[0], mlp.decode(src[1:])
            x_s_ours = mlp.own_keypoints(source_motion)
            composer = mlp.KeypointComposer(source_motion, "relative")
            composer.set_reference(mlp.decode(sessions["driver"].run(list(LIVEPORTRAIT_MOTION),
                                                                     {"driver_image": driver.numpy()})))
            driver_np = driver.numpy()

            def our_frame():
                motion = mlp.decode(sessions["driver"].run(list(LIVEPORTRAIT_MOTION), {"driver_image": driver_np}))
                return sessions["generator"].run(["image"], {"feature_volume": volume, "source_keypoints": x_s_ours,
                                                             "driving_keypoints": composer(motion)})[0]

            x_d_np = x_d_fixed.numpy()  # the stitched keypoints: the warping graph has no stitching

            def our_warp():
                return warp_session.run(None, {"feature_volume": volume, "source_keypoints": x_s_ours,
                                               "driving_keypoints": x_d_np})[0]

            frame_err = float(np.abs(our_frame() - their_frame().numpy()).max())
            warp_err = float(np.abs(our_warp() - their_warp().numpy()).max())
            row = {"their_frame_ms": median_ms(their_frame, args.runs), "our_frame_ms": median_ms(our_frame, args.runs),
                   "their_warp_ms": median_ms(their_warp, args.runs), "our_warp_ms": median_ms(our_warp, args.runs),
                   "frame_max_abs": frame_err, "warp_max_abs": warp_err}
        results[threads] = row
        print(f"{threads} thread(s): per frame  theirs {row['their_frame_ms']:8.0f} ms   ours {row['our_frame_ms']:8.0f} ms"
              f"   x{row['their_frame_ms'] / row['our_frame_ms']:.2f}   (image max abs {frame_err:.1e})", flush=True)
        print(f"{threads} thread(s): warping    theirs {row['their_warp_ms']:8.0f} ms   ours {row['our_warp_ms']:8.0f} ms"
              f"   x{row['their_warp_ms'] / row['our_warp_ms']:.2f}   (features max abs {warp_err:.1e})", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "torch": torch.__version__, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
