"""The SDK opens a bundle only where its graphs' precisions run as intended (megaportraits.precision):
int8 on the CPU, fp16 on CUDA, fp32 everywhere; otherwise one line that says what to do."""
from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from megaportraits import manifest as mf
from megaportraits.errors import MegaportraitsError
from megaportraits.precision import CPU, CUDA, graph_precisions, precision_problem

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
