"""Reduced-precision graphs: int8 for CPUs (static QDQ quantization), fp16 for GPUs.

A bundle exported with ``--precision int8`` or ``--precision fp16`` holds the same model as the
fp32 export; its per-frame graphs (driver, generator) are converted after they are traced and
checked. The source graph stays fp32 in every flavour: it runs once per avatar, so it costs
nothing per frame, and the avatar state it computes (the canonical volume) feeds every frame.

What stays in float32, and why:

* int8 quantizes the convolutions only (weights per output channel, activations per tensor,
  uint8/int8, the layout ONNX Runtime's x86 kernels with VNNI/AMX run fastest), except those
  writing fewer than 8 channels (slower in int8). Everything else (the pose and coordinate
  maths, the sampling grids, both grid samples, the normalisation statistics, the expression
  linear layers, the activations between layers) keeps its float ops, so quantization error
  enters only where the GEMMs are. Between the convolutions each GroupNorm becomes one
  InstanceNormalization (:mod:`.int8_graph`: the float work there, not the GEMMs, was most of
  an int8 frame).
* fp16 converts the whole graph except the nodes :func:`float32_nodes` picks: every node that
  computes a sampling grid or a pose (a 1e-3 relative error of a coordinate moves a sample by a
  voxel fraction everywhere), the 3-channel deformation-field sample, and the statistics of
  every normalisation (means and variances over up to 512 x 512 values, whose squares overflow
  fp16's 65504). The heavy volume sample runs on float16 data with a float32 grid (the custom
  op's float16 kernel, or standard GridSample-20, whose grid type is separate).

Calibration (int8) runs the fp32 graphs on frames the model is meant for: by default the
synthetic talking heads it was trained on (training identities, never the held-out ones the
evaluation scores), or the user's own face images (``--calibration-frames DIR``, cropped as the
SDK crops them). Activation ranges are collected here, a few tensors per pass, so that a
paper512 generator never holds all its intermediate tensors at once; ONNX Runtime's quantizer
then places the Q/DQ nodes from those ranges.

Both conversions work on the graph's portable twin (standard ops: the quantizer's shape
inference and calibration sessions know nothing of our op library) and turn the twin's
formerly custom nodes back into ``GridSample3D`` by name afterwards.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from megaportraits.manifest import PRECISIONS
from megaportraits.schema import DRIVER, ENHANCER, GENERATOR, GRID_SAMPLE_3D, SOURCE, STUDENT
from megaportraits_export.onnx_export.errors import ExportError

log = logging.getLogger(__name__)

# The per-frame graphs; the source graph runs once per avatar and stays fp32.
CONVERTED_ROLES = (DRIVER, GENERATOR)
CALIBRATION_FRAMES = 16  # frames; generator calibration pairs them as (source, driver)
# Activation ranges collected per forward pass at 256 px (bounded memory); fewer at larger sizes,
# as the largest activations grow with the image's area (paper512's G2D: 150 MB each).
RANGE_TENSORS_PER_PASS = 24
# int8 keeps the last convolutions (those writing the image, the matte, the motion codes) in float.
# Measured on the demo model, 16 held-out cross-driven frames, image PSNR vs fp32 (median / min):
# all convs int8 37.9 / 36.0 dB; first kept 38.3 / 37.5; last kept 42.0 / 39.6; both 42.9 / 41.2.
# "last" is the cheap half (1x1 convs to a few channels); "first" would also keep the
# generator's projection (1536 -> 512 channels at 64x64 for paper512) in float, for 0.9 dB.
DEFAULT_KEEP_FLOAT = ("last",)

# Ops whose outputs are features, not coordinates: walking back from a grid stops there.
_FEATURE_OPS = {"Conv", "ConvTranspose", "Tanh", "Sigmoid", "Resize", "InstanceNormalization"}
# Learned layers that end a pose regressor: kept in float, but the walk goes no further.
_LAST_LAYER_OPS = {"Gemm", "MatMul"}
_SAMPLING_OPS = {"GridSample", GRID_SAMPLE_3D.name}
_STATISTICS_OPS = {"ReduceMean", "InstanceNormalization", "Sqrt", "Reciprocal", "Pow"}


# ---- calibration frames ----------------------------------------------------------------------
@dataclass(frozen=True)
class CalibrationFrames:
    """Model-ready frames (K, 3, S, S) float32 in [0, 1], and where they came from."""

    images: np.ndarray
    origin: str


def synthetic_calibration_frames(image_size: int, count: int = CALIBRATION_FRAMES,
                                 seed: int = 0) -> CalibrationFrames:
    """Synthetic talking heads (the demo models' training distribution) of ``count`` training
    identities, each in a random pose and expression."""
    from megaportraits_export.data.synthetic import HeadMotion, Identity, identity_seeds, render

    rng = np.random.default_rng(seed)
    images = []
    for identity_seed in identity_seeds("train", count):
        motion = HeadMotion.random(rng)
        images.append(render(Identity.sample(identity_seed), motion.pose, motion.expression, image_size))
    return CalibrationFrames(_to_model_input(images),
                             f"synthetic heads (training identities 0-{count - 1}, seed {seed})")


def calibration_frames_from(directory: str | Path, image_size: int,
                            count: int = CALIBRATION_FRAMES) -> CalibrationFrames:
    """Up to ``count`` images of ``directory`` (sorted by name), each cropped around its largest
    face as the SDK crops a source image; an image without a detectable face is used whole
    (centre square), as an already cropped portrait would be with ``--no-crop``."""
    from megaportraits.errors import MegaportraitsError
    from megaportraits.faces import CropBox, CropGeometry, HaarFaceDetector, cut_crop, find_source_face
    from megaportraits.images import is_image_path, load_image

    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"--calibration-frames {directory}: not a directory; give a directory of face images")
    paths = sorted(p for p in directory.iterdir() if p.is_file() and is_image_path(p))[:count]
    if len(paths) < 2:
        raise ExportError(f"--calibration-frames {directory}: found {len(paths)} image(s), need at least 2 "
                          f"(best {count}) frames of the faces the model will animate")
    detector, geometry = HaarFaceDetector(), CropGeometry()
    images = []
    for path in paths:
        try:
            image = load_image(path, "calibration frame")
        except MegaportraitsError as e:
            raise ExportError(str(e)) from None
        try:
            box = find_source_face(image, detector, geometry)
        except MegaportraitsError:
            box = CropBox.whole(*image.shape[:2])
        images.append(cut_crop(image, box, image_size))
    return CalibrationFrames(_to_model_input(images), f"{len(images)} frames of {directory}")


def _to_model_input(images: list) -> np.ndarray:
    return np.stack([np.asarray(i, np.float32).transpose(2, 0, 1) / 255.0 for i in images]).astype(np.float32)


def calibration_feeds(graph_files: dict, frames: CalibrationFrames, library: str | None = None) -> dict:
    """role -> list of input feeds for the per-frame graphs, computed by the fp32 graphs
    (``graph_files``: role -> ONNX file; ``library`` the op library when they hold custom nodes)
    from the calibration frames: the driver sees every frame; the generator sees frame i's
    avatar driven by frame i + 1's motion, with whatever else it reads from the avatar (its
    optional inputs, ``schema.AVATAR_GENERATOR_INPUTS``: frame i's crop, pose and expression)."""
    import onnxruntime as ort

    from megaportraits.schema import AVATAR_GENERATOR_INPUTS, DRIVER_IMAGE, MOTION, SOURCE_IMAGE

    def session(role):
        if role not in sessions:
            options = ort.SessionOptions()
            if library is not None:
                options.register_custom_ops_library(library)
            sessions[role] = ort.InferenceSession(str(graph_files[role]), options, providers=["CPUExecutionProvider"])
        return sessions[role]

    def run(role, feed):
        names = [o.name for o in session(role).get_outputs()]
        return dict(zip(names, session(role).run(names, feed)))

    sessions: dict = {}
    images = frames.images
    avatars = [{SOURCE_IMAGE: images[i:i + 1], **run(SOURCE, {SOURCE_IMAGE: images[i:i + 1]})}
               for i in range(len(images))]
    motions = [run(DRIVER, {DRIVER_IMAGE: images[i:i + 1]}) for i in range(len(images))]
    generator_inputs = [i.name for i in session(GENERATOR).get_inputs()]
    generator = []
    for i in range(len(images)):
        motion = motions[(i + 1) % len(images)]
        generator.append({name: motion[name] if name in MOTION else avatars[i][AVATAR_GENERATOR_INPUTS.get(name, name)]
                          for name in generator_inputs})
    return {DRIVER: [{DRIVER_IMAGE: images[i:i + 1]} for i in range(len(images))], GENERATOR: generator}


# ---- which nodes keep float32 ----------------------------------------------------------------
def float32_nodes(graph: onnx.GraphProto) -> set:
    """Names of the nodes that keep float32 in an fp16 graph (see the module's docstring):
    the pose and coordinate paths, the deformation-field sample, normalisation statistics."""
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    keep: set = set()

    def walk_back(tensor: str) -> None:
        stack = [tensor]
        while stack:
            node = producers.get(stack.pop())
            if node is None or node.name in keep or node.op_type in _FEATURE_OPS:
                continue
            keep.add(node.name)
            if node.op_type in _LAST_LAYER_OPS:
                continue
            stack.extend(i for i in node.input if i)

    # Every grid back to the feature layers; the walk takes in the 3-channel deformation-field
    # sample (it computes a grid), never the volume sample (its output is features).
    for node in graph.node:
        if node.op_type in _SAMPLING_OPS and len(node.input) > 1:
            walk_back(node.input[1])
    for output in graph.output:
        if output.name == "pose":
            walk_back(output.name)
    for node in graph.node:
        if node.op_type in _STATISTICS_OPS:
            keep.add(node.name)
            for name in node.input:  # what a mean or a root is taken of: x - mean, (x - mean)^2
                if name in producers and producers[name].op_type not in _FEATURE_OPS | _SAMPLING_OPS:
                    keep.add(producers[name].name)
            for name in node.output:  # x - mean, var + eps, x * rsqrt(...)
                keep.update(c.name for c in consumers.get(name, []))
    return keep


def edge_convolutions(graph: onnx.GraphProto) -> tuple[set, set]:
    """(first, last) Conv nodes: those reached from a graph input, or reaching a graph output,
    without passing another Conv (the image-facing layers)."""
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def reach(starts, step) -> set:
        found, seen, stack = set(), set(), list(starts)
        while stack:
            for node in step(stack.pop()):
                if node.name in seen:
                    continue
                seen.add(node.name)
                if node.op_type == "Conv":
                    found.add(node.name)
                else:
                    stack.extend(node.output if step is forward else node.input)
        return found

    def forward(tensor):
        return consumers.get(tensor, [])

    def backward(tensor):
        return [producers[tensor]] if tensor in producers else []

    first = reach([i.name for i in graph.input], forward)
    last = reach([o.name for o in graph.output], backward)
    return first, last


# ---- custom nodes across a conversion --------------------------------------------------------
def custom_node_names(proto: onnx.ModelProto) -> set:
    return {n.name for n in proto.graph.node if n.domain == GRID_SAMPLE_3D.domain and n.op_type == GRID_SAMPLE_3D.name}


def restore_custom_nodes(proto: onnx.ModelProto, names: set) -> onnx.ModelProto:
    """Turn the standard GridSample nodes called ``names`` back into GridSample3D (the converted
    twin of a custom-op graph becomes a custom-op graph again)."""
    restored = 0
    for node in proto.graph.node:
        if node.name in names and node.op_type == "GridSample" and not node.domain:
            node.domain, node.op_type = GRID_SAMPLE_3D.domain, GRID_SAMPLE_3D.name
            restored += 1
    if restored != len(names):
        raise ExportError(f"precision conversion lost {len(names) - restored} of the graph's "
                          f"{GRID_SAMPLE_3D.name} node(s); the bundle was not written")
    if names and not any(o.domain == GRID_SAMPLE_3D.domain for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid(GRID_SAMPLE_3D.domain, GRID_SAMPLE_3D.version))
    return proto


# ---- int8 ------------------------------------------------------------------------------------
def activation_ranges(model_path: Path, feeds: list, tensor_names: list,
                      per_pass: int = RANGE_TENSORS_PER_PASS, library: str | None = None) -> dict:
    """name -> (lowest, highest) of each tensor over all feeds, ``per_pass`` tensors per forward
    pass (ONNX Runtime keeps only the requested outputs alive, so memory stays bounded).

    ``library``: the op library, to run a custom-op graph (its volume sample is ~100x faster
    than standard GridSample's). Graph optimisations stay on: ONNX Runtime never fuses away a
    node whose output is a graph output, so every requested tensor is computed as it is."""
    import onnxruntime as ort

    proto = onnx.load(model_path)
    groups = [tensor_names[i:i + per_pass] for i in range(0, len(tensor_names), per_pass)]
    present = {o.name for o in proto.graph.output}
    for name in tensor_names:
        if name not in present:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    if library is not None:
        options.register_custom_ops_library(library)
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    del proto
    lowest = {n: np.inf for n in tensor_names}
    highest = {n: -np.inf for n in tensor_names}
    done = 0
    for group in groups:
        for feed in feeds:
            for name, value in zip(group, session.run(group, feed)):
                lowest[name] = min(lowest[name], float(np.min(value)))
                highest[name] = max(highest[name], float(np.max(value)))
        done += len(group)
        log.info("  activation ranges: %d/%d tensors", done, len(tensor_names))
    return {n: (lowest[n], highest[n]) for n in tensor_names}


def _usable_library() -> str | None:
    from megaportraits.sessions import custom_op_status

    status = custom_op_status()
    return status.path if status.available else None


def range_tensors_per_pass(image_size: int) -> int:
    """How many activation ranges one pass collects at ``image_size`` (24 at 256 px, 6 at 512)."""
    return int(min(RANGE_TENSORS_PER_PASS, max(4, RANGE_TENSORS_PER_PASS * (256 / image_size) ** 2)))


def quantize_int8(standard_path: Path, feeds: list, output_path: Path, keep_float: tuple = (),
                  per_pass: int = RANGE_TENSORS_PER_PASS, range_graph: Path | None = None,
                  float_beside_convolutions: bool = False, quantize_residual_adds: bool = True) -> dict:
    """Write the int8 (QDQ) version of a standard-ops graph; returns what was quantized.

    ``keep_float``: "first" and/or "last" keeps the image-facing convolutions in float
    (:func:`edge_convolutions`). ``range_graph``: the same graph with custom nodes, run for the
    activation ranges when the op library is usable here (same tensors, much faster).
    ``float_beside_convolutions``: only convolutions read the 8-bit copy of a tensor
    (:func:`float_inputs_beside_convolutions`; the student's and enhancer's rule), applied before
    the layout rewrites of :mod:`.int8_graph` so that they see the rewired graph.
    ``quantize_residual_adds``: the Adds of two quantized convolutions' maps run in uint8
    (:func:`.int8_graph.residual_adds`)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    from megaportraits_export.onnx_export.int8_graph import (instance_norm_group_norms,
                                                             pointwise_convolutions_as_matmuls,
                                                             quantize_before_nearest_resizes, residual_adds,
                                                             share_dequantizers, small_output_convolutions)

    proto = onnx.load(standard_path)
    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    first, last = edge_convolutions(graph)
    excluded = (first if "first" in keep_float else set()) | (last if "last" in keep_float else set())
    narrow = small_output_convolutions(graph) - excluded
    convolutions = [n for n in graph.node if n.op_type == "Conv" and n.name not in excluded | narrow]
    adds = set(residual_adds(graph, {n.name for n in convolutions})) if quantize_residual_adds else set()
    quantized_nodes = convolutions + [n for n in graph.node if n.name in adds]
    # the activations each quantized node reads and writes (a conv's input 1 is its weight)
    activations = {name for n in quantized_nodes
                   for name in ((*n.input[:2], n.output[0]) if n.op_type == "Add" else (n.input[0], n.output[0]))}
    tensors = sorted(activations - initializers)
    library = _usable_library() if range_graph is not None else None
    # the ranges are the fp32 graph's; the rewrite below keeps every convolution's tensor names
    ranges = activation_ranges(range_graph if library else standard_path, feeds, tensors, per_pass, library)
    group_norms = instance_norm_group_norms(proto)
    with tempfile.TemporaryDirectory(prefix="megaportraits-int8-") as tmp:
        rewritten, quantized = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, rewritten, save_as_external_data=True, location="float.onnx.data")
        del proto
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax,
                                      {n: (np.float32(lo), np.float32(hi)) for n, (lo, hi) in ranges.items()}),
                          cache)
        quantize_static(str(rewritten), str(quantized), calibration_data_reader=None,
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv", "Add"],
                        nodes_to_quantize=[n.name for n in quantized_nodes],
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache))
        result = onnx.load(quantized)
    shared = share_dequantizers(result)
    rewired = float_inputs_beside_convolutions(result) if float_beside_convolutions else 0
    uint8_resizes = quantize_before_nearest_resizes(result)
    matmuls = pointwise_convolutions_as_matmuls(result)
    onnx.save(result, output_path)
    return {"quantized_convolutions": len(convolutions), "float_convolutions": sorted(excluded),
            "narrow_float_convolutions": sorted(narrow), "instance_norm_group_norms": group_norms,
            "shared_dequantizers": shared, "float_readers_rewired": rewired, "uint8_resizes": uint8_resizes,
            "pointwise_matmuls": matmuls, "quantized_residual_adds": len(adds)}


# ---- fp16 ------------------------------------------------------------------------------------
def convert_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 version of a standard-ops graph: float32 inputs and outputs (the SDK's contract),
    :func:`float32_nodes` kept in float32, and the volume sample's grid fed in float32."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    keep = float32_nodes(proto.graph)
    converted = convert_float_to_float16(proto, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST),
                                         node_block_list=sorted(keep))
    _feed_float32_grids(converted.graph, keep)
    _sort_topologically(converted.graph)  # the converter appends its input casts at the end
    del converted.graph.value_info[:]  # some of the converter's are stale; checkers infer them again
    return converted


def _sort_topologically(graph: onnx.GraphProto) -> None:
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ExportError("the fp16 conversion left a graph with a cycle or a missing input")
        for node in ready:
            available.update(node.output)
        ordered += ready
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    del graph.node[:]
    graph.node.extend(ordered)


def _feed_float32_grids(graph: onnx.GraphProto, keep: set) -> None:
    """The converter casts the heavy sample's float32 grid to float16 for it; take the float32
    grid instead (GridSample's grid has a type of its own, and so has GridSample3D's)."""
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type in _SAMPLING_OPS and node.name not in keep and len(node.input) > 1:
            cast = producers.get(node.input[1])
            if cast is not None and cast.op_type == "Cast":
                node.input[1] = cast.input[0]
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
    for node in dead:
        graph.node.remove(node)


# ---- a bundle's graphs -----------------------------------------------------------------------
def convert_graph(precision: str, graph_path: Path, standard_path: Path, feeds: list | None,
                  keep_float: tuple = (), image_size: int = 256,
                  float_beside_convolutions: bool = False) -> onnx.ModelProto:
    """The ``precision`` version of one graph (``graph_path``: as exported, maybe with custom
    nodes; ``standard_path``: its standard-ops twin), custom nodes restored.
    ``float_beside_convolutions``: see :func:`quantize_int8`."""
    names = custom_node_names(onnx.load(graph_path, load_external_data=False))
    if precision == "int8":
        with tempfile.TemporaryDirectory(prefix="megaportraits-int8-") as tmp:
            out = Path(tmp) / "int8.onnx"
            done = quantize_int8(standard_path, feeds, out, keep_float, range_tensors_per_pass(image_size),
                                 range_graph=graph_path if names else None,
                                 float_beside_convolutions=float_beside_convolutions)
            converted = onnx.load(out)
        if names:  # a graph that needs the op library anyway (its twin spells the fused nodes out)
            from megaportraits_export.onnx_export.int8_graph import fuse_dequantize_instance_norms

            done["fused_dequantize_instance_norms"] = fuse_dequantize_instance_norms(converted)
        log.info("  int8: %s", ", ".join(f"{k} {len(v) if isinstance(v, list) else v}" for k, v in done.items()))
    elif precision == "fp16":
        converted = convert_fp16(onnx.load(standard_path))
    else:
        raise ExportError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return restore_custom_nodes(converted, names)


def parse_precisions(text: str) -> tuple:
    """``"fp32"`` or ``"fp32,int8"`` -> the precisions a bundle carries, the main files' first
    (the others are written as flavours beside them: :attr:`megaportraits.manifest.GraphSpec.flavours`)."""
    precisions = tuple(p.strip() for p in str(text).split(",") if p.strip())
    unknown = [p for p in precisions if p not in PRECISIONS]
    if not precisions or unknown:
        raise ExportError(f"--precision {text!r}: give one or more of {', '.join(PRECISIONS)} separated by commas "
                          "(e.g. fp32,int8), the main flavour first")
    if len(set(precisions)) != len(precisions):
        raise ExportError(f"--precision {text!r} names a precision twice")
    if "fp32" in precisions[1:]:
        raise ExportError(f"--precision {text!r}: put fp32 first (the main files; the other flavours are made "
                          "from it), e.g. fp32,int8")
    return precisions


def convert_bundle_graphs(staging: Path, manifest, precisions: tuple, frames: CalibrationFrames | None = None,
                          external_weights: bool = False) -> None:
    """Give the fp32 bundle staged in ``staging`` (``manifest`` in memory, not yet rewritten)
    the ``precisions`` of :func:`parse_precisions`: each flavour after the first is written beside
    the fp32 files, then the first, when it is not fp32, converts the main files in place."""
    fp32_graphs = dict(manifest.graphs)
    for precision in precisions[1:]:
        record_conversion(manifest, convert_written_graphs(
            staging, fp32_graphs, precision, manifest.image_size, frames, external_weights=external_weights,
            matte=manifest.has_matte, as_flavour=True))
    if precisions[0] != "fp32":
        report = convert_written_graphs(staging, fp32_graphs, precisions[0], manifest.image_size, frames,
                                        external_weights=external_weights, matte=manifest.has_matte)
        record_conversion(manifest, report)


def flavour_file(role: str, precision: str, portable: bool = False) -> str:
    """The file name of a role's graph in another precision: ``generator.int8.onnx``."""
    return f"{role}.{precision}{'.portable' if portable else ''}.onnx"


def convert_written_graphs(staging: Path, graphs: dict, precision: str, image_size: int,
                           frames: CalibrationFrames | None = None, external_weights: bool = False,
                           matte: bool = False, keep_float: tuple = DEFAULT_KEEP_FLOAT,
                           as_flavour: bool = False) -> dict:
    """Convert the fp32 per-frame graph files written in ``staging`` (and their portable twins)
    to ``precision``: in place, or with ``as_flavour`` into new files beside them
    (:func:`flavour_file`), the fp32 files kept. Returns what the manifest records
    (:func:`record_conversion`): each role's precision, the flavour files, and for int8 what the
    calibration ran on.

    ``frames``: int8 calibration frames (default: :func:`synthetic_calibration_frames`)."""
    from megaportraits_export.onnx_export.graph_files import check_graph, check_model
    from megaportraits_export.onnx_export.portable import save_standard_twin

    if precision not in PRECISIONS:
        raise ExportError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    precisions = {role: "fp32" for role in graphs}
    report = {"requested": precision, "graphs": precisions}
    if precision == "fp32":
        return report
    if as_flavour:
        report["flavour_files"] = {}
    standard = {role: staging / (spec.portable_file or spec.file) for role, spec in graphs.items()}
    feeds: dict = {}
    if precision == "int8":
        frames = frames if frames is not None else synthetic_calibration_frames(image_size)
        log.info("calibrating int8 on %s", frames.origin)
        report["calibration"] = frames.origin
        report["float_convolutions"] = list(keep_float)
        from megaportraits_export.onnx_export.int8_graph import REWRITES

        report["int8_rewrites"] = list(REWRITES)
        library = _usable_library()
        feeds = calibration_feeds({role: staging / spec.file for role, spec in graphs.items()} if library else standard,
                                  frames, library)
    for role in CONVERTED_ROLES:
        spec = graphs[role]
        path = staging / spec.file
        log.info("converting the %s graph to %s", role, precision)
        converted = convert_graph(precision, path, standard[role], feeds.get(role), keep_float, image_size)
        twin = staging / spec.portable_file if spec.portable_file and spec.portable_file != spec.file else None
        if as_flavour:
            path = staging / flavour_file(role, precision)
            twin = staging / flavour_file(role, precision, portable=True) if twin is not None else None
            report["flavour_files"][role] = [path.name, (twin or path).name if spec.portable_file else None]
        else:
            for old in _external_data_files(path) | _external_data_files(standard[role]):
                (staging / old).unlink(missing_ok=True)
        onnx.save(converted, path, save_as_external_data=external_weights, all_tensors_to_one_file=True,
                  location=f"{path.name}.data")
        check_model(path)
        names = (tuple(t.name for t in spec.inputs), tuple(t.name for t in spec.outputs))  # as traced
        if twin is not None:
            save_standard_twin(path, twin)
            check_graph(role, twin, portable=True, names=names)
        check_graph(role, path, portable=spec.portable_file is None, names=names)
        precisions[role] = precision
    return report


def record_conversion(manifest, report: dict) -> None:
    """Write a conversion's report into ``manifest`` (in memory): in place, the bundle's
    precision and each graph's; as a flavour, each converted graph's new flavour entry; and
    ``provenance.precision`` (what the calibration ran on; one entry per flavour)."""
    import dataclasses

    from megaportraits.manifest import GraphFlavour

    if "flavour_files" not in report:
        manifest.precision = report["requested"]
        manifest.provenance = {**manifest.provenance, "precision": report}
        manifest.graphs = {role: dataclasses.replace(spec, precision=report["graphs"].get(role, spec.precision))
                           for role, spec in manifest.graphs.items()}
        return
    precision = report["requested"]
    recorded = manifest.provenance.get("precision_flavours", {})
    manifest.provenance = {**manifest.provenance, "precision_flavours": {**recorded, precision: report}}
    graphs = dict(manifest.graphs)
    for role, (file, twin) in report["flavour_files"].items():
        spec = graphs[role]
        flavours = tuple(f for f in spec.flavours if f.precision != precision) + (GraphFlavour(precision, file, twin),)
        graphs[role] = dataclasses.replace(spec, flavours=tuple(sorted(flavours, key=lambda f: PRECISIONS.index(f.precision))))
    manifest.graphs = graphs


def _external_data_files(path: Path) -> set:
    proto = onnx.load(path, load_external_data=False)
    return {entry.value for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
            for entry in t.external_data if entry.key == "location"}


# ---- the other shipped graphs: the student, the enhancer -------------------------------------
#: graphs that get flavours one at a time, each calibrated on what it reads when it runs
SINGLE_GRAPH_ROLES = (STUDENT, ENHANCER)


def student_calibration_feeds(frames: CalibrationFrames, num_avatars: int) -> list:
    """Feeds of a student graph: each calibration frame as the driver crop, the avatars in turn
    (the student renders every avatar from the same driver crops)."""
    from megaportraits.schema import AVATAR_INDEX, DRIVER_IMAGE

    return [{DRIVER_IMAGE: frames.images[i:i + 1], AVATAR_INDEX: np.array([i % num_avatars], np.int64)}
            for i in range(len(frames.images))]


def enhancer_calibration_feeds(bundle_dir: Path, manifest, frames: CalibrationFrames) -> list:
    """Feeds of an enhancer graph: the base model's own renderings (its fp32 source, driver and
    generator graphs, frame i's avatar driven by frame i + 1), the images the enhancer enlarges."""
    import onnxruntime as ort

    from megaportraits.schema import BASE_IMAGE, BASE_MATTE, IMAGE_OUTPUT, MATTE_OUTPUT

    library = _usable_library() if manifest.custom_op is not None else None
    portable = manifest.custom_op is not None and library is None
    files = {role: Path(bundle_dir) / manifest.graph_file(role, portable) for role in (SOURCE, DRIVER, GENERATOR)}
    feeds = calibration_feeds(files, frames, library)
    options = ort.SessionOptions()
    if library is not None:
        options.register_custom_ops_library(library)
    generator = ort.InferenceSession(str(files[GENERATOR]), options, providers=["CPUExecutionProvider"])
    outputs = [IMAGE_OUTPUT] + ([MATTE_OUTPUT] if manifest.has_matte else [])
    result = []
    for feed in feeds[GENERATOR]:
        rendered = generator.run(outputs, feed)
        result.append({BASE_IMAGE: rendered[0], **({BASE_MATTE: rendered[1]} if manifest.has_matte else {})})
    return result


def add_graph_flavours(directory: Path, manifest, role: str, precisions: tuple, feeds: list | None,
                       calibration: str | None = None, keep_float: tuple = DEFAULT_KEEP_FLOAT) -> None:
    """Write the ``role`` graph of the bundle in ``directory`` (a staging directory: the fp32
    main file is there) in each of ``precisions`` other than fp32, as flavour files beside it
    (:func:`flavour_file`), and record them in ``manifest`` (in memory; the caller writes it).

    The same conversion as the base graphs' (:func:`convert_graph`); ``feeds``: the graph's
    int8 calibration inputs (:func:`student_calibration_feeds`, :func:`enhancer_calibration_feeds`),
    ``calibration`` what they are. Student and enhancer graphs hold standard ops only, so a
    flavour is its own portable twin, as the main file is."""
    from megaportraits_export.onnx_export.graph_files import check_graph, check_model

    spec = manifest.graphs[role]
    if spec.precision != "fp32":
        raise ExportError(f"the {role} graph's main file is {spec.precision}; flavours are made from an fp32 graph")
    names = (tuple(t.name for t in spec.inputs), tuple(t.name for t in spec.outputs))
    source = Path(directory) / spec.file
    for precision in precisions:
        if precision == "fp32":
            continue
        if precision == "int8" and not feeds:
            raise ExportError(f"int8 for the {role} graph needs calibration inputs")
        log.info("converting the %s graph to %s", role, precision)
        # int8: only convolutions read the 8-bit copies (float_inputs_beside_convolutions; the
        # quantizer's report, logged by convert_graph, counts the rewired readers)
        converted = convert_graph(precision, source, source, feeds if precision == "int8" else None, keep_float,
                                  manifest.image_size, float_beside_convolutions=True)
        path = Path(directory) / flavour_file(role, precision)
        onnx.save(converted, path)
        check_model(path)
        check_graph(role, path, portable=True, names=names)
        report = {"requested": precision, "graphs": {role: precision},
                  "flavour_files": {role: [path.name, path.name if spec.portable_file else None]}}
        if precision == "int8":
            report["calibration_by_role"] = {role: calibration}
            report["float_convolutions_by_role"] = {role: list(keep_float)}
        record_conversion(manifest, _merged_flavour_report(manifest, report))


def float_inputs_beside_convolutions(proto: onnx.ModelProto) -> int:
    """Make every node other than a convolution that reads a float tensor through the quantizer's
    QuantizeLinear -> DequantizeLinear pair read the tensor itself (graph inputs and what
    non-convolutions write; see below for convolution outputs); returns how many were rewired.

    The quantizer puts one Q/DQ pair on a tensor that a convolution reads, and every other
    reader then takes the 8-bit copy too: the enhancer's bicubic skip path enlarged the base
    rendering rounded to 256 levels (rms 0.001 on the demo enhancer, 10x the enhancer's own
    change over bicubic). Only the convolutions are meant to read int8."""
    graph = proto.graph
    inputs = {i.name for i in graph.input}
    initializers = {t.name for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    rewired = 0
    for node in graph.node:
        if node.op_type in ("Conv", "QuantizeLinear", "DequantizeLinear"):
            continue
        for k, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear" or q.input[0] in initializers:
                continue
            # a convolution's own output stays int8 for all its readers: ONNX Runtime fuses
            # DQ -> Conv -> Q into one int8 convolution only while Q is the Conv's one reader
            writer = producers.get(q.input[0])
            if q.input[0] in inputs or (writer is not None and writer.op_type != "Conv"):
                node.input[k] = q.input[0]
                rewired += 1
    return rewired


def _merged_flavour_report(manifest, report: dict) -> dict:
    """``report`` joined with what the manifest records already for the same precision (the base
    graphs' int8 flavour and the enhancer's are one precision, calibrated on different inputs)."""
    old = manifest.provenance.get("precision_flavours", {}).get(report["requested"])
    if not old:
        return report
    merged = {**old, **{k: v for k, v in report.items() if not isinstance(v, dict)}}
    for key, value in report.items():
        if isinstance(value, dict):
            merged[key] = {**old.get(key, {}), **value}
    return merged
