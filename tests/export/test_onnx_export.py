"""The ONNX bundle matches the PyTorch model it was exported from, in both flavours.

References are independent of the code under test: the PyTorch modules themselves, ONNX's
reference evaluator (with a Python GridSample3D built on ONNX's own GridSample), and the
manifest module's hashing. Bundles come from the session-wide ``bundle_factory`` (conftest), so
each preset and flavour is exported once.
"""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx.reference import ReferenceEvaluator
from onnx.reference.ops.op_grid_sample import GridSample

from megaportraits import manifest as mf
from megaportraits_export import custom_op, onnx_export
from megaportraits_export.checkpoint import CheckpointError, load_model_from_checkpoint, save_checkpoint
from megaportraits.schema import GRAPH_IO, GRID_SAMPLE_3D
from megaportraits_export.onnx_export import ExportError, writing

PRESETS = ("tiny", "small256")
SEED = 0


class GridSample3D(GridSample):
    """com.megaportraits::GridSample3D for onnx.reference: by contract, ONNX GridSample-20."""

    op_domain = GRID_SAMPLE_3D.domain


@pytest.fixture(scope="module", params=PRESETS)
def preset(request):
    return request.param


@pytest.fixture(scope="module")
def model(preset):
    return onnx_export.random_model(preset, SEED)[0]


@pytest.fixture(scope="module")
def default_bundle(bundle_factory, preset):
    return bundle_factory(preset, portable=False, seed=SEED)


@pytest.fixture(scope="module")
def portable_bundle(bundle_factory, preset):
    return bundle_factory(preset, portable=True, seed=SEED)


def _nodes(path, domain=None):
    proto = onnx.load(path, load_external_data=False)
    return [n for n in proto.graph.node if domain is None or n.domain == domain], proto


# ---- against PyTorch --------------------------------------------------------------------------
@pytest.mark.parametrize("flavour", ["default", "portable"])
def test_every_graph_file_matches_pytorch_at_batch_1_and_3(model, default_bundle, portable_bundle, flavour):
    bundle = default_bundle if flavour == "default" else portable_bundle
    manifest = mf.load_manifest(bundle)
    report = onnx_export.verify_bundle(bundle, model, batch_sizes=(1, 3))
    print(onnx_export.format_report(report))

    assert not [r.describe() for r in report if not r.ok]
    for r in report:
        if r.output == "image":
            assert r.max_abs <= 1e-4
    graph_files = {f for g in manifest.graphs.values() for f in (g.file, g.portable_file) if f}
    assert {r.file for r in report} == graph_files
    for role, io in GRAPH_IO.items():
        for batch in (1, 3):
            checked = {r.output for r in report if r.batch == batch and r.file == manifest.graphs[role].file}
            assert checked == set(io.outputs)


def test_verification_notices_a_wrong_model(bundle_factory):
    other = onnx_export.random_model("tiny", SEED + 1)[0]
    report = onnx_export.verify_bundle(bundle_factory("tiny", portable=True, seed=SEED), other, batch_sizes=(1,))
    assert any(not r.ok for r in report if r.output == "image")


def test_verification_refuses_what_the_sdk_would_refuse(tmp_path, bundle_factory):
    """The verifier checks the bundle with the SDK's own validate_bundle before any session: a
    graph file changed after export is named, as ``megaportraits info`` would name it."""
    bundle = shutil.copytree(bundle_factory("tiny", portable=True, seed=SEED), tmp_path / "b")
    with open(bundle / "driver.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ExportError, match="'driver.onnx' does not match its sha256"):
        onnx_export.verify_bundle(bundle, onnx_export.random_model("tiny", SEED)[0], batch_sizes=(1,))


def test_the_two_flavours_agree(default_bundle, portable_bundle, model):
    manifest = mf.load_manifest(default_bundle)
    inputs = onnx_export.example_inputs(model, manifest.image_size, batch=2, seed=7)
    for role, spec in manifest.graphs.items():
        in_names, out_names = GRAPH_IO[role].inputs, GRAPH_IO[role].outputs
        feeds = {n: t.numpy() for n, t in zip(in_names, inputs[role])}
        runs = [onnx_export.ort_session(default_bundle / spec.file)[0].run(None, feeds),
                onnx_export.ort_session(default_bundle / spec.portable_file)[0].run(None, feeds),
                onnx_export.ort_session(portable_bundle / spec.file)[0].run(None, feeds)]
        for name, custom, twin, portable in zip(out_names, *runs):
            scale = max(1.0, float(np.abs(portable).max()))
            np.testing.assert_allclose(custom, portable, rtol=0, atol=1e-5 * scale, err_msg=f"{role}:{name}")
            np.testing.assert_allclose(twin, portable, rtol=0, atol=1e-6 * scale, err_msg=f"{role}:{name}")


def strong_poses(batch: int, seed: int) -> torch.Tensor:
    """Head poses far from identity (25 to 46 degrees of yaw either way, strong pitch and roll,
    scale and translation off): the random-init pose regressor only ever predicts poses within
    ~0.01 of identity, where most of the volume is sampled inside and padding never matters."""
    from megaportraits_export.warp import pose_matrix

    g = torch.Generator().manual_seed(seed)
    sign = torch.where(torch.arange(batch) % 2 == 0, 1.0, -1.0)
    yaw = sign * (0.45 + 0.35 * torch.rand(batch, generator=g))
    pitch = -sign * (0.2 + 0.2 * torch.rand(batch, generator=g))
    roll = 0.3 * (2 * torch.rand(batch, generator=g) - 1)
    scale = (0.85 + 0.3 * torch.rand(batch, 1, generator=g)).expand(batch, 3)
    translation = 0.12 * (2 * torch.rand(batch, 3, generator=g) - 1)
    return pose_matrix(scale, torch.stack([yaw, pitch, roll], 1), translation)


@pytest.mark.parametrize("flavour", ["default", "portable"])
def test_generator_matches_pytorch_under_strong_rotations(model, default_bundle, portable_bundle, flavour):
    bundle = default_bundle if flavour == "default" else portable_bundle
    manifest = mf.load_manifest(bundle)
    volume, descriptor, near_identity, expression = onnx_export.example_inputs(
        model, manifest.image_size, batch=3, seed=11)["generator"]
    assert (near_identity[:, :, :3] - torch.eye(3)).abs().max() < 0.05  # what the other tests see
    pose = strong_poses(3, seed=12)
    inputs = (volume, descriptor, pose, expression)
    session, _ = onnx_export.ort_session(bundle / manifest.graphs["generator"].file)
    got = session.run(None, {n: t.numpy() for n, t in zip(GRAPH_IO["generator"][0], inputs)})[0]
    with torch.no_grad():
        expected = model.generator(*inputs)
        unrotated = model.generator(volume, descriptor, near_identity, expression)
    expected = (expected[0] if isinstance(expected, tuple) else expected).numpy()
    unrotated = (unrotated[0] if isinstance(unrotated, tuple) else unrotated).numpy()
    assert np.abs(expected - unrotated).max() > 0.05, "the strong poses change the image"
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_custom_op_graph_runs_in_the_onnx_reference_evaluator(bundle_factory):
    """The per-frame custom-flavour graph exactly as written, GridSample3D included, without ORT
    or the op library (the reference evaluator is slow: the generator is enough)."""
    bundle = bundle_factory("tiny", portable=False, seed=SEED)
    model, config = onnx_export.random_model("tiny", SEED)
    inputs = onnx_export.example_inputs(model, config.image_size, batch=1, seed=3)
    custom_op.register_onnx_schema()
    proto = onnx.load(bundle / "generator.onnx")
    assert any(n.domain == GRID_SAMPLE_3D.domain for n in proto.graph.node)
    evaluator = ReferenceEvaluator(proto, new_ops=[GridSample3D])
    (image,) = evaluator.run(None, {n: t.numpy() for n, t in zip(GRAPH_IO["generator"].inputs, inputs["generator"])})
    with torch.no_grad():
        expected = model.generator(*inputs["generator"]).numpy()
    np.testing.assert_allclose(image, expected, rtol=0, atol=1e-4)


def test_large_group_norms_are_exported_accurately(tmp_path):
    """A GroupNorm over one large group of values far from zero, where ONNX Runtime's
    InstanceNormalization loses precision (2.5e-4 here); the exported two-pass form keeps
    within 1e-4 of torch, with the same weights and state_dict keys."""
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(1, 8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    stable = onnx_export.with_stable_group_norms(torch.nn.Sequential(norm)).eval()
    assert isinstance(stable[0], onnx_export.TwoPassGroupNorm)
    assert stable.state_dict().keys() == torch.nn.Sequential(norm).state_dict().keys()

    g = torch.Generator().manual_seed(1)
    example = 100 + torch.randn(2, 8, 256, 256, generator=g)
    onnx_export.export_graph(stable, (example,), ("x",), ("y",)).save(tmp_path / "norm.onnx")
    ops = {n.op_type for n in onnx.load(tmp_path / "norm.onnx").graph.node}
    assert "InstanceNormalization" not in ops and "GroupNormalization" not in ops
    session = onnx_export.ort_session(tmp_path / "norm.onnx")[0]
    for batch in (1, 3):
        x = 100 + torch.randn(batch, 8, 256, 256, generator=g)
        with torch.no_grad():
            expected = norm(x).numpy()
        (actual,) = session.run(None, {"x": x.numpy()})
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4, err_msg=f"batch {batch}")


# ---- graph structure --------------------------------------------------------------------------
def test_default_bundle_uses_the_custom_op_once_per_heavy_sample(default_bundle):
    manifest = mf.load_manifest(default_bundle)
    assert manifest.custom_op == {"domain": GRID_SAMPLE_3D.domain, "version": GRID_SAMPLE_3D.version}
    for role in ("source", "generator"):
        spec = manifest.graphs[role]
        custom, proto = _nodes(default_bundle / spec.file, GRID_SAMPLE_3D.domain)
        assert [n.op_type for n in custom] == ["GridSample3D"]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in custom[0].attribute}
        assert attrs == {"mode": b"linear", "padding_mode": b"zeros", "align_corners": 0}
        assert (GRID_SAMPLE_3D.domain, 1) in [(o.domain, o.version) for o in proto.opset_import]
        assert spec.portable_file != spec.file
        twin_custom, twin = _nodes(default_bundle / spec.portable_file, GRID_SAMPLE_3D.domain)
        assert twin_custom == []
        assert sum(n.op_type == "GridSample" for n in twin.graph.node) == \
            sum(n.op_type == "GridSample" for n in proto.graph.node) + 1
    driver = manifest.graphs["driver"]
    assert driver.portable_file == driver.file
    assert _nodes(default_bundle / driver.file, GRID_SAMPLE_3D.domain)[0] == []


def test_portable_bundle_has_standard_ops_only(portable_bundle):
    manifest = mf.load_manifest(portable_bundle)
    assert manifest.custom_op is None
    assert sorted(p.name for p in portable_bundle.iterdir()) == \
        ["driver.onnx", "generator.onnx", "manifest.json", "source.onnx"]
    for spec in manifest.graphs.values():
        nodes, proto = _nodes(portable_bundle / spec.file)
        assert {n.domain for n in nodes} <= {""}
        assert [(o.domain, o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [("", 20)]
    assert manifest.graph_file("source", portable=True) == "source.onnx"


def test_graphs_are_clean_for_deployment(default_bundle, model):
    custom_op.register_onnx_schema()
    manifest = mf.load_manifest(default_bundle)
    for role, spec in manifest.graphs.items():
        for file in {spec.file, spec.portable_file}:
            onnx.checker.check_model(default_bundle / file, full_check=True, check_custom_domain=True)
            inputs, outputs, ops = onnx_export.graph_summary(default_bundle / file)
            assert not set(ops) & onnx_export.SLOW_OPS
            assert b"stack_trace" not in (default_bundle / file).read_bytes()  # no debugging metadata
            assert "Constant" not in ops  # folded into initializers
            assert tuple(t.name for t in inputs) == GRAPH_IO[role].inputs
            assert tuple(t.name for t in outputs) == GRAPH_IO[role].outputs
            assert all(t.shape[0] == "batch" and t.dtype == "float32" for t in (*inputs, *outputs))
            assert tuple(inputs) == spec.inputs and tuple(outputs) == spec.outputs
    # weights are inside the graphs: no external data at these sizes
    assert all(name.endswith(".onnx") for name in manifest.files)


def test_conv_weights_are_plain_initializers(default_bundle):
    """Weight standardisation and every other weight-only computation is folded away: no
    arithmetic remains between an initializer and a Conv's weight input."""
    for file in ("source.onnx", "generator.onnx", "driver.onnx"):
        nodes, proto = _nodes(default_bundle / file)
        initializers = {t.name for t in proto.graph.initializer}
        convs = [n for n in nodes if n.op_type == "Conv"]
        assert convs
        assert all(n.input[1] in initializers for n in convs), file


# ---- manifest ---------------------------------------------------------------------------------
def test_manifest_records_what_the_sdk_needs(default_bundle, preset):
    from megaportraits_export.config import get_config

    manifest = mf.load_manifest(default_bundle)
    assert manifest.model_name == "megaportraits"
    assert manifest.preset == preset
    assert manifest.image_size == get_config(preset).image_size
    assert manifest.opset == 20 and manifest.precision == "fp32"
    assert set(manifest.graphs) == {"source", "driver", "generator"}
    assert manifest.provenance == {"weights": "random-init", "seed": SEED}
    assert {"megaportraits", "torch", "onnx", "onnxruntime", "python"} <= set(manifest.producer)
    assert manifest.producer["torch"] == torch.__version__
    on_disk = sorted(p.name for p in default_bundle.iterdir() if p.name != mf.MANIFEST_NAME)
    assert sorted(manifest.files) == on_disk
    for name, digest in manifest.files.items():
        assert digest == mf.sha256_file(default_bundle / name)


def test_tampered_or_missing_files_are_named(default_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(default_bundle, copy)
    manifest = mf.load_manifest(copy)
    mf.verify_files(copy, manifest)

    data = bytearray((copy / "generator.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "generator.onnx").write_bytes(bytes(data))
    with pytest.raises(mf.BundleError, match="'generator.onnx' does not match its sha256"):
        mf.verify_files(copy, manifest)

    shutil.copy(default_bundle / "generator.onnx", copy / "generator.onnx")
    (copy / "source.portable.onnx").unlink()
    with pytest.raises(mf.BundleError, match="'source.portable.onnx' is missing"):
        mf.verify_files(copy, manifest)


# ---- the custom op in PyTorch and ONNX -------------------------------------------------------
def test_torch_custom_op_equals_grid_sample_and_traces():
    g = torch.Generator().manual_seed(0)
    volume = torch.randn(2, 5, 4, 6, 7, generator=g)
    grid = torch.rand(2, 3, 5, 4, 3, generator=g) * 2.4 - 1.2
    expected = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(custom_op.volume_sampler(volume, grid), expected, rtol=0, atol=0)
    torch.library.opcheck(custom_op.grid_sample_3d, (volume, grid, "bilinear", "zeros", False),
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_modes_without_an_onnx_equivalent_are_refused():
    with pytest.raises(ValueError, match="bicubic"):
        custom_op._onnx_attributes("bicubic", "zeros", False)


def test_schema_infers_the_sampled_shape():
    custom_op.register_onnx_schema()
    custom_op.register_onnx_schema()  # idempotent
    node = onnx.helper.make_node("GridSample3D", ["X", "grid"], ["Y"], domain=GRID_SAMPLE_3D.domain,
                                 mode="linear", padding_mode="zeros", align_corners=0)
    graph = onnx.helper.make_graph(
        [node], "g",
        [onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["batch", 96, 16, 64, 64]),
         onnx.helper.make_tensor_value_info("grid", onnx.TensorProto.FLOAT, ["batch", 8, 32, 32, 3])],
        [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20),
                                                         onnx.helper.make_opsetid(GRID_SAMPLE_3D.domain, 1)])
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    dims = inferred.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 96, 8, 32, 32]
    onnx.checker.check_model(inferred, full_check=True, check_custom_domain=True)


def test_large_graphs_keep_their_weights_in_plain_named_files(tmp_path):
    """paper512-sized graphs may need external data; its file must be a plain name in the bundle."""
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Sigmoid()).eval()
    program = onnx_export.export_graph(module, (torch.rand(2, 3, 8, 8),), ("driver_image",), ("image",))
    files = onnx_export.save_graph(program, tmp_path / "g.onnx", external_data=True)
    assert files == ["g.onnx", "g.onnx.data"]
    session, _ = onnx_export.ort_session(tmp_path / "g.onnx")
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {"driver_image": x})[0],
                                   module(torch.from_numpy(x)).numpy(), atol=1e-6)


# ---- command line and checkpoints -------------------------------------------------------------
def test_export_command_exports_a_checkpoint_verifies_and_replaces_a_bundle(
        tmp_path, capsys, monkeypatch, bundle_factory, graphs_factory):
    model, config = onnx_export.random_model("tiny", SEED)
    ckpt = save_checkpoint(tmp_path / "ckpt.pt", model, config, "tiny", {"data": "d", "steps": 3})
    out = tmp_path / "bundle"
    shutil.copytree(bundle_factory("tiny", portable=False, seed=SEED), out)
    exported = graphs_factory("tiny", SEED)  # before export_graphs is patched

    def cached_export(model, config, preset, provenance):
        """The session's export of these very weights (tracing is the slow part, tested above)."""
        reference = onnx_export.random_model("tiny", SEED)[0].state_dict()
        assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())
        return dataclasses.replace(exported, preset=preset, provenance=provenance)

    monkeypatch.setattr(writing, "export_graphs", cached_export)
    assert onnx_export.main(["--checkpoint", str(ckpt), "--portable", "--verify", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "generator.onnx" in printed and "image" in printed and " NO" not in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"]["steps"] == 3
    assert manifest["provenance"]["checkpoint"]["file"] == "ckpt.pt"
    assert manifest["model"]["preset"] == "tiny"
    assert manifest["custom_op"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "ckpt.pt"]  # no staging or old copy left
    assert sorted(p.name for p in out.iterdir()) == ["driver.onnx", "generator.onnx", "manifest.json", "source.onnx"]


def test_export_command_refuses_a_failed_verification(tmp_path, capsys, monkeypatch, graphs_factory):
    exported = graphs_factory("tiny", SEED)  # before export_graphs is patched
    monkeypatch.setattr(writing, "export_graphs", lambda model, config, preset, provenance: exported)
    argv = ["--preset", "tiny", "--random-init", "--seed", str(SEED + 1), "--output", str(tmp_path / "b")]
    assert onnx_export.main(argv + ["--verify", "--portable"]) == 1
    assert "differ from PyTorch" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_to_overwrite_a_directory_that_is_not_a_bundle(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert onnx_export.main(["--preset", "tiny", "--random-init", "--output", str(tmp_path)]) == 1
    assert "not a bundle" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_failed_export_leaves_nothing_behind(tmp_path, monkeypatch, graphs_factory):
    exported = graphs_factory("tiny", SEED)
    written = []

    def fail_on_generator(graph_path, twin_path):
        written.append(graph_path.name)
        if graph_path.name == "generator.onnx":
            raise RuntimeError("simulated crash mid-write")
        real(graph_path, twin_path)

    real = onnx_export.save_standard_twin
    monkeypatch.setattr(writing, "save_standard_twin", fail_on_generator)
    with pytest.raises(RuntimeError, match="simulated"):
        onnx_export.write_bundle(exported, tmp_path / "bundle")
    assert written == ["source.onnx", "generator.onnx"]
    assert list(tmp_path.iterdir()) == []


def test_random_init_needs_a_preset_and_a_preset_needs_random_init(capsys):
    with pytest.raises(SystemExit):
        onnx_export.main(["--preset", "tiny", "--output", "x"])
    assert "--random-init" in capsys.readouterr().err


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_round_trip_keeps_weights_config_and_provenance(tmp_path, suffix):
    model, config = onnx_export.random_model("tiny", 11)
    provenance = {"data": "synthetic heads v1", "steps": 1200, "metrics": {"psnr": 21.5}}
    path = save_checkpoint(tmp_path / f"ckpt{suffix}", model, config, "tiny", provenance)

    loaded, loaded_config, loaded_provenance = load_model_from_checkpoint(path)
    assert loaded_config == config
    assert loaded_provenance["steps"] == 1200 and loaded_provenance["metrics"] == {"psnr": 21.5}
    assert loaded_provenance["preset"] == "tiny"
    assert loaded_provenance["checkpoint"] == {"file": path.name, "sha256": mf.sha256_file(path)}
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_files_that_are_not_checkpoints_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a megaportraits checkpoint"):
        load_model_from_checkpoint(tmp_path / "other.pt")
    model, config = onnx_export.random_model("tiny", 0)
    small = onnx_export.random_model("small256", 0)[0]
    torch.save({"format": "megaportraits-checkpoint", "format_version": 1,
                "config": {"preset": "tiny", **config.to_dict()}, "model": small.state_dict()},
               tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="does not fit the 'tiny' architecture"):
        load_model_from_checkpoint(tmp_path / "mismatch.pt")


def test_graphs_that_break_the_interface_are_refused(tmp_path, default_bundle):
    proto = onnx.load(default_bundle / "generator.onnx")
    proto.graph.output[0].name = "rgb"
    producer = next(n for n in proto.graph.node if "image" in n.output)
    producer.output[list(producer.output).index("image")] = "rgb"
    onnx.save(proto, tmp_path / "renamed.onnx")
    with pytest.raises(ExportError, match=r"outputs \('rgb',\).*\('image',\)"):
        onnx_export.check_graph("generator", tmp_path / "renamed.onnx", portable=False)
    with pytest.raises(ExportError, match="portable generator graph still contains a com.megaportraits node"):
        onnx_export.check_graph("generator", default_bundle / "generator.onnx", portable=True)


def test_external_weights_are_shared_by_a_graph_and_its_twin(tmp_path, graphs_factory, bundle_factory):
    inline = bundle_factory("tiny", portable=False, seed=SEED)
    shared = onnx_export.write_bundle(graphs_factory("tiny", SEED), tmp_path / "b", external_weights=True)
    manifest = mf.load_manifest(shared)
    assert sorted(manifest.files) == sorted(p.name for p in shared.iterdir() if p.name != "manifest.json")
    assert {"source.onnx.data", "driver.onnx.data", "generator.onnx.data"} <= set(manifest.files)
    mf.verify_files(shared, manifest)

    for role in ("source", "generator"):
        twin = onnx.load(shared / f"{role}.portable.onnx", load_external_data=False)
        locations = {e.value for t in twin.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {f"{role}.onnx.data"}  # the twin reads its graph's weights file
        assert (shared / f"{role}.portable.onnx").stat().st_size < 0.5 * (shared / f"{role}.onnx.data").stat().st_size
    inline_size = sum(p.stat().st_size for p in inline.iterdir())
    assert sum(p.stat().st_size for p in shared.iterdir()) < inline_size
    model = onnx_export.random_model("tiny", SEED)[0]
    report = onnx_export.verify_bundle(shared, model, batch_sizes=(2,))
    assert report and all(r.ok for r in report)
