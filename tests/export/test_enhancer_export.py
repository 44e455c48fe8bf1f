"""The enhancer graph: ONNX Runtime == PyTorch within rounding; added to a bundle the SDK accepts."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from megaportraits import manifest as mf
from megaportraits.bundle import validate_bundle
from megaportraits.schema import BASE_IMAGE, BASE_MATTE, ENHANCER, IMAGE_OUTPUT, MATTE_OUTPUT
from megaportraits_export.networks.enhancer import build_enhancer, get_enhancer_config
from megaportraits_export.onnx_export import ExportError
from megaportraits_export.onnx_export.enhancer import add_enhancer, save_enhancer_graph

sys.path.insert(0, str(Path(__file__).parents[1] / "sdk"))
from toy_bundle import SIZE, make_toy_bundle  # noqa: E402


def random_enhancer(preset: str, base_size: int | None = None, seed: int = 0):
    """An enhancer whose every weight is random (the untrained one is plain bicubic upsampling)."""
    config = get_enhancer_config(preset)
    if base_size is not None:
        config = config.replace(base_size=base_size)
    torch.manual_seed(seed)
    model = build_enhancer(config).eval()
    with torch.no_grad():
        last = model.to_residual[-1]
        last.weight.normal_(0, 0.05)
        last.bias.normal_(0, 0.05)
        for module in model.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("preset", ["tiny", "tiny_matte"])
def test_graph_equals_pytorch(preset, tmp_path, one_torch_thread):
    model = random_enhancer(preset, seed=3)
    config = model.config
    path = tmp_path / "enhancer.onnx"
    inputs, outputs = save_enhancer_graph(model, path)
    assert [t.name for t in inputs] == [BASE_IMAGE] + ([BASE_MATTE] if config.matte else [])
    assert [t.name for t in outputs] == [IMAGE_OUTPUT] + ([MATTE_OUTPUT] if config.matte else [])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    for batch in (1, 3):
        x = rng.random((batch, config.channels, config.base_size, config.base_size), dtype=np.float32)
        feed = {BASE_IMAGE: x[:, :3]}
        if config.matte:
            feed[BASE_MATTE] = x[:, 3:]
        got = np.concatenate(session.run(None, feed), axis=1)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        assert got.shape == (batch, config.channels, config.output_size, config.output_size)
        assert got.min() >= 0.0 and got.max() <= 1.0
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
        bicubic = torch.nn.functional.interpolate(torch.from_numpy(x), scale_factor=2, mode="bicubic").numpy()
        assert np.abs(got - bicubic).mean() > 1e-3  # the random residual branch is in the graph


def test_add_enhancer_writes_a_valid_bundle_and_keeps_the_input(tmp_path, one_torch_thread):
    base = make_toy_bundle(tmp_path / "base", custom_op=True)
    before = {p.name: mf.sha256_file(p) for p in base.iterdir()}
    out = add_enhancer(base, random_enhancer("tiny", base_size=SIZE), tmp_path / "enhanced",
                       provenance={"weights": "random-init"})
    assert {p.name: mf.sha256_file(p) for p in base.iterdir()} == before
    # the base graphs are the input's byte for byte, and the manifest says which bundle that was
    assert all(mf.sha256_file(out / name) == before[name] for name in before if name != mf.MANIFEST_NAME)
    report = validate_bundle(out)
    assert report.ok, report.problems
    manifest = report.manifest
    assert manifest.image_size == SIZE and manifest.enhanced_size == 2 * SIZE
    spec = manifest.graphs[ENHANCER]
    assert spec.inputs[0].shape[2:] == (SIZE, SIZE) and spec.outputs[0].shape[2:] == (2 * SIZE, 2 * SIZE)
    assert manifest.provenance["enhancer"]["weights"] == "random-init"
    assert manifest.provenance["enhancer"]["base_bundle_manifest_sha256"] == before[mf.MANIFEST_NAME]
    assert manifest.has_portable
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging left behind


def test_add_enhancer_refuses_a_mismatched_enhancer(tmp_path):
    base = make_toy_bundle(tmp_path / "base")
    with pytest.raises(ExportError, match="reads 64x64 images but the bundle renders 32x32"):
        add_enhancer(base, build_enhancer("tiny"), tmp_path / "a")
    with pytest.raises(ExportError, match="bundle's generator renders no matte"):
        add_enhancer(base, build_enhancer(get_enhancer_config("tiny_matte").replace(base_size=SIZE)), tmp_path / "b")
    with pytest.raises(ExportError, match="is the input bundle"):
        add_enhancer(base, build_enhancer(get_enhancer_config("tiny").replace(base_size=SIZE)), base)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_manifest_needs_enhanced_size_with_the_enhancer(tmp_path, one_torch_thread):
    import json

    out = add_enhancer(make_toy_bundle(tmp_path / "base"), random_enhancer("tiny", base_size=SIZE), tmp_path / "e")
    data = json.loads((out / mf.MANIFEST_NAME).read_text())
    del data["model"]["enhanced_size"]
    with pytest.raises(mf.BundleError, match="enhanced_size and an 'enhancer' graph come together"):
        mf.Manifest.from_dict(data)


def test_add_enhancer_command(tmp_path, capsys, one_torch_thread):
    from megaportraits_export import checkpoint
    from megaportraits_export.__main__ import main

    base = make_toy_bundle(tmp_path / "base")
    # a size the bundle does not render: one line, exit 1, nothing written
    assert main(["add-enhancer", str(base), "-o", str(tmp_path / "x"), "--preset", "tiny", "--random-init"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reads 64x64 images but the bundle renders 32x32" in err[0]
    assert not (tmp_path / "x").exists()
    enhancer = random_enhancer("tiny", base_size=SIZE, seed=4)
    ckpt = checkpoint.save_checkpoint(tmp_path / "model_last.pt", enhancer, enhancer.config, "tiny", {"steps": 3})
    assert main(["add-enhancer", str(base), "-o", str(tmp_path / "e"), "--checkpoint", str(ckpt)]) == 0
    manifest = validate_bundle(tmp_path / "e").manifest
    assert manifest.enhanced_size == 2 * SIZE
    assert manifest.provenance["enhancer"]["checkpoint"]["file"] == "model_last.pt"
    session = ort.InferenceSession(str(tmp_path / "e" / "enhancer.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(session.run(None, {BASE_IMAGE: x})[0], enhancer(torch.from_numpy(x)).numpy(),
                                   atol=2e-5, rtol=0)
