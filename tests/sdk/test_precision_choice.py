"""The SDK opens a bundle only where its graphs' precisions run as intended (megaportraits.precision):
int8 on the CPU, fp16 on CUDA, fp32 everywhere; otherwise one line that says what to do. A bundle
may carry several flavours of a graph; the provider and the precision option pick among them."""
from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from megaportraits import manifest as mf
from megaportraits.animator import AnimatorOptions
from megaportraits.errors import MegaportraitsError
from megaportraits.precision import (CPU, CUDA, CUDA_LIBRARY_MARKER, choose_precisions, graph_precisions,
                                     library_has_cuda, precision_problem)

from toy_bundle import make_toy_bundle  # tests/sdk is on sys.path (conftest)


def _manifest(**precisions):
    return SimpleNamespace(graphs={role: SimpleNamespace(precision=p) for role, p in precisions.items()})


@pytest.mark.parametrize("providers,precision,ok", [
    ([CPU], "fp32", True), ([CPU], "int8", True), ([CPU], "fp16", False),
    ([CUDA, CPU], "fp32", True), ([CUDA, CPU], "fp16", True), ([CUDA, CPU], "int8", False),
])
def test_each_provider_runs_its_precisions(providers, precision, ok):
    manifest = _manifest(source="fp32", driver=precision, generator=precision)
    problem = precision_problem(manifest, providers)
    assert (problem is None) == ok
    if not ok:
        assert "\n" not in problem and f"driver, generator graph(s) are {precision}" in problem
        assert "--precision" in problem and "--provider" in problem


def test_a_provider_the_sdk_does_not_choose_is_left_to_onnxruntime():
    assert precision_problem(_manifest(driver="fp16"), ["DmlExecutionProvider", CPU]) is None


def test_graphs_without_a_recorded_precision_are_fp32():
    assert graph_precisions(SimpleNamespace(graphs={"source": SimpleNamespace()})) == {"source": "fp32"}


@pytest.mark.parametrize("precision,refused", [("fp32", False), ("int8", False), ("fp16", True)])
def test_open_bundle_on_the_cpu_refuses_fp16_graphs(tmp_path, precision, refused):
    from megaportraits.bundle import open_bundle

    bundle = make_toy_bundle(tmp_path / "toy")
    manifest = mf.load_manifest(bundle)
    manifest.graphs = {role: dataclasses.replace(g, precision="fp32" if role == "source" else precision)
                       for role, g in manifest.graphs.items()}
    manifest.precision = precision
    mf.write_manifest(bundle, manifest)
    assert json.loads((bundle / mf.MANIFEST_NAME).read_text())["graphs"]["driver"].get("precision", "fp32") == precision
    assert mf.load_manifest(bundle).graphs["generator"].precision == precision
    if refused:
        with pytest.raises(MegaportraitsError) as e:
            open_bundle(bundle, provider="cpu")
        assert "are fp16" in str(e.value) and "\n" not in str(e.value)
    else:
        assert open_bundle(bundle, provider="cpu").manifest.precision == precision


def test_manifest_refuses_an_unknown_graph_precision(tmp_path):
    bundle = make_toy_bundle(tmp_path / "toy")
    data = json.loads((bundle / mf.MANIFEST_NAME).read_text())
    data["graphs"]["driver"]["precision"] = "int4"
    (bundle / mf.MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(mf.BundleError, match="precision"):
        mf.load_manifest(bundle)


# ---- bundles that carry several flavours of a graph -------------------------------------------
def _flavoured(**available):
    """A manifest stand-in whose graphs carry the given precisions (main file's first)."""
    return SimpleNamespace(graphs={role: SimpleNamespace(precision=p[0], precisions=tuple(p))
                                   for role, p in available.items()})


FLAVOURED = dict(source=("fp32",), driver=("fp32", "fp16", "int8"), generator=("fp32", "fp16", "int8"))


@pytest.mark.parametrize("providers,requested,expected", [
    ([CPU], "auto", "int8"), ([CPU], "int8", "int8"), ([CPU], "fp32", "fp32"),
    ([CUDA, CPU], "auto", "fp16"), ([CUDA, CPU], "fp16", "fp16"), ([CUDA, CPU], "fp32", "fp32"),
])
def test_the_choice_takes_the_flavour_asked_for_or_the_fastest_the_provider_runs_well(providers, requested, expected):
    choice = choose_precisions(_flavoured(**FLAVOURED), providers, requested, custom_op_graphs=False)
    assert choice.problem is None
    assert choice.graphs == {"source": "fp32", "driver": expected, "generator": expected}


@pytest.mark.parametrize("providers,requested,words", [
    ([CPU], "fp16", "--precision fp16: the cpu provider does not run fp16 graphs well"),
    ([CUDA, CPU], "int8", "--precision int8: the cuda provider does not run int8 graphs well"),
])
def test_a_flavour_the_provider_cannot_run_is_refused_even_when_carried(providers, requested, words):
    problem = choose_precisions(_flavoured(**FLAVOURED), providers, requested).problem
    assert problem.startswith(words) and "\n" not in problem and "auto" in problem


def test_a_flavour_the_bundle_does_not_carry_is_refused_with_the_export_that_makes_it():
    problem = choose_precisions(_flavoured(source=("fp32",), driver=("fp32",), generator=("fp32",)),
                                [CPU], "int8").problem
    assert "this bundle has no int8 graphs (it carries fp32)" in problem and "--precision fp32,int8" in problem
    assert "\n" not in problem


def test_auto_on_an_old_single_flavour_bundle_opens_its_main_files():
    assert choose_precisions(_manifest(source="fp32", driver="int8", generator="int8"), [CPU]).graphs == {
        "source": "fp32", "driver": "int8", "generator": "int8"}
    assert choose_precisions(_manifest(source="fp32", driver="fp32", generator="fp32"), [CUDA, CPU]).graphs == {
        "source": "fp32", "driver": "fp32", "generator": "fp32"}


def test_an_fp16_custom_op_generator_on_cuda_needs_the_librarys_cuda_kernel(tmp_path):
    cpu_only, with_cuda = tmp_path / "cpu.so", tmp_path / "cuda.so"
    cpu_only.write_bytes(b"\x7fELF GridSample3D CPUExecutionProvider")
    with_cuda.write_bytes(b"\x7fELF " + CUDA_LIBRARY_MARKER + b": kernel launch failed")
    manifest = _flavoured(**FLAVOURED)
    assert not library_has_cuda(cpu_only) and library_has_cuda(with_cuda) and not library_has_cuda(None)
    refused = choose_precisions(manifest, [CUDA, CPU], "auto", custom_op_graphs=True, library=str(cpu_only)).problem
    assert "CUDA kernel" in refused and "--portable" in refused and "\n" not in refused
    assert choose_precisions(manifest, [CUDA, CPU], "auto", custom_op_graphs=True, library=str(with_cuda)).problem is None
    # the portable twins (standard GridSample) and fp32 need no kernel of ours
    assert choose_precisions(manifest, [CUDA, CPU], "auto", custom_op_graphs=False, library=str(cpu_only)).problem is None
    assert choose_precisions(manifest, [CUDA, CPU], "fp32", custom_op_graphs=True, library=str(cpu_only)).problem is None


def test_an_unknown_precision_choice_is_one_line():
    with pytest.raises(MegaportraitsError, match="precision must be one of auto, fp32, fp16, int8, not 'int4'"):
        choose_precisions(_flavoured(**FLAVOURED), [CPU], "int4")
    with pytest.raises(MegaportraitsError, match="precision must be one of"):
        AnimatorOptions(precision="half").validate()


def _generator_scaled(factor: float):
    """The toy generator with its code matrix G scaled by ``factor``: a stand-in flavour whose
    output differs from the main file's by a known function (the SDK never reads a graph's
    precision from its contents, only from the manifest)."""
    import toy_bundle

    model = toy_bundle.generator_graph()
    for init in model.graph.initializer:
        if init.name == "G":
            init.CopyFrom(numpy_helper.from_array(toy_bundle.G * np.float32(factor), "G"))
    return model


@pytest.fixture
def flavoured_bundle(tmp_path):
    """The toy bundle with an 'int8' flavour of its generator (G doubled) and of its driver (same graph)."""
    import toy_bundle

    bundle = make_toy_bundle(tmp_path / "toy")
    onnx.save(_generator_scaled(2.0), str(bundle / "generator.int8.onnx"))
    onnx.save(toy_bundle.driver_graph(), str(bundle / "driver.int8.onnx"))
    manifest = mf.load_manifest(bundle)
    manifest.graphs = {role: dataclasses.replace(g, flavours=(mf.GraphFlavour("int8", f"{role}.int8.onnx"),))
                       if role != "source" else g for role, g in manifest.graphs.items()}
    mf.write_manifest(bundle, manifest)
    return bundle


def test_flavours_round_trip_through_the_manifest_and_old_manifests_have_none(flavoured_bundle, tmp_path):
    data = json.loads((flavoured_bundle / mf.MANIFEST_NAME).read_text())
    assert data["graphs"]["generator"]["flavours"] == {"int8": {"file": "generator.int8.onnx"}}
    assert "flavours" not in data["graphs"]["source"]
    manifest = mf.load_manifest(flavoured_bundle)
    assert manifest.graphs["generator"].precisions == ("fp32", "int8")
    assert manifest.graph_file("generator", precision="int8") == "generator.int8.onnx"
    assert manifest.graph_file("generator") == "generator.onnx"
    assert "generator.int8.onnx" in manifest.files  # hashed like every graph file
    assert mf.load_manifest(make_toy_bundle(tmp_path / "old")).graphs["generator"].flavours == ()


@pytest.mark.parametrize("flavours,words", [
    ({"fp32": {"file": "generator.onnx"}}, "repeats the graph's own precision"),
    ({"int4": {"file": "generator.onnx"}}, "precision"),
    ({"int8": {}}, "graphs.generator.flavours.int8.file"),
    ({"int8": {"file": "unhashed.onnx"}}, "has no sha256 entry"),
    ({"int8": {"file": "../outside.onnx"}}, "outside"),
])
def test_manifest_refuses_a_malformed_flavour(flavoured_bundle, flavours, words):
    data = json.loads((flavoured_bundle / mf.MANIFEST_NAME).read_text())
    data["graphs"]["generator"]["flavours"] = flavours
    (flavoured_bundle / mf.MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(mf.BundleError, match=words):
        mf.load_manifest(flavoured_bundle)


def test_a_tampered_flavour_file_fails_validation(flavoured_bundle):
    from megaportraits.bundle import validate_bundle

    (flavoured_bundle / "generator.int8.onnx").write_bytes(b"not onnx")
    report = validate_bundle(flavoured_bundle)
    assert not report.ok and any("generator.int8.onnx" in p for p in report.problems)


@pytest.mark.parametrize("precision,factor", [("auto", 2.0), ("int8", 2.0), ("fp32", 1.0)])
def test_the_animator_runs_the_flavour_chosen(flavoured_bundle, precision, factor):
    import toy_bundle
    from megaportraits import Animator

    rng = np.random.default_rng(5)
    source = (rng.random((toy_bundle.SIZE, toy_bundle.SIZE, 3)) * 255).astype(np.uint8)
    driver = (rng.random((toy_bundle.SIZE, toy_bundle.SIZE, 3)) * 255).astype(np.uint8)
    with Animator(flavoured_bundle, provider="cpu", precision=precision, crop=False, paste_back=False,
                  motion="absolute") as animator:
        assert animator.bundle.precision("generator") == ("int8" if precision != "fp32" else "fp32")
        assert animator.bundle.precision("source") == "fp32"
        got = animator.animate_frame(animator.prepare(source), driver)
    to_input = lambda image: image.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255)
    volume, descriptor, *_ = toy_bundle.reference_source(to_input(source))
    pose, expression = toy_bundle.reference_motion(to_input(driver))
    g = toy_bundle.G
    try:
        toy_bundle.G = g * np.float32(factor)
        want = toy_bundle.reference_generator(volume, descriptor, pose, expression)
    finally:
        toy_bundle.G = g
    want = np.clip(want[0].transpose(1, 2, 0) * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(got.astype(int) - want).max() <= 1


def test_the_animator_refuses_a_flavour_the_bundle_lacks_in_one_line(flavoured_bundle):
    from megaportraits import Animator

    with pytest.raises(MegaportraitsError) as e:
        Animator(flavoured_bundle, provider="cpu", precision="fp16")
    assert "\n" not in str(e.value) and "does not run fp16" in str(e.value)


def test_the_cli_precision_option_picks_and_refuses(flavoured_bundle, tmp_path, capsys):
    import cv2

    import toy_bundle
    from megaportraits import cli

    rng = np.random.default_rng(6)
    for name in ("source.png", "driver.png"):
        cv2.imwrite(str(tmp_path / name), (rng.random((toy_bundle.SIZE, toy_bundle.SIZE, 3)) * 255).astype(np.uint8))
    args = ["animate", str(tmp_path / "source.png"), str(tmp_path / "driver.png"), "--bundle", str(flavoured_bundle),
            "--provider", "cpu", "--no-crop", "--no-paste-back"]
    outputs = {}
    for precision in ("fp32", "int8"):
        assert cli.main(args + ["-o", str(tmp_path / f"{precision}.png"), "--precision", precision]) == 0
        outputs[precision] = cv2.imread(str(tmp_path / f"{precision}.png"))
    assert np.abs(outputs["fp32"].astype(int) - outputs["int8"]).max() > 8  # the flavours differ (G doubled)
    capsys.readouterr()
    assert cli.main(args + ["-o", str(tmp_path / "fp16.png"), "--precision", "fp16"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--precision fp16" in err and not (tmp_path / "fp16.png").exists()


def test_info_lists_each_graphs_flavours(flavoured_bundle, capsys):
    from megaportraits import cli

    assert cli.main(["info", "--bundle", str(flavoured_bundle), "--json"]) == 0
    graphs = json.loads(capsys.readouterr().out)["bundle"]["graphs"]
    assert graphs["generator"]["precisions"] == ["fp32", "int8"] and graphs["source"]["precisions"] == ["fp32"]
    assert graphs["generator"]["flavours"] == {"int8": {"file": "generator.int8.onnx"}}
    assert cli.main(["info", "--bundle", str(flavoured_bundle)]) == 0
    assert "generator: generator.onnx; int8: generator.int8.onnx" in capsys.readouterr().out


# ---- tools that measure a bundle take it as exported ------------------------------------------
@pytest.mark.parametrize("available,expected", [
    (FLAVOURED, "fp32"),                                                   # flavours beside fp32 mains
    (dict(source=("fp32",), driver=("int8",), generator=("int8",)), "auto"),  # an int8-only export
    (dict(source=("fp32",), driver=("fp32",), generator=("fp32",)), "fp32"),
])
def test_reference_precision_is_fp32_only_where_every_graph_carries_it(available, expected):
    from megaportraits.precision import reference_precision

    assert reference_precision(_flavoured(**available)) == expected


def test_evaluation_and_distillation_targets_run_the_fp32_graphs_of_a_flavoured_bundle(flavoured_bundle):
    """auto would take the int8 flavour on the CPU; what evaluate scores and what a student is
    distilled from must be the bundle as exported (the main fp32 files)."""
    pytest.importorskip("torch")
    from megaportraits_export.distill.targets import TeacherRenderer
    from megaportraits_export.evaluation import BundleReenactor

    reenactor = BundleReenactor(str(flavoured_bundle))
    assert {a.bundle.precision("generator") for a in reenactor.animators.values()} == {"fp32"}
    assert TeacherRenderer(flavoured_bundle).animator.bundle.precision("generator") == "fp32"
