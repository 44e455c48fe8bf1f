"""Reduced-precision bundles (``export --precision int8|fp16``) against the fp32 bundle of the
same weights, on random inputs the calibration never saw, in ONNX Runtime on the CPU.

Tolerances come from measurement (tiny preset, random weights, seed 0, ORT 1.32 CPU) with
headroom, noted beside each; the fp32-vs-fp32 comparison is exact, so any conversion bug that
changes a graph's function beyond rounding (a lost node, a swapped input, a grid computed in low
precision) fails here. The node-selection rules are checked on hand-built graphs whose answer is
known by construction.
"""
from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from megaportraits import manifest as mf
from megaportraits import sessions
from megaportraits.schema import DEQUANTIZE_INSTANCE_NORM, DRIVER, GENERATOR, GRAPH_IO, GRID_SAMPLE_3D, SOURCE
from megaportraits_export.onnx_export import ExportError, write_bundle
from megaportraits_export.onnx_export import int8_graph
from megaportraits_export.onnx_export import precision as pr

PRESET = "tiny"


@pytest.fixture(scope="module")
def bundles(graphs_factory, tmp_path_factory, one_torch_thread):
    """fp32, int8 and fp16 bundles, and one carrying all three (fp32 main files, int8 and fp16
    flavours), written from one export of random_model('tiny', 0)."""
    exported = graphs_factory(PRESET, 0)
    root = tmp_path_factory.mktemp("precision")
    frames = pr.synthetic_calibration_frames(exported.image_size, count=8)
    return {p: write_bundle(exported, root / p.replace(",", "-"), precision=p, calibration_frames=frames)
            for p in ("fp32", "int8", "fp16", "fp32,int8,fp16")}


def _runner(bundle, portable=False, precision=None):
    manifest = mf.load_manifest(bundle)
    library = None if portable else sessions.require_custom_op_library()
    options = sessions.session_options(1, library)
    made = {role: sessions.create_session(
        bundle / manifest.graph_file(role, portable, precision if role != SOURCE else None),
        ["CPUExecutionProvider"], options) for role in (SOURCE, DRIVER, GENERATOR)}

    def run(role, feed):
        names = list(GRAPH_IO[role].outputs)
        return dict(zip(names, made[role].run(names, feed)))
    return run


def _random_feeds(size, batch=2, seed=7):
    rng = np.random.default_rng(seed)
    return (rng.random((batch, 3, size, size), dtype=np.float32), rng.random((batch, 3, size, size), dtype=np.float32))


def _outputs(bundle, portable=False, precision=None):
    """(driver outputs, generator outputs) on random images, the avatar always from fp32's source
    graph (source graphs are fp32 in every flavour, checked below); ``precision``: that flavour
    of a bundle carrying several."""
    run = _runner(bundle, portable, precision)
    size = mf.load_manifest(bundle).image_size
    source_image, driver_image = _random_feeds(size)
    avatar = _runner(bundle)(SOURCE, {"source_image": source_image})
    motion = run(DRIVER, {"driver_image": driver_image})
    state = {**avatar, **motion}
    return motion, run(GENERATOR, {n: state[n] for n in GRAPH_IO[GENERATOR].inputs})


def _psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2))


# ---- the manifest and the graphs' contents ----------------------------------------------------
@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_manifest_records_the_precision_of_every_graph(bundles, precision):
    manifest = mf.load_manifest(bundles[precision])
    mf.verify_files(bundles[precision], manifest)
    assert manifest.precision == precision
    recorded = manifest.provenance["precision"]
    assert recorded["graphs"] == {SOURCE: "fp32", DRIVER: precision, GENERATOR: precision}
    assert {role: g.precision for role, g in manifest.graphs.items()} == recorded["graphs"]
    assert ("calibration" in recorded) == (precision == "int8")
    assert recorded.get("int8_rewrites") == (list(int8_graph.REWRITES) if precision == "int8" else None)
    # the source graph is byte-for-byte the fp32 one
    fp32 = mf.load_manifest(bundles["fp32"])
    assert manifest.files["source.onnx"] == fp32.files["source.onnx"]
    # the I/O contract does not change: float32 in and out
    for role in (DRIVER, GENERATOR):
        assert manifest.graphs[role].inputs == fp32.graphs[role].inputs
        assert manifest.graphs[role].outputs == fp32.graphs[role].outputs


def test_int8_quantizes_the_convolutions_and_nothing_on_the_grid_path(bundles):
    for role in (DRIVER, GENERATOR):
        fp32 = onnx.load(bundles["fp32"] / f"{role}.onnx")
        proto = onnx.load(bundles["int8"] / f"{role}.onnx")
        kept_float = pr.edge_convolutions(fp32.graph)[1]  # DEFAULT_KEEP_FLOAT: the last convolutions
        assert pr.DEFAULT_KEEP_FLOAT == ("last",) and kept_float
        kept_float |= int8_graph.small_output_convolutions(fp32.graph)  # too narrow to gain from int8
        convs = [n for n in fp32.graph.node if n.op_type == "Conv" and n.name not in kept_float]
        int8_weights = {t.name for t in proto.graph.initializer if t.data_type == TensorProto.INT8}
        producers = {o: n for n in proto.graph.node for o in n.output}
        quantized = [n for n in proto.graph.node if n.op_type == "Conv"
                     and producers.get(n.input[1]) is not None and producers[n.input[1]].input[0] in int8_weights]
        assert len(quantized) == len(convs) > 0
        # the rewrites: each GroupNorm one InstanceNormalization (its three means gone; every
        # Reciprocal of these graphs is a GroupNorm's), and no tensor dequantized twice the same way
        count = lambda model, op: sum(n.op_type == op for n in model.graph.node)  # noqa: E731
        group_norms = count(fp32, "Reciprocal")
        assert group_norms > 0
        assert count(proto, "ReduceMean") == count(fp32, "ReduceMean") - 3 * group_norms
        # (in a graph with custom nodes, those of uint8 tensors are the library's fused op)
        assert count(proto, "InstanceNormalization") + count(proto, DEQUANTIZE_INSTANCE_NORM.name) \
            == count(fp32, "InstanceNormalization") + group_norms
        dequantizers = [tuple(n.input) for n in proto.graph.node if n.op_type == "DequantizeLinear"]
        assert len(dequantizers) == len(set(dequantizers))
        # the sampling grids: nothing between the pose input and a grid is (de)quantized
        for node in proto.graph.node:
            if node.op_type in ("GridSample", GRID_SAMPLE_3D.name):
                assert not {"QuantizeLinear", "DequantizeLinear"} & _grid_path_ops(proto.graph, node.input[1])
    written = onnx.load(bundles["int8"] / "generator.onnx")
    custom = [n for n in written.graph.node if n.domain == GRID_SAMPLE_3D.domain and n.op_type == GRID_SAMPLE_3D.name]
    assert len(custom) == 1  # the volume sample is still the custom op
    # every normalisation of a uint8 tensor is the library's fused one (int8_graph.fuse_dequantize_instance_norms)
    fused = [n for n in written.graph.node if n.op_type == DEQUANTIZE_INSTANCE_NORM.name]
    producers = {o: n for n in written.graph.node for o in n.output}
    left = [n for n in written.graph.node if n.op_type == "InstanceNormalization"
            and producers.get(n.input[0]) is not None and producers[n.input[0]].op_type == "DequantizeLinear"]
    assert fused and not left
    portable = onnx.load(bundles["int8"] / "generator.portable.onnx")
    assert not [n for n in portable.graph.node if n.domain == GRID_SAMPLE_3D.domain]
    assert sum(n.op_type == "InstanceNormalization" for n in portable.graph.node) >= len(fused)


def test_int8_generator_sums_and_upsamples_in_uint8_as_onnx_runtime_runs_it(bundles, tmp_path):
    """The node-level properties the int8 speed rests on (onnx_export.int8_graph), in the graph
    ONNX Runtime optimises with the SDK's session options: no float Add of two dequantized
    convolution outputs (each residual Add is a QLinearAdd), every nearest upsample reads uint8,
    no float 1x1 Conv left to force a layout conversion, and no Transposes around the int8
    convolutions (the NhwcTransformer is off)."""
    fp32 = onnx.load(bundles["fp32"] / "generator.onnx")
    options = sessions.session_options(1, sessions.require_custom_op_library())
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    sessions.create_session(bundles["int8"] / "generator.onnx", ["CPUExecutionProvider"], options)
    optimized = onnx.load(tmp_path / "optimized.onnx")
    producers = {o: n for n in optimized.graph.node for o in n.output}
    op_of = lambda name: producers[name].op_type if name in producers else None  # noqa: E731
    count = lambda model, op: sum(n.op_type == op for n in model.graph.node)  # noqa: E731
    mode = lambda n: helper.get_attribute_value(next(a for a in n.attribute if a.name == "mode"))  # noqa: E731
    linear_resized = {n.input[0] for n in optimized.graph.node if n.op_type == "Resize" and mode(n) == b"linear"}
    float_sums = [n.name for n in optimized.graph.node if n.op_type == "Add"
                  and all(op_of(i) == "DequantizeLinear" and op_of(producers[i].input[0]) == "QLinearConv"
                          for i in n.input)]
    # the one kind left float on purpose: a sum the warp's trilinear upsample reads (int8_graph.residual_adds)
    assert float_sums and all(producers_of_add in linear_resized for producers_of_add in
                              (next(n for n in optimized.graph.node if n.name == name).output[0] for name in float_sums))
    sums = [n for n in optimized.graph.node if n.op_type == "QLinearAdd"]
    assert sums and all(op_of(n.input[i]) in ("QLinearConv", "QLinearAdd") for n in sums for i in (0, 3))
    nearest = [n for n in optimized.graph.node if n.op_type == "Resize" and mode(n) == b"nearest"]
    assert nearest and all(op_of(n.input[0]) in ("QuantizeLinear", "QLinearAdd") for n in nearest)
    written = onnx.load(bundles["int8"] / "generator.onnx")
    float_weights = {t.name: list(t.dims) for t in written.graph.initializer if t.data_type == TensorProto.FLOAT}
    assert not [n for n in written.graph.node if n.op_type == "Conv" and float_weights.get(n.input[1], [0, 0, 0])[2:] == [1, 1]]
    assert count(optimized, "QLinearConv") > 0 and count(optimized, "Transpose") <= count(fp32, "Transpose")


def _grid_path_ops(graph, grid):
    """Op types of every node a grid is computed from, back to the feature layers: the field's
    Tanh, a Conv, or the Gemm that ends a pose regressor (the driver aligns its expression crop
    with a grid made from the predicted pose)."""
    producers = {o: n for n in graph.node for o in n.output}
    ops, stack, seen = set(), [grid], set()
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen or node.op_type in ("Tanh", "Conv", "Gemm"):
            continue
        seen.add(node.name)
        ops.add(node.op_type)
        stack.extend(node.input)
    return ops


def test_fp16_keeps_the_grid_and_pose_paths_in_float32(bundles):
    proto = onnx.load(bundles["fp16"] / "generator.onnx")
    from megaportraits_export import custom_op

    custom_op.register_onnx_schema()
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input)}
    assert any(t.data_type == TensorProto.FLOAT16 for t in proto.graph.initializer)
    (volume_sample,) = [n for n in proto.graph.node if n.op_type == GRID_SAMPLE_3D.name]
    assert types[volume_sample.input[0]] == TensorProto.FLOAT16  # the volume: half the bytes
    assert types[volume_sample.input[1]] == TensorProto.FLOAT    # its grid: float32
    (field_sample,) = [n for n in proto.graph.node if n.op_type == "GridSample"]
    assert types[field_sample.input[1]] == TensorProto.FLOAT and types[field_sample.input[0]] == TensorProto.FLOAT
    means = [n for n in proto.graph.node if n.op_type == "ReduceMean"]
    assert means and all(types[n.input[0]] == TensorProto.FLOAT for n in means)


# ---- against fp32 -----------------------------------------------------------------------------
def test_fp32_flavour_is_the_plain_export(bundles):
    motion, rendering = _outputs(bundles["fp32"])
    motion_again, rendering_again = _outputs(bundles["fp32"], portable=True)
    assert np.abs(rendering["image"] - rendering_again["image"]).max() < 1e-5


@pytest.mark.parametrize("portable", [False, True])
def test_int8_graphs_match_fp32_on_random_inputs(bundles, portable):
    ref_motion, ref = _outputs(bundles["fp32"], portable)
    motion, out = _outputs(bundles["int8"], portable)
    difference = np.abs(out["image"] - ref["image"])
    # measured (8 calibration heads; these inputs and 3 seeds each of noise and held-out heads):
    # image PSNR 42.0-43.3 dB, max abs 0.041-0.058; pose max abs 4.8e-4-1.6e-3; expression code
    # error 10-27% of its norm (a random tiny network's 64-d code; the image is what it is for)
    assert _psnr(out["image"], ref["image"]) > 36.0
    assert difference.max() < 0.1
    assert 0 < np.abs(motion["pose"] - ref_motion["pose"]).max() < 5e-3
    expression_error = motion["expression"] - ref_motion["expression"]
    assert np.linalg.norm(expression_error) < 0.4 * np.linalg.norm(ref_motion["expression"])
    assert difference.max() > 1e-4  # it really is quantized (the fp32 graphs agree to 1e-5)


def test_the_int8_twin_without_the_library_renders_what_the_library_graph_does(bundles):
    """The portable int8 generator (DequantizeLinear + InstanceNormalization where the library
    graph has its fused op) renders the same image, to the 8-bit rounding a statistic's last bits
    can flip; the SDK runs it where the op library is missing."""
    _, fused = _outputs(bundles["int8"])
    _, spelled_out = _outputs(bundles["int8"], portable=True)
    assert _psnr(fused["image"], spelled_out["image"]) > 50.0
    manifest = mf.load_manifest(bundles["int8"])
    assert manifest.graph_file(GENERATOR, True) == "generator.portable.onnx"


@pytest.mark.parametrize("portable", [False, True])
def test_fp16_graphs_match_fp32_on_random_inputs(bundles, portable):
    ref_motion, ref = _outputs(bundles["fp32"], portable)
    motion, out = _outputs(bundles["fp16"], portable)
    difference = np.abs(out["image"] - ref["image"])
    # measured: image max abs 4.7e-3 (PSNR 63 dB); pose max abs 3.7e-4
    assert difference.max() < 2e-2 and _psnr(out["image"], ref["image"]) > 50.0
    assert np.abs(motion["pose"] - ref_motion["pose"]).max() < 3e-3
    assert difference.max() > 1e-6


def test_fp16_generator_matches_onnx_reference_evaluator(bundles):
    """The converted graph as ONNX itself defines it (no ORT cast insertion, no fused kernels)."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.ops.op_grid_sample import GridSample

    class GridSample3D(GridSample):
        op_domain = GRID_SAMPLE_3D.domain

    rng = np.random.default_rng(3)
    size = mf.load_manifest(bundles["fp32"]).image_size
    avatar = _runner(bundles["fp32"])(SOURCE, {"source_image": rng.random((1, 3, size, size), dtype=np.float32)})
    motion = _runner(bundles["fp32"])(DRIVER, {"driver_image": rng.random((1, 3, size, size), dtype=np.float32)})
    state = {**avatar, **motion}
    feed = {n: state[n] for n in GRAPH_IO[GENERATOR].inputs}
    reference = ReferenceEvaluator(str(bundles["fp16"] / "generator.onnx"), new_ops=[GridSample3D])
    expected = _runner(bundles["fp32"])(GENERATOR, feed)["image"]
    got = reference.run(["image"], feed)[0]
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() < 2e-2


# ---- node selection on hand-built graphs -------------------------------------------------------
def _sampling_graph():
    """pose -> MatMul(identity grid) -> q; field = Tanh(Conv(features)); sampled = GridSample(field, q);
    grid = q + sampled; volume = Conv(x); y = GridSample3D(volume, grid); image = Conv(Relu(y))
    with a two-pass normalisation (ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt, Reciprocal, Mul)."""
    f = TensorProto.FLOAT
    n = helper.make_node
    nodes = [
        n("MatMul", ["base", "pose"], ["q"], name="q"),
        n("Conv", ["features", "w_field"], ["field_raw"], name="field_conv"),
        n("Tanh", ["field_raw"], ["field"], name="field_tanh"),
        n("GridSample", ["field", "q"], ["sampled"], name="field_sample"),
        n("Add", ["q", "sampled"], ["grid"], name="grid_add"),
        n("Conv", ["x", "w_volume"], ["volume"], name="volume_conv"),
        n("GridSample3D", ["volume", "grid"], ["y"], name="volume_sample", domain=GRID_SAMPLE_3D.domain),
        n("ReduceMean", ["y"], ["mean"], name="mean"),
        n("Sub", ["y", "mean"], ["centred"], name="centre"),
        n("Mul", ["centred", "centred"], ["square"], name="square"),
        n("ReduceMean", ["square"], ["variance"], name="variance"),
        n("Add", ["variance", "eps"], ["variance_eps"], name="add_eps"),
        n("Sqrt", ["variance_eps"], ["std"], name="sqrt"),
        n("Reciprocal", ["std"], ["rstd"], name="reciprocal"),
        n("Mul", ["centred", "rstd"], ["normalised"], name="normalise"),
        n("Relu", ["normalised"], ["act"], name="relu"),
        n("Conv", ["act", "w_image"], ["image"], name="image_conv"),
    ]
    inputs = [helper.make_tensor_value_info(name, f, None) for name in ("pose", "features", "x")]
    return helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("image", f, None)])


def test_float32_nodes_are_the_grid_path_the_field_sample_and_the_statistics():
    keep = pr.float32_nodes(_sampling_graph())
    assert keep == {"q", "field_sample", "grid_add",                       # coordinates
                    "mean", "centre", "square", "variance", "add_eps", "sqrt", "reciprocal", "normalise"}
    # never: feature layers, the volume sample itself (it takes float16 data), activations
    assert not keep & {"field_conv", "field_tanh", "volume_conv", "volume_sample", "relu", "image_conv"}


def test_edge_convolutions_are_the_image_facing_ones():
    first, last = pr.edge_convolutions(_sampling_graph())
    # image_conv is "first" too: the pose input reaches it through the grid and the volume sample
    # without crossing another Conv (so keeping "first" in float keeps a generator's projection)
    assert first == {"field_conv", "volume_conv", "image_conv"}
    assert last == {"image_conv"}


def test_restoring_custom_nodes_refuses_a_lost_node():
    proto = helper.make_model(_sampling_graph())
    for node in proto.graph.node:
        if node.op_type == GRID_SAMPLE_3D.name:  # as in a portable twin
            node.domain, node.op_type = "", "GridSample"
    restored = pr.restore_custom_nodes(helper.make_model(proto.graph), {"volume_sample"})
    assert [n.name for n in restored.graph.node if n.domain == GRID_SAMPLE_3D.domain] == ["volume_sample"]
    with pytest.raises(ExportError, match="lost 1"):
        pr.restore_custom_nodes(proto, {"volume_sample", "not_there"})


# ---- calibration frames ------------------------------------------------------------------------
def test_calibration_frames_from_a_directory(tmp_path):
    import cv2

    from megaportraits_export.data.synthetic import Identity, render

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), render(Identity.sample(i), size=96)[:, :, ::-1])
    (tmp_path / "notes.txt").write_text("not an image")
    frames = pr.calibration_frames_from(tmp_path, 64, count=2)
    assert frames.images.shape == (2, 3, 64, 64) and frames.images.dtype == np.float32
    assert 0.0 <= frames.images.min() and frames.images.max() <= 1.0 and frames.images.std() > 0.05


@pytest.mark.parametrize("content", [None, 1])
def test_calibration_frames_refuses_a_bad_directory(tmp_path, content):
    target = tmp_path / "frames"
    if content is not None:
        target.mkdir()
        shutil.copy(__file__, target / "one.png")  # one file, and not an image
    with pytest.raises(ExportError) as e:
        pr.calibration_frames_from(target, 64)
    assert "\n" not in str(e.value) and "--calibration-frames" in str(e.value)


def test_unknown_precision_is_refused(tmp_path):
    with pytest.raises(ExportError, match="choose one of fp32, fp16, int8"):
        pr.convert_written_graphs(tmp_path, {}, "int4", 64)


def test_the_exported_generators_group_norms_are_all_rewritten_and_agree(bundles):
    """On the real exported tiny generator: every two-pass GroupNorm matched; the rewritten fp32
    graph computes what the two-pass graph does (random inputs; fp32 rounding apart)."""
    from megaportraits import manifest as mf
    from megaportraits.schema import GENERATOR, GRAPH_IO

    bundle = bundles["fp32"]
    path = bundle / mf.load_manifest(bundle).graph_file(GENERATOR, portable=True)
    model = onnx.load(path)
    reciprocals = sum(n.op_type == "Reciprocal" for n in model.graph.node)
    assert int8_graph.instance_norm_group_norms(model) == reciprocals > 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(9)
    feeds = {}
    for value in session.get_inputs():
        shape = [1 if not isinstance(d, int) else d for d in value.shape]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    feeds["pose"] = (np.eye(3, 4, dtype=np.float32) + 0.05 * rng.standard_normal((3, 4)).astype(np.float32))[None]
    want = session.run(list(GRAPH_IO[GENERATOR].outputs), feeds)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        list(GRAPH_IO[GENERATOR].outputs), feeds)
    for a, b in zip(got, want):
        assert np.abs(a - b).max() < 1e-4


# ---- a bundle carrying several flavours ------------------------------------------------------------
def test_a_bundle_carries_each_precision_as_a_flavour_beside_the_fp32_files(bundles):
    bundle = bundles["fp32,int8,fp16"]
    manifest = mf.load_manifest(bundle)
    mf.verify_files(bundle, manifest)
    assert manifest.precision == "fp32" and manifest.graphs[SOURCE].precisions == ("fp32",)
    for role in (DRIVER, GENERATOR):
        assert manifest.graphs[role].precisions == ("fp32", "fp16", "int8")
        assert manifest.graph_file(role, precision="int8") == f"{role}.int8.onnx"
        assert manifest.graph_file(role, portable=True, precision="fp16") in (f"{role}.fp16.portable.onnx",
                                                                                f"{role}.fp16.onnx")
    assert set(manifest.provenance["precision_flavours"]) == {"int8", "fp16"}


@pytest.mark.parametrize("precision", ["fp32", "int8", "fp16"])
def test_each_flavour_computes_what_the_single_precision_bundle_does(bundles, precision):
    """Same weights, same calibration frames: the flavour is the single-precision export."""
    motion, rendering = _outputs(bundles["fp32,int8,fp16"], precision=precision)
    want_motion, want = _outputs(bundles[precision])
    for name in want_motion:
        np.testing.assert_array_equal(motion[name], want_motion[name])
    for name in want:
        np.testing.assert_array_equal(rendering[name], want[name])


def test_the_sdk_opens_the_flavour_the_provider_runs_well(bundles):
    from megaportraits.bundle import open_bundle

    bundle = bundles["fp32,int8,fp16"]
    assert open_bundle(bundle, provider="cpu").precisions == {SOURCE: "fp32", DRIVER: "int8", GENERATOR: "int8"}
    assert open_bundle(bundle, provider="cpu", precision="fp32").graph_path(GENERATOR).name == "generator.onnx"


@pytest.mark.parametrize("text,words", [("fp32,fp32", "twice"), ("int8,fp32", "put fp32 first"),
                                        ("fp8", "one or more of"), ("", "one or more of")])
def test_a_bad_precision_list_is_refused(text, words):
    with pytest.raises(ExportError, match=words):
        pr.parse_precisions(text)


# ---- the command line --------------------------------------------------------------------------
def test_export_command_refuses_calibration_frames_without_int8(capsys, tmp_path):
    from megaportraits_export.onnx_export import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["--preset", "tiny", "--random-init", "-o", str(tmp_path / "b"), "--calibration-frames", "x"])
    assert e.value.code == 2
    assert "add --precision int8" in capsys.readouterr().err


def test_export_command_names_a_bad_calibration_directory_before_exporting(capsys, tmp_path):
    from megaportraits_export.onnx_export import cli

    code = cli.main(["--preset", "tiny", "--random-init", "-o", str(tmp_path / "b"), "--precision", "int8",
                     "--calibration-frames", str(tmp_path / "missing")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "not a directory" in err
    assert not (tmp_path / "b").exists()
