#!/usr/bin/env python
"""Make the SDK's bundled demo: train, evaluate, export the demo model; render its clips.

Reproduces everything under ``sdk/megaportraits/assets/`` from nothing but this repository:

1. train in two stages (skipped with ``--checkpoint``; ``--resume`` continues an interrupted
   run exactly): ``configs/demo128_synthetic.toml`` (whole images, one process), then
   ``configs/demo128_matte.toml`` (fine-tuned on the foreground with a matte, two processes
   under torchrun);
2. evaluate the checkpoint on held-out synthetic identities against the "source unchanged"
   baseline and store the numbers in its provenance (which the exporter copies into the
   bundle's manifest);
3. export the bundle into ``assets/demo_bundle/`` (custom-op graphs plus portable twins), with
   ``--enhancer`` add the demo enhancer to it (128 -> 256; trained on the base's weights by
   ``configs/enhancer_demo128.toml``, scored by ``evaluate-enhancer --write-provenance``), and
   check that all the package's assets with it stay within ``megaportraits.bundle.ASSET_BUDGET_BYTES``;
4. evaluate the bundle through the SDK, as a check that export kept the numbers;
5. render ``demo_source.png`` (a held-out identity, framed like the training data, 256x256) and
   ``demo_driver.mp4`` (another held-out identity talking and turning, 5 s at 25 fps, H.264).

    python tools/make_demo_assets.py                      # all of it (about 2.5 hours on 2 cores)
    python tools/make_demo_assets.py --checkpoint runs/demo128_matte/model_last.pt
    python tools/make_demo_assets.py --checkpoint runs/demo128_from_bundle/model_last.pt \
        --enhancer runs/enhancer_demo128/model_last.pt   # re-exported base + the demo enhancer
    python tools/make_demo_assets.py --clips-only          # only step 5

Every step is a public command (``python -m megaportraits_export train|evaluate|export``); this
script only runs them in order with the demo's settings, printing each command first.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "sdk" / "megaportraits" / "assets"
BUNDLE = ASSETS / "demo_bundle"
SOURCE_PNG = ASSETS / "demo_source.png"
DRIVER_MP4 = ASSETS / "demo_driver.mp4"
STAGES = (  # (config, processes, where its last weights land)
    (REPO / "configs" / "demo128_synthetic.toml", 1, REPO / "runs" / "demo128" / "model_last.pt"),
    (REPO / "configs" / "demo128_matte.toml", 2, REPO / "runs" / "demo128_matte" / "model_last.pt"),
)

CLIP_SIZE = 256
CLIP_FPS = 25
CLIP_SECONDS = 5
# Held-out identities (seeds >= EVAL_IDENTITY_SEED_OFFSET, never trained on), picked so the
# SDK's Haar face detector finds both faces (for `megaportraits demo --crop`).
SOURCE_IDENTITY = 107          # offset + 107: short dark hair, no glasses
DRIVER_IDENTITY = 100          # offset + 100: curly hair
DRIVER_MOTION_SEED = 2026
EVAL_PAIRS = 48


def run(*args: str) -> None:
    command = [sys.executable, "-m", *args]
    print("+", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def render_clips() -> None:
    """The demo portrait and the driving clip, both held-out synthetic identities."""
    import av
    import cv2

    from megaportraits_export.data import synthetic

    offset = synthetic.EVAL_IDENTITY_SEED_OFFSET
    source = synthetic.Identity.sample(offset + SOURCE_IDENTITY)
    portrait = synthetic.render(source, synthetic.Pose(yaw=0.05), synthetic.Expression(smile=0.3), CLIP_SIZE)
    ASSETS.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(SOURCE_PNG), cv2.cvtColor(portrait, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {SOURCE_PNG}")

    driver = synthetic.Identity.sample(offset + DRIVER_IDENTITY)
    motions = synthetic.random_motion_track(np.random.default_rng(DRIVER_MOTION_SEED),
                                            CLIP_SECONDS * CLIP_FPS, fps=CLIP_FPS)
    frames = synthetic.render_clip(driver, motions, CLIP_SIZE)
    tmp = DRIVER_MP4.with_name(".demo_driver.tmp.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=CLIP_FPS)
        stream.width = stream.height = CLIP_SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "medium", "threads": "1"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(DRIVER_MP4)
    print(f"wrote {SOURCE_PNG.relative_to(REPO)} and {DRIVER_MP4.relative_to(REPO)} "
          f"({len(frames)} frames at {CLIP_FPS} fps)")


def bundle_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="use this trained checkpoint instead of training")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted training run")
    parser.add_argument("--clips-only", action="store_true", help="only render the demo clips")
    parser.add_argument("--enhancer", help="add this enhancer checkpoint (model_*.pt of an [enhancer] run)")
    args = parser.parse_args(argv)

    render_clips()
    if args.clips_only:
        return 0
    checkpoint = args.checkpoint
    if checkpoint is None:
        for config, processes, weights in STAGES:
            launcher = ["torch.distributed.run", f"--nproc_per_node={processes}", "-m"] if processes > 1 else []
            train = [*launcher, "megaportraits_export", "train", "--config", str(config)]
            run(*train, *(["--resume", "auto"] if args.resume else []))
            checkpoint = str(weights)
    run("megaportraits_export", "evaluate", "--checkpoint", checkpoint, "--pairs", str(EVAL_PAIRS),
        "--write-provenance")
    staging = BUNDLE.with_name(".demo_bundle.new")
    if staging.exists():
        shutil.rmtree(staging)
    run("megaportraits_export", "export", "--checkpoint", checkpoint, "--output", str(staging))
    if args.enhancer:
        base_only = staging.with_name(".demo_bundle.base")
        if base_only.exists():
            shutil.rmtree(base_only)
        staging.rename(base_only)
        run("megaportraits_export", "add-enhancer", str(base_only), "-o", str(staging), "--checkpoint", args.enhancer)
        shutil.rmtree(base_only)
    from megaportraits.bundle import ASSET_BUDGET_BYTES

    size = bundle_bytes(staging)
    others = sum(f.stat().st_size for f in ASSETS.rglob("*")
                 if f.is_file() and BUNDLE not in f.parents and staging not in f.parents)
    if size + others > ASSET_BUDGET_BYTES:
        raise SystemExit(f"the demo bundle is {size / 2**20:.1f} MiB: with the other assets "
                         f"({others / 2**20:.1f} MiB) over the {ASSET_BUDGET_BYTES >> 20} MiB the package may ship; "
                         "train a smaller preset")
    if BUNDLE.exists():
        shutil.rmtree(BUNDLE)
    staging.rename(BUNDLE)
    print(f"demo bundle: {size / 2**20:.1f} MiB")
    run("megaportraits_export", "evaluate", "--bundle", str(BUNDLE), "--pairs", str(EVAL_PAIRS))
    manifest = json.loads((BUNDLE / "manifest.json").read_text())
    print("provenance:", json.dumps(manifest.get("provenance", {}).get("steps")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
