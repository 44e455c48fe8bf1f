"""CPU speed of LivePortrait: their PyTorch modules against our bundle, same random weights.

    python benchmarks/bench_liveportrait.py --repo PATH/TO/LivePortrait [--work DIR] [--runs 5]

Uses the work directory of ``tools/parity_liveportrait.py`` (their networks with seeded random
weights in their layout, and our bundle converted from them). Per thread count (1 and 2, torch
and ONNX Runtime alike) it times, in one loop that alternates the two sides call by call
(ours, theirs, ours, theirs, ...; which side goes first swaps every repeat, so a change in the
machine's load hits both alike), and prints medians of the repeats for:

* ``frame``: a driver frame to the rendered 512x512 image, as their pipeline runs it (motion
  extractor, relative rule, stitching, warping module, SPADE decoder) and as our SDK runs the
  bundle (driver graph, motion module, generator graph);
* each stage alone: ``appearance`` (F, once per avatar), ``motion`` (M: the bundle's driver
  graph), ``warping`` (W: dense motion, both 5-D samples, occlusion), ``decoder`` (G) and
  ``stitching`` (the MLP and its keypoint correction). Ours are ONNX graphs exported here from
  our modules in the form the bundle holds them (``convert.liveportrait.deployable``), cached
  in the work directory beside the bundle.

Both sides get the same inputs and every output is compared, so the figures are of equal work.
The machine (CPU, flags, versions) and its load average before and after are printed and kept.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("frame", "appearance", "motion", "warping", "decoder", "stitching")


def load_parity_tool():
    spec = importlib.util.spec_from_file_location("parity_liveportrait", ROOT / "tools" / "parity_liveportrait.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def session(path: Path, threads: int):
    """A session made as the SDK makes its own, with the op library registered."""
    from megaportraits.sessions import create_session, require_custom_op_library, session_options

    return create_session(path, ["CPUExecutionProvider"], session_options(threads, require_custom_op_library()))


class Stitched(torch.nn.Module):
    """The stitching stage as the generator graph runs it: the MLP's correction of the driving keypoints."""

    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, source_keypoints, driving_keypoints):
        from megaportraits_export.liveportrait.stitching import stitch

        return stitch(self.mlp, source_keypoints, driving_keypoints)


def stage_modules(ours) -> dict:
    """name -> (module, input names, output name, example inputs) for the stages exported alone."""
    from megaportraits_export.convert.liveportrait import deployable

    fast = deployable(ours)
    c = ours.config
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, c.image_size, c.image_size, generator=g)
    volume = torch.randn(2, c.reshape_channel, c.reshape_depth, c.feature_size, c.feature_size, generator=g)
    kp = torch.rand(2, c.num_kp, 3, generator=g) - 0.5
    feature = torch.randn(2, c.warp_channels, c.feature_size, c.feature_size, generator=g)
    return {
        "appearance": (fast.appearance_feature_extractor, ("source_image",), "feature_volume", (image,)),
        "warping": (fast.warping_module, ("feature_volume", "source_keypoints", "driving_keypoints"), "warped",
                    (volume, kp, kp + 0.05)),
        "decoder": (fast.spade_generator, ("feature",), "image", (feature,)),
        "stitching": (Stitched(fast.stitching), ("source_keypoints", "driving_keypoints"), "stitched_keypoints",
                      (kp, kp + 0.05)),
    }


def export_stages(ours, directory: Path, names=None, progress=print) -> dict:
    """Our stage graphs (made once, kept in ``directory``; ``names``: only those): name -> path.
    The decoder's takes minutes (its Winograd forms are thousands of nodes)."""
    from megaportraits_export.onnx_export import export_graph, save_graph

    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (module, inputs, output, example) in stage_modules(ours).items():
        if names is not None and name not in names:
            continue
        path = directory / f"{name}.onnx"
        if not path.is_file():
            progress(f"exporting our {name} stage to {path} ...")
            partial = path.with_suffix(".partial.onnx")
            save_graph(export_graph(module.eval(), example, inputs, (output,)), partial)
            partial.replace(path)
        paths[name] = path
    return paths


def timed(fn) -> tuple:
    started = time.perf_counter()
    out = fn()
    return (time.perf_counter() - started) * 1e3, out


def as_numpy(x) -> np.ndarray:
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def machine() -> dict:
    from megaportraits.benchmark.machine import machine_info

    info = machine_info()
    info["torch"] = torch.__version__
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", required=True, type=Path, help="a checkout of KwaiVGI/LivePortrait")
    p.add_argument("--work", type=Path, default=Path("parity_liveportrait_work"))
    p.add_argument("--runs", type=int, default=5, help="repeats of the alternating loop (medians over them)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    parity = load_parity_tool()
    config, classes, mlp_class, camera, fn = parity.import_theirs(args.repo.resolve())
    weights, bundle = args.work / "weights", args.work / "bundle"
    if not (bundle / "manifest.json").is_file():
        print(f"bench_liveportrait: error: no bundle in {args.work}; run tools/parity_liveportrait.py "
              f"--repo {args.repo} --work {args.work} first", file=sys.stderr)
        return 1
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
    stage_paths = export_stages(ours, args.work / "stages", args.stages)

    g = torch.Generator().manual_seed(7)
    source = torch.rand(1, 3, 256, 256, generator=g)
    driver = torch.rand(1, 3, 256, 256, generator=g)
    shim = parity.their_wrapper(fn, theirs)
    info = machine()
    print(f"machine: {info['cpu_model']}, {info['logical_cores']} logical cores ({info['usable_cores']} usable), "
          f"{' '.join(info['cpu_flags'])}; onnxruntime {info['onnxruntime']}, torch {info['torch']}; "
          f"load average {' '.join(f'{x:.2f}' for x in info['load_average'] or ())}", flush=True)
    results = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        sessions = {r: session(bundle / f"{r}.onnx", threads) for r in ("source", "driver", "generator")}
        stage_sessions = {name: session(path, threads) for name, path in stage_paths.items()}
        with torch.no_grad():
            # the source, prepared once by each side
            x_s_info = parity.their_kp_info(theirs, camera, source)
            f_s = theirs["appearance_feature_extractor"](source)
            x_s = fn["transform_keypoint"](None, x_s_info)
            first = parity.their_kp_info(theirs, camera, driver)
            src = sessions["source"].run(None, {"source_image": source.numpy()})
            volume, source_motion = src[0], mlp.decode(src[1:])
            x_s_ours = mlp.own_keypoints(source_motion)
            composer = mlp.KeypointComposer(source_motion, "relative")
            composer.set_reference(mlp.decode(sessions["driver"].run(list(LIVEPORTRAIT_MOTION),
                                                                     {"driver_image": driver.numpy()})))
            driver_np = driver.numpy()
            x_d_raw = parity.their_relative_keypoints(fn, camera, x_s_info, [first, first])[1]
            x_d = shim.stitching(x_s, x_d_raw)
            warped = theirs["warping_module"](f_s, kp_driving=x_d, kp_source=x_s)["out"]
            x_d_np, x_d_raw_np, warped_np = x_d.numpy(), x_d_raw.numpy(), warped.numpy()

            def their_frame():
                info = parity.their_kp_info(theirs, camera, driver)
                (kp,) = parity.their_relative_keypoints(fn, camera, x_s_info, [first, info])[1:]
                kp = shim.stitching(x_s, kp)
                return theirs["spade_generator"](theirs["warping_module"](f_s, kp_driving=kp, kp_source=x_s)["out"])

            def our_frame():
                motion = mlp.decode(sessions["driver"].run(list(LIVEPORTRAIT_MOTION), {"driver_image": driver_np}))
                return sessions["generator"].run(["image"], {"feature_volume": volume, "source_keypoints": x_s_ours,
                                                             "driving_keypoints": composer(motion)})[0]

            def run_stage(name, feeds):
                return lambda: stage_sessions[name].run(None, feeds)[0]

            pairs = {  # stage -> (ours, theirs)
                "frame": (our_frame, their_frame),
                "appearance": (run_stage("appearance", {"source_image": source.numpy()}),
                               lambda: theirs["appearance_feature_extractor"](source)),
                "motion": (lambda: sessions["driver"].run(None, {"driver_image": driver_np})[-1],
                           lambda: theirs["motion_extractor"](driver)["kp"].reshape(1, -1, 3)),
                "warping": (run_stage("warping", {"feature_volume": volume, "source_keypoints": x_s_ours,
                                                  "driving_keypoints": x_d_np}),
                            lambda: theirs["warping_module"](f_s, kp_driving=x_d, kp_source=x_s)["out"]),
                "decoder": (run_stage("decoder", {"feature": warped_np}),
                            lambda: theirs["spade_generator"](warped)),
                "stitching": (run_stage("stitching", {"source_keypoints": x_s_ours, "driving_keypoints": x_d_raw_np}),
                              lambda: shim.stitching(x_s, x_d_raw)),
            }
            pairs = {k: v for k, v in pairs.items() if k in args.stages}
            load_before = list(os.getloadavg())
            times = {k: ([], []) for k in pairs}
            errors = {}
            for name, (ours_fn, theirs_fn) in pairs.items():  # warm-up, and the outputs compared
                errors[name] = float(np.abs(as_numpy(ours_fn()) - as_numpy(theirs_fn())).max())
            for r in range(args.runs):
                for name, (ours_fn, theirs_fn) in pairs.items():
                    order = ((0, ours_fn), (1, theirs_fn)) if r % 2 == 0 else ((1, theirs_fn), (0, ours_fn))
                    for side, f in order:
                        times[name][side].append(timed(f)[0])
                print(f"  {threads} thread(s): repeat {r + 1}/{args.runs} done", file=sys.stderr, flush=True)
        load_after = list(os.getloadavg())
        row = {}
        for name, (mine, their) in times.items():
            row[name] = {"our_ms": statistics.median(mine), "their_ms": statistics.median(their),
                         "our_all_ms": mine, "their_all_ms": their, "max_abs": errors[name]}
        results[threads] = {"stages": row, "load_average_before": load_before, "load_average_after": load_after}
        print(f"{threads} thread(s), medians of {args.runs} alternating repeats (load average "
              f"{load_before[0]:.2f} -> {load_after[0]:.2f}):", flush=True)
        for name, fig in row.items():
            print(f"  {name:<11} theirs {fig['their_ms']:9.1f} ms   ours {fig['our_ms']:9.1f} ms   "
                  f"x{fig['their_ms'] / fig['our_ms']:.2f}   (max abs {fig['max_abs']:.1e})", flush=True)
    if args.json:
        from megaportraits.files import atomic_output

        with atomic_output(args.json) as tmp:
            Path(tmp).write_text(json.dumps({"runs": args.runs, "machine": info, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
