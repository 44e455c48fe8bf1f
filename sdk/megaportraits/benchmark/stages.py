"""Measuring each stage of the pipeline on its own, the way the SDK runs it.

Stages: the SOURCE graph (avatar preparation, once per avatar), the DRIVER and GENERATOR graphs
and their sum per frame, the ENHANCER graph (a bundle's optional high-resolution stage, per frame), the heavy volume warp alone (the custom op against the standard
GridSample), and the image-side work around the networks: face crop, paste-back, video decode
and encode. Graph stages are timed on ONNX Runtime sessions with the thread count fixed, fed
with inputs shaped by the bundle's manifest.

Inputs are chosen so that the work is the work of real use. The avatar state comes from running
the source graph; the pose fed to the generator is a near-frontal head (random-init pose heads
output arbitrary transforms, and where the sampling grid lands decides the warp's memory
traffic: a grid that points outside the volume reads nothing).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .. import manifest as mf
from .flops import GraphCost, count_graph
from ..schema import (AVATAR_GENERATOR_INPUTS, BASE_IMAGE, BASE_MATTE, CANONICAL_VOLUME, ENHANCER, EXPRESSION, GENERATOR,
                      GRID_SAMPLE_3D, IMAGE_OUTPUT, IMAGE_TENSORS, POSE)
from ..sessions import create_session, session_options
from .machine import MachinePeaks
from .report import StageResult
from .requirements import require_onnx
from .stats import Timing, measure

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
PROVIDERS = {"cpu": [CPU], "cuda": [CUDA, CPU]}


@dataclass(frozen=True)
class RunSettings:
    """How long each stage is measured: ``warmup`` dropped runs, then up to ``runs`` timed runs
    or ``max_seconds`` (at least 3 runs), whichever ends first."""

    warmup: int = 2
    runs: int = 20
    max_seconds: float = 5.0

    def measure(self, fn) -> Timing:
        return measure(fn, warmup=self.warmup, runs=self.runs, max_seconds=self.max_seconds)


class UnavailableVariant(RuntimeError):
    """A variant cannot run here (no custom-op library, no portable twin); the message says why."""


# ---- inputs ------------------------------------------------------------------------------------
def random_feeds(specs, batch: int, rng: np.random.Generator) -> dict:
    """Inputs for a graph from its manifest specs: images in [0, 1], other tensors N(0, 1)."""
    feeds = {}
    for spec in specs:
        shape = tuple(batch if isinstance(d, str) else int(d) for d in spec.shape)
        dtype = np.dtype(spec.dtype)
        if spec.name in IMAGE_TENSORS or spec.name in (BASE_IMAGE, BASE_MATTE):
            feeds[spec.name] = rng.random(shape, dtype=np.float32).astype(dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    return feeds


def frontal_pose(batch: int, yaw: float = 0.15, pitch: float = -0.05, dtype=np.float32) -> np.ndarray:
    """(batch, 3, 4) rigid transforms of a head turned slightly, unit scale, no translation."""
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    yaw_m = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    pitch_m = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    pose = np.concatenate([yaw_m @ pitch_m, np.zeros((3, 1))], axis=1)
    return np.broadcast_to(pose, (batch, 3, 4)).astype(dtype)


def driver_grid(batch: int, depth: int, height: int, width: int, rng: np.random.Generator,
                deformation: float = 0.05) -> np.ndarray:
    """A sampling grid like the generator's: the identity (align_corners=False) turned by a
    near-frontal pose, plus a small smooth-ish deformation. (batch, D, H, W, 3), (x, y, z)."""
    axes = [(np.arange(n, dtype=np.float64) * 2 + 1) / n - 1 for n in (width, height, depth)]
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    points = np.stack([x, y, z], axis=-1)
    rotation = frontal_pose(1, dtype=np.float64)[0, :, :3]
    grid = points @ rotation.T
    noise = rng.standard_normal((batch, depth, height, width, 3)) * deformation
    return (grid[None] + noise).astype(np.float32)


# ---- sessions ----------------------------------------------------------------------------------
def custom_ops_library() -> str:
    """The op library's path, found by the SDK; UnavailableVariant with the SDK's reason if not."""
    from ..errors import CustomOpError
    from ..sessions import require_custom_op_library

    try:
        return require_custom_op_library()
    except CustomOpError as e:
        raise UnavailableVariant(str(e)) from None


def make_session(model, provider: str, threads: int, needs_custom_op: bool) -> ort.InferenceSession:
    """A session for a file path or serialized model, made the way the SDK makes its own."""
    from ..errors import CustomOpError

    library = custom_ops_library() if needs_custom_op else None
    try:
        options = session_options(threads, library)
    except CustomOpError as e:
        raise UnavailableVariant(str(e)) from None
    return create_session(model, PROVIDERS[provider], options)


class BundleVariant:
    """The source, driver and generator sessions of one bundle flavour, opened by the SDK itself
    (same validation, session options and op-library registration as an Animator).

    ``ours`` runs the bundle's own graphs (custom op inside); ``portable`` their standard-op twins.
    """

    def __init__(self, bundle_dir: Path, manifest: mf.Manifest, variant: str, provider: str, threads: int):
        from ..bundle import open_bundle, open_role
        from ..errors import MegaportraitsError

        if variant == "ours" and manifest.custom_op is None:
            raise UnavailableVariant("the bundle is portable-only: it has no custom-op graphs")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a fallback to portable is detected below instead
            try:
                bundle = open_bundle(bundle_dir, provider=provider, threads=threads,
                                     portable=variant == "portable")
            except MegaportraitsError as e:
                raise UnavailableVariant(str(e)) from None
        if variant == "ours" and bundle.portable:
            custom_ops_library()  # raises with the reason the SDK fell back
            raise UnavailableVariant("the SDK could not register the custom-op library")
        if ENHANCER in manifest.graphs:
            open_role(bundle, ENHANCER, threads)
        self.manifest = manifest
        self.variant = variant
        self.sessions = bundle.sessions
        self.files = {role: bundle.manifest.graph_file(role, portable=bundle.portable) for role in self.sessions}

    def run(self, role: str, feeds: dict) -> list:
        return self.sessions[role].run(None, feeds)


# ---- the measurements --------------------------------------------------------------------------
class CostBook:
    """FLOPs and bytes of each graph file at each batch size, counted once and reused."""

    def __init__(self, bundle_dir: Path):
        self.bundle_dir = bundle_dir
        self._costs: dict = {}

    def graph(self, file: str, batch: int) -> GraphCost | None:
        key = (file, batch)
        if key not in self._costs:
            try:
                self._costs[key] = count_graph(self.bundle_dir / file, batch=batch)
            except ImportError:
                self._costs[key] = None  # no onnx: timings without FLOPs; the report notes it
        return self._costs[key]


def with_cost(stage: str, variant: str, provider: str, threads: int, batch: int, timing: Timing,
              costs: list, peaks: MachinePeaks | None, note: str = "") -> StageResult:
    """A result with its work and its roofline floor (the floor only where peaks were measured
    for this provider: the CPU peaks say nothing about a GPU)."""
    known = [c for c in costs if c is not None]
    flops = sum(c.flops for c in known) if known and len(known) == len(costs) else None
    moved = sum(c.bytes_moved for c in known) if flops is not None else None
    floor_ms = None
    if flops is not None and peaks is not None:
        floor_ms = 1e3 * sum(c.floor_seconds(peaks.gemm_flops_per_s, peaks.bandwidth_bytes_per_s)
                             for c in known)
    return StageResult(stage=stage, variant=variant, provider=provider, threads=threads, batch=batch,
                       timing=timing, flops=flops, bytes_moved=moved, floor_ms=floor_ms,
                       peak_gflops=peaks.gemm_gflops if peaks else None, note=note)


def measure_graph_stages(graphs: BundleVariant, book: CostBook, provider: str, threads: int,
                         batch: int, settings: RunSettings, peaks: MachinePeaks | None,
                         stages=("source", "driver", "generator", "per_frame"),
                         seed: int = 0) -> list:
    """Time the source, driver and generator graphs and one whole frame (driver + generator)."""
    rng = np.random.default_rng(seed)
    specs = {role: graphs.manifest.graphs[role] for role in graphs.files}
    source_feeds = random_feeds(specs["source"].inputs, batch, rng)
    driver_feeds = random_feeds(specs["driver"].inputs, batch, rng)
    avatar = {**source_feeds, **dict(zip((o.name for o in specs["source"].outputs), graphs.run("source", source_feeds)))}
    # each generator input from the avatar's tensor of that name, or the one it is fed from
    # (schema.AVATAR_GENERATOR_INPUTS: the source crop, pose, expression); the motion is replaced below
    origins = {t.name: AVATAR_GENERATOR_INPUTS.get(t.name, t.name) for t in specs["generator"].inputs}
    generator_feeds = {name: avatar[origin] for name, origin in origins.items() if origin in avatar}
    pose_spec = next(t for t in specs[GENERATOR].inputs if t.name == POSE)
    generator_feeds[POSE] = frontal_pose(batch, dtype=np.dtype(pose_spec.dtype))

    generate = generator_call(graphs, provider, generator_feeds)
    enhancer_feeds = random_feeds(specs[ENHANCER].inputs, batch, rng) if ENHANCER in specs else None

    def per_frame():
        motion = dict(zip((o.name for o in specs["driver"].outputs), graphs.run("driver", driver_feeds)))
        generate(motion[EXPRESSION])

    work = {
        "source": (lambda: graphs.run("source", source_feeds), ["source"]),
        "driver": (lambda: graphs.run("driver", driver_feeds), ["driver"]),
        "generator": (lambda: generate(generator_feeds[EXPRESSION]), ["generator"]),
        "per_frame": (per_frame, ["driver", "generator"]),
        "enhancer": (lambda: graphs.run(ENHANCER, enhancer_feeds), [ENHANCER]),
    }
    results = []
    for stage in stages:
        fn, roles = work[stage]
        timing = settings.measure(fn)
        costs = [book.graph(graphs.files[r], batch) for r in roles]
        results.append(with_cost(stage, graphs.variant, provider, threads, batch, timing, costs, peaks))
    return results


def measure_student(student_dir: Path, book: CostBook, provider: str, threads: int, batch: int,
                    settings: RunSettings, peaks: MachinePeaks | None, seed: int = 0) -> StageResult:
    """A student bundle's graph for one frame (driver image + avatar index), opened by the SDK."""
    from ..bundle import open_bundle
    from ..errors import MegaportraitsError
    from ..manifest import load_manifest
    from ..precision import reference_precision
    from ..schema import AVATAR_INDEX, DRIVER_IMAGE, STUDENT, STUDENT_ROLES

    try:  # the main (fp32) file's precision, as the teacher's per_frame and the cost book
        bundle = open_bundle(student_dir, provider=provider, threads=threads, roles=STUDENT_ROLES,
                             precision=reference_precision(load_manifest(student_dir)))
    except MegaportraitsError as e:
        raise UnavailableVariant(str(e)) from None
    if not bundle.manifest.is_student:
        raise UnavailableVariant(f"{student_dir} is not a student bundle")
    size = bundle.manifest.image_size
    feeds = {DRIVER_IMAGE: np.random.default_rng(seed).random((batch, 3, size, size), dtype=np.float32),
             AVATAR_INDEX: np.zeros(batch, np.int64)}
    session = bundle.sessions[STUDENT]
    timing = settings.measure(lambda: session.run(None, feeds))
    return with_cost(STUDENT, "ours", provider, threads, batch, timing,
                     [book.graph(bundle.manifest.graphs[STUDENT].file, batch)], peaks,
                     note=f"{len(bundle.manifest.avatar_names())} avatar(s), {size} px, {bundle.precision(STUDENT)}")


def generator_call(graphs: BundleVariant, provider: str, feeds: dict):
    """expression -> image, the way the Animator runs the generator: on a GPU the avatar's
    volume and descriptor are bound on the device once, so a frame does not re-upload them."""
    if provider != "cuda":
        return lambda expression: graphs.run(GENERATOR, {**feeds, EXPRESSION: expression})
    session = graphs.sessions["generator"]
    binding = session.io_binding()
    for name in (n for n in feeds if n not in (POSE, EXPRESSION)):  # the avatar's tensors
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(feeds[name], "cuda", 0))
    binding.bind_cpu_input(POSE, feeds[POSE])

    def run(expression):
        binding.bind_cpu_input(EXPRESSION, np.ascontiguousarray(expression))
        binding.bind_output(IMAGE_OUTPUT, "cpu")
        session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()
    return run


def warp_model(volume_shape: tuple, grid_shape: tuple, custom: bool):
    """A one-node graph: the heavy trilinear volume sample, as our op or as ONNX GridSample-20."""
    onnx = require_onnx()
    h, f32 = onnx.helper, onnx.TensorProto.FLOAT
    domain = GRID_SAMPLE_3D.domain if custom else ""
    node = h.make_node(GRID_SAMPLE_3D.name if custom else "GridSample", ["volume", "grid"], ["warped"],
                       domain=domain, mode="linear", padding_mode="zeros", align_corners=0)
    graph = h.make_graph([node], "warp", [h.make_tensor_value_info("volume", f32, list(volume_shape)),
                                          h.make_tensor_value_info("grid", f32, list(grid_shape))],
                         [h.make_tensor_value_info("warped", f32, None)])
    opsets = [h.make_opsetid("", 20)] + ([h.make_opsetid(domain, GRID_SAMPLE_3D.version)] if custom else [])
    return h.make_model(graph, opset_imports=opsets)


def warp_inputs(manifest: mf.Manifest, batch: int, seed: int = 0) -> tuple:
    """The canonical volume and a driver grid of the bundle's sizes."""
    rng = np.random.default_rng(seed)
    spec = next(t for t in manifest.graphs[GENERATOR].inputs if t.name == CANONICAL_VOLUME)
    _, c, d, hh, w = (batch if isinstance(x, str) else int(x) for x in spec.shape)
    volume = rng.standard_normal((batch, c, d, hh, w), dtype=np.float32)
    return volume, driver_grid(batch, d, hh, w, rng)


def measure_warp(manifest: mf.Manifest, variant: str, provider: str, threads: int, batch: int,
                 settings: RunSettings, peaks: MachinePeaks | None) -> StageResult:
    """The per-frame volume warp alone: GridSample3D (ours) or ONNX GridSample (portable)."""
    volume, grid = warp_inputs(manifest, batch)
    run = warp_call(volume, grid, variant, provider, threads)
    return with_cost("warp", variant, provider, threads, batch, settings.measure(run), [warp_cost(volume, grid)],
                     peaks)


def warp_cost(volume: np.ndarray, grid: np.ndarray) -> GraphCost:
    """FLOPs and bytes of one trilinear warp of ``volume`` at ``grid`` (the same work for every
    implementation: the standard op's graph is counted)."""
    return count_graph(warp_model(volume.shape, grid.shape, custom=False), batch=volume.shape[0])


def warp_call(volume: np.ndarray, grid: np.ndarray, variant: str, provider: str, threads: int):
    """A no-argument function running the warp in an ONNX Runtime session made as the SDK makes
    its own: ``ours`` (GridSample3D, the op library) or ``portable`` (ONNX GridSample-20). It
    returns the warped volume on the CPU provider; on CUDA inputs and output stay on the device,
    as inside the generator."""
    model = warp_model(volume.shape, grid.shape, custom=variant == "ours")
    session = make_session(model.SerializeToString(), provider, threads, needs_custom_op=variant == "ours")
    feeds = {"volume": volume, "grid": grid}
    if provider == "cuda":
        binding = session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
        binding.bind_output("warped", "cuda")
        return lambda: session.run_with_iobinding(binding)
    return lambda: session.run(None, feeds)[0]
