"""Bundle loading: hashes, containment of every file reference, contract checks, the custom-op
flavour choice with its portable fallback, and providers."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from megaportraits import bundle as bundle_mod
from megaportraits import manifest as mf
from megaportraits import sessions
from megaportraits.bundle import CustomOpStatus, open_bundle
from megaportraits.errors import BundleError, MegaportraitsError, PortableFallbackWarning, ProviderError
from megaportraits.onnx_refs import external_data_refs
from megaportraits.providers import resolve_providers


def edit_manifest(directory, change):
    path = directory / mf.MANIFEST_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def rehash(directory):
    """Re-sign the manifest after a deliberate change (an attacker can do this too)."""
    manifest = mf.load_manifest(directory)
    mf.write_manifest(directory, manifest)


@pytest.fixture
def no_sessions(monkeypatch):
    """Fail the test if ONNX Runtime is asked to open any file."""
    def refuse(*args, **kwargs):
        raise AssertionError("a session was created for a refused bundle")
    monkeypatch.setattr(ort, "InferenceSession", refuse)


def test_opens_toy_bundle(toy_bundle):
    b = open_bundle(toy_bundle, provider="cpu")
    assert set(b.sessions) == {"source", "driver", "generator"}
    assert b.portable and b.providers == ["CPUExecutionProvider"]


def test_tampered_file_is_named(toy_bundle, bundle_copy, no_sessions):
    d = bundle_copy(toy_bundle)
    with open(d / "driver.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="'driver.onnx' does not match its sha256"):
        open_bundle(d)


def test_missing_file_is_named(toy_bundle, bundle_copy, no_sessions):
    d = bundle_copy(toy_bundle)
    (d / "generator.onnx").unlink()
    with pytest.raises(BundleError, match="'generator.onnx' is missing"):
        open_bundle(d)


@pytest.mark.parametrize("name", ["../source.onnx", "/etc/passwd", "sub/x.onnx", ".."])
def test_manifest_file_names_outside_the_bundle_are_refused(toy_bundle, bundle_copy, no_sessions, name):
    d = bundle_copy(toy_bundle)
    def change(data):
        data["graphs"]["source"]["file"] = name
        data["files"][name] = "0" * 64
    edit_manifest(d, change)
    with pytest.raises(BundleError, match="not a plain file name inside the bundle"):
        open_bundle(d)


def test_symlinked_graph_is_refused(toy_bundle, bundle_copy, tmp_path, no_sessions):
    d = bundle_copy(toy_bundle)
    outside = tmp_path / "outside.onnx"
    (d / "driver.onnx").rename(outside)
    os.symlink(outside, d / "driver.onnx")
    with pytest.raises(BundleError, match="points outside the bundle directory"):
        open_bundle(d)


def _externalise(directory, role, location, convert_attribute=False):
    """Move the role's weights to external data at ``location`` (as an attacker could)."""
    path = directory / f"{role}.onnx"
    model = onnx.load(str(path))
    onnx.external_data_helper.convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=64,
        convert_attribute=convert_attribute)
    onnx.save(model, str(path))
    if location != "weights.bin":
        model = onnx.load(str(path), load_external_data=False)
        tensors = list(model.graph.initializer)
        for node in model.graph.node:
            tensors += [a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR]
        for t in tensors:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("location", ["../weights.bin", "/etc/hostname", "sub/../../weights.bin"])
def test_external_data_outside_the_bundle_is_refused(toy_bundle, bundle_copy, no_sessions, location):
    d = bundle_copy(toy_bundle)
    _externalise(d, "driver", location)
    rehash(d)
    with pytest.raises(BundleError, match="refers to external data .* outside the bundle directory"):
        open_bundle(d)


def test_external_data_in_a_constant_attribute_is_checked(toy_bundle, bundle_copy, no_sessions, tmp_path):
    d = bundle_copy(toy_bundle)
    model = onnx.load(str(d / "generator.onnx"))
    const = onnx.helper.make_node("Constant", [], ["unused"], value=onnx.numpy_helper.from_array(
        np.ones((64, 64), np.float32), "c"))
    model.graph.node.insert(0, const)
    onnx.save(model, str(d / "generator.onnx"))
    _externalise(d, "generator", "../../leak.bin", convert_attribute=True)
    assert "../../leak.bin" in {r.location for r in external_data_refs(d / "generator.onnx")}
    rehash(d)
    with pytest.raises(BundleError, match="outside the bundle directory"):
        open_bundle(d)


def test_external_data_inside_the_bundle_must_be_hashed(toy_bundle, bundle_copy, monkeypatch):
    d = bundle_copy(toy_bundle)
    _externalise(d, "driver", "weights.bin")
    rehash(d)  # hashes the graph files only: weights.bin is not listed
    with monkeypatch.context() as m:
        m.setattr(ort, "InferenceSession", lambda *a, **k: pytest.fail("session created"))
        with pytest.raises(BundleError, match="'weights.bin' that the manifest does not hash"):
            open_bundle(d)
    edit_manifest(d, lambda data: data["files"].update({"weights.bin": mf.sha256_file(d / "weights.bin")}))
    b = open_bundle(d, provider="cpu")
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    ref = ort.InferenceSession(str(toy_bundle / "driver.onnx")).run(None, {"driver_image": x})
    got = b.sessions["driver"].run(None, {"driver_image": x})
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(r, g)
    (d / "weights.bin").write_bytes(b"\0" * (d / "weights.bin").stat().st_size)
    with pytest.raises(BundleError, match="'weights.bin' does not match its sha256"):
        open_bundle(d)


def test_truncated_graph_is_not_an_onnx_model(toy_bundle, bundle_copy, no_sessions):
    d = bundle_copy(toy_bundle)
    data = (d / "source.onnx").read_bytes()
    (d / "source.onnx").write_bytes(data[: len(data) // 2])
    rehash(d)
    with pytest.raises(BundleError, match="'source.onnx' is not a valid ONNX model"):
        open_bundle(d)


def test_incompatible_tensor_names(toy_bundle, bundle_copy, no_sessions):
    d = bundle_copy(toy_bundle)
    edit_manifest(d, lambda data: data["graphs"]["driver"]["outputs"][0].update(name="head_pose"))
    with pytest.raises(BundleError, match="the 'driver' graph .* incompatible"):
        open_bundle(d)


def test_graph_file_that_disagrees_with_its_manifest(toy_bundle, bundle_copy):
    d = bundle_copy(toy_bundle)
    (d / "driver.onnx").write_bytes((d / "source.onnx").read_bytes())
    rehash(d)
    with pytest.raises(BundleError, match="not what its manifest entry says"):
        open_bundle(d)


def test_newer_format_and_broken_json(toy_bundle, bundle_copy):
    d = bundle_copy(toy_bundle)
    edit_manifest(d, lambda data: data.update(format_version=99))
    with pytest.raises(BundleError, match="newer than this SDK reads"):
        open_bundle(d)
    (d / mf.MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        open_bundle(d)


def test_missing_directory_and_demo(tmp_path, monkeypatch):
    with pytest.raises(BundleError, match="does not exist"):
        open_bundle(tmp_path / "nowhere")
    monkeypatch.setattr(bundle_mod, "DEMO_BUNDLE", tmp_path / "demo_bundle")
    with pytest.raises(BundleError, match="the bundled demo model is not installed"):
        open_bundle(None)


# ---- custom op flavour and portable fallback ---------------------------------------------
def _library(monkeypatch, available: bool):
    status = CustomOpStatus(True, path="/fake/libops.so") if available else \
        CustomOpStatus(False, reason="libmegaportraits_ops.so was not built")
    monkeypatch.setattr(sessions, "custom_op_status", lambda: status)
    monkeypatch.setattr(sessions, "register_library", lambda options, path: None)


def _outputs(b):
    x = np.random.default_rng(3).random((1, 3, 32, 32), dtype=np.float32)
    return b.sessions["source"].run(None, {"source_image": x})


def test_custom_op_flavour_is_used_when_the_library_loads(toy_custom_bundle, monkeypatch):
    _library(monkeypatch, available=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = open_bundle(toy_custom_bundle, provider="cpu")
    assert not b.portable and b.graph_path("source").name == "source.onnx"


def test_portable_fallback_warns_once_and_matches(toy_custom_bundle, monkeypatch):
    _library(monkeypatch, available=True)
    custom = _outputs(open_bundle(toy_custom_bundle, provider="cpu"))
    _library(monkeypatch, available=False)
    with pytest.warns(PortableFallbackWarning) as caught:
        b = open_bundle(toy_custom_bundle, provider="cpu")
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert "libmegaportraits_ops.so was not built" in str(caught[0].message)
    assert b.portable and b.graph_path("source").name == "source.portable.onnx"
    for c, p in zip(custom, _outputs(b)):
        np.testing.assert_array_equal(c, p)


def test_library_that_fails_to_load_falls_back(toy_custom_bundle, monkeypatch):
    monkeypatch.setattr(sessions, "custom_op_status", lambda: CustomOpStatus(True, path="/fake/lib.so"))

    def broken(options, path):
        raise RuntimeError("undefined symbol: OrtGetApiBase")
    monkeypatch.setattr(sessions, "register_library", broken)
    with pytest.warns(PortableFallbackWarning, match="loading /fake/lib.so failed: undefined symbol"):
        b = open_bundle(toy_custom_bundle, provider="cpu")
    assert b.portable


def test_custom_op_bundle_without_portable_twins_needs_the_library(toy_custom_bundle, bundle_copy, monkeypatch):
    d = bundle_copy(toy_custom_bundle)
    def change(data):
        for g in data["graphs"].values():
            g.pop("portable_file")
    edit_manifest(d, change)
    _library(monkeypatch, available=False)
    with pytest.raises(BundleError, match="needs the custom-op library, which cannot be used: .*not built"):
        open_bundle(d)


def test_unknown_custom_op_version_uses_portable(toy_custom_bundle, bundle_copy, monkeypatch):
    d = bundle_copy(toy_custom_bundle)
    edit_manifest(d, lambda data: data["custom_op"].update(version=7))
    _library(monkeypatch, available=True)
    with pytest.warns(PortableFallbackWarning, match="v7, which this SDK does not provide"):
        assert open_bundle(d).portable


def test_portable_can_be_forced(toy_custom_bundle, monkeypatch):
    _library(monkeypatch, available=True)
    assert open_bundle(toy_custom_bundle, portable=True).portable


# ---- providers and threads ---------------------------------------------------------------
def test_providers():
    cpu = ["CPUExecutionProvider"]
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("auto", cpu) == cpu
    assert resolve_providers("auto", both) == both
    assert resolve_providers("CUDA", both) == both
    assert resolve_providers("cpu", both) == cpu
    with pytest.raises(ProviderError, match=r"provider 'cuda' is not available .*available: CPUExecutionProvider"):
        resolve_providers("cuda", cpu)
    with pytest.raises(ProviderError, match="unknown provider 'tpu'; choose one of auto, cpu, cuda"):
        resolve_providers("tpu", cpu)


def test_threads_reach_the_sessions(toy_bundle):
    b = open_bundle(toy_bundle, provider="cpu", threads=1)
    assert b.sessions["generator"].get_session_options().intra_op_num_threads == 1
    with pytest.raises(MegaportraitsError, match="threads must be a whole number"):
        open_bundle(toy_bundle, threads=-2)


# ---- validate_bundle: the complete check, no sessions; info and the Animator agree -------------
def _info_and_animate(capsys, directory):
    """(info's exit code and status line, whether open_bundle opens the bundle)."""
    from megaportraits import cli

    capsys.readouterr()
    code = cli.main(["info", "--bundle", str(directory)])
    status = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("  status: "))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            open_bundle(directory, provider="cpu")
        opened = True
    except BundleError:
        opened = False
    return code, status, opened


def test_validate_bundle_reports_ok_and_the_flavour_without_sessions(toy_custom_bundle, monkeypatch):
    _library(monkeypatch, available=True)
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: pytest.fail("validate created a session"))
    report = bundle_mod.validate_bundle(toy_custom_bundle)
    assert report.ok and report.problems == () and report.manifest.image_size == 32
    assert not report.flavour.portable and report.runs_with == "custom-op graphs"
    report.raise_for_problems()  # nothing to raise


def test_image_size_that_does_not_match_the_graphs_is_invalid_for_info_and_animate(toy_bundle, bundle_copy, capsys):
    d = bundle_copy(toy_bundle)
    edit_manifest(d, lambda data: data["model"].update(image_size=64))  # graphs are 32x32
    report = bundle_mod.validate_bundle(d)
    assert not report.ok and any("image_size 64 does not match" in p for p in report.problems), report.problems
    code, status, opened = _info_and_animate(capsys, d)
    assert code == 1 and status.startswith("  status: invalid: ") and not opened


def add_custom_op_node(path):
    """Give the graph a (dangling) node of the custom op and re-sign the bundle."""
    from megaportraits.schema import GRID_SAMPLE_3D

    model = onnx.load(str(path))
    model.graph.node.append(onnx.helper.make_node(GRID_SAMPLE_3D.name, ["driver_image", "driver_image"], ["unused"],
                                                  domain=GRID_SAMPLE_3D.domain))
    model.opset_import.append(onnx.helper.make_opsetid(GRID_SAMPLE_3D.domain, GRID_SAMPLE_3D.version))
    onnx.save(model, str(path))
    rehash(path.parent)


def test_custom_op_null_with_graphs_that_use_it_is_invalid(toy_bundle, bundle_copy, capsys):
    d = bundle_copy(toy_bundle)
    add_custom_op_node(d / "driver.onnx")
    report = bundle_mod.validate_bundle(d)
    assert any("uses the custom op com.megaportraits::GridSample3D, but the manifest's custom_op is null" in p
               for p in report.problems), report.problems
    code, status, opened = _info_and_animate(capsys, d)
    assert code == 1 and not opened


def test_a_portable_twin_that_uses_the_custom_op_is_invalid(toy_custom_bundle, bundle_copy):
    d = bundle_copy(toy_custom_bundle)
    add_custom_op_node(d / "driver.portable.onnx")
    problems = bundle_mod.validate_bundle(d).problems
    assert any("portable twin 'driver.portable.onnx'" in p for p in problems), problems


def test_a_shape_that_disagrees_with_the_graph_file_is_invalid(toy_bundle, bundle_copy, capsys):
    d = bundle_copy(toy_bundle)
    edit_manifest(d, lambda data: data["graphs"]["generator"]["inputs"][0].update(shape=["batch", 3, 2, 8, 9]))
    problems = bundle_mod.validate_bundle(d).problems
    assert any("gives canonical_volume the shape ['batch', 3, 2, 8, 8]" in p for p in problems), problems
    code, _, opened = _info_and_animate(capsys, d)
    assert code == 1 and not opened


def test_every_problem_is_listed_and_the_first_is_raised(toy_bundle, bundle_copy):
    d = bundle_copy(toy_bundle)
    for name in ("driver.onnx", "generator.onnx"):
        with open(d / name, "ab") as f:
            f.write(b"\0")
    report = bundle_mod.validate_bundle(d)
    assert len(report.problems) == 2 and all("does not match its sha256" in p for p in report.problems)
    with pytest.raises(BundleError, match=r"'driver.onnx' does not match .*\(and 1 more problem"):
        report.raise_for_problems()


def test_model_interface_reads_what_onnx_reads(tmp_path):
    """Inputs (initializers excluded), outputs with dtypes and dims, and the operators of nodes
    inside subgraphs and model-local functions, checked against the onnx package's parse."""
    from onnx import TensorProto, helper

    from megaportraits.onnx_refs import model_interface

    inner = helper.make_graph([helper.make_node("GridSample3D", ["x", "x"], ["z"], domain="com.megaportraits")],
                              "then", [], [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["z2"])], "else", [],
                              [helper.make_tensor_value_info("z2", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Cast", ["flag_f"], ["flag"], to=TensorProto.BOOL),
             helper.make_node("If", ["flag"], ["y"], then_branch=inner, else_branch=other),
             helper.make_node("LocalOp", ["w"], ["v"], domain="local")]
    function = helper.make_function("local", "LocalOp", ["a"], ["b"], [helper.make_node("Neg", ["a"], ["b"])],
                                    [helper.make_opsetid("", 18)])
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 7]),
         helper.make_tensor_value_info("flag_f", TensorProto.FLOAT16, [1]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [2])],  # w is an initializer too
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("v", TensorProto.INT64, [None, 4])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])])
    model = helper.make_model(graph, functions=[function], opset_imports=[
        helper.make_opsetid("", 18), helper.make_opsetid("com.megaportraits", 1), helper.make_opsetid("local", 1)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    got = model_interface(path)
    assert [(v.name, v.dtype, v.shape) for v in got.inputs] == [("x", "float32", ("batch", 3, 7)),
                                                                  ("flag_f", "float16", (1,))]
    assert [(v.name, v.dtype, v.shape) for v in got.outputs] == [("y", "float32", None), ("v", "int64", (None, 4))]
    every_node = {(n.domain, n.op_type) for n in model.graph.node} | {(n.domain, n.op_type) for n in function.node} \
        | {(n.domain, n.op_type) for g in (inner, other) for n in g.node}
    assert got.ops == every_node
    assert ("com.megaportraits", "GridSample3D") in got.ops  # found inside the If's branch


@pytest.mark.parametrize("provider", ["bogus", "cuda"])
def test_info_with_an_unknown_or_unavailable_provider_is_one_line(toy_bundle, capsys, provider):
    from megaportraits import cli

    if provider == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    code = cli.main(["info", "--bundle", str(toy_bundle), "--provider", provider])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err.count("\n") == 1
    expected = {"bogus": "unknown provider 'bogus'", "cuda": "provider 'cuda' is not available"}[provider]
    assert err.startswith(f"megaportraits: error: {expected}"), err


def test_a_file_instead_of_a_bundle_directory(toy_bundle):
    with pytest.raises(BundleError, match="is a file, not a bundle directory; pass the directory that holds"):
        open_bundle(toy_bundle / mf.MANIFEST_NAME)
