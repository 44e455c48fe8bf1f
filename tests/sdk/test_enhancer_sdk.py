"""The Animator on a bundle with an enhancer: frames at the enhancer's size by default, at the
base size with enhance=False; the backdrop, composite and paste-back at the high size; `info`."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from megaportraits import Animator
from megaportraits import manifest as mf
from megaportraits.animator import to_image
from megaportraits.bundle import validate_bundle
from megaportraits.compositing import background_plate, composite
from megaportraits.faces import CropBox, cut_crop
from megaportraits.schema import BASE_IMAGE, BASE_MATTE, ENHANCER, IMAGE_OUTPUT, MATTE_OUTPUT
from toy_bundle import SIZE, _model, _spec, reference_generator, reference_motion, reference_source

GAIN, OFFSET = 0.8, 0.1  # the toy enhancer: nearest 2x, then 0.8 x + 0.1 on the image


def nearest2x(image: np.ndarray) -> np.ndarray:
    return image.repeat(2, axis=2).repeat(2, axis=3)


def reference_enhancer(image: np.ndarray) -> np.ndarray:
    return (nearest2x(image) * GAIN + OFFSET).astype(np.float32)


def enhancer_graph(matte: bool) -> onnx.ModelProto:
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    gain = numpy_helper.from_array(np.array(GAIN, np.float32), "gain")
    offset = numpy_helper.from_array(np.array(OFFSET, np.float32), "offset")
    nodes = [helper.make_node("Resize", [BASE_IMAGE, "", "scales"], ["up"], mode="nearest"),
             helper.make_node("Mul", ["up", "gain"], ["scaled"]),
             helper.make_node("Add", ["scaled", "offset"], [IMAGE_OUTPUT])]
    inputs = [helper.make_tensor_value_info(BASE_IMAGE, TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])]
    outputs = [helper.make_tensor_value_info(IMAGE_OUTPUT, TensorProto.FLOAT, ["batch", 3, 2 * SIZE, 2 * SIZE])]
    if matte:
        nodes.append(helper.make_node("Resize", [BASE_MATTE, "", "scales"], [MATTE_OUTPUT], mode="nearest"))
        inputs.append(helper.make_tensor_value_info(BASE_MATTE, TensorProto.FLOAT, ["batch", 1, SIZE, SIZE]))
        outputs.append(helper.make_tensor_value_info(MATTE_OUTPUT, TensorProto.FLOAT, ["batch", 1, 2 * SIZE, 2 * SIZE]))
    return _model(helper.make_graph(nodes, "toy_enhancer", inputs, outputs, [scales, gain, offset]))


def reference_matte(image: np.ndarray) -> np.ndarray:
    return image.mean(axis=1, keepdims=True)


def with_matte_generator(bundle) -> None:
    """The toy generator plus a ``matte`` output: the channel mean of its image."""
    path = bundle / "generator.onnx"
    model = onnx.load(str(path))
    model.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "matte_axes"))
    model.graph.node.append(helper.make_node("ReduceMean", [IMAGE_OUTPUT, "matte_axes"], [MATTE_OUTPUT], keepdims=1))
    model.graph.output.append(helper.make_tensor_value_info(MATTE_OUTPUT, TensorProto.FLOAT, ["batch", 1, SIZE, SIZE]))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    manifest = mf.load_manifest(bundle)
    manifest.graphs["generator"] = _spec(model, "generator.onnx", None)
    mf.write_manifest(bundle, manifest)


def add_toy_enhancer(bundle, matte: bool = False):
    model = enhancer_graph(matte)
    onnx.save(model, str(bundle / "enhancer.onnx"))
    manifest = mf.load_manifest(bundle)
    manifest.graphs[ENHANCER] = _spec(model, "enhancer.onnx", None)
    manifest.files["enhancer.onnx"] = ""
    manifest.enhanced_size = 2 * SIZE
    mf.write_manifest(bundle, manifest)
    return bundle


@pytest.fixture
def enhanced_bundle(toy_bundle, tmp_path):
    bundle = tmp_path / "enhanced"
    shutil.copytree(toy_bundle, bundle)
    return add_toy_enhancer(bundle)


@pytest.fixture
def enhanced_matte_bundle(toy_bundle, tmp_path):
    bundle = tmp_path / "enhanced_matte"
    shutil.copytree(toy_bundle, bundle)
    with_matte_generator(bundle)
    return add_toy_enhancer(bundle, matte=True)


def frames(rng, n):
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]


def tensor(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]


def test_the_bundle_with_an_enhancer_is_valid(enhanced_bundle, enhanced_matte_bundle):
    for bundle in (enhanced_bundle, enhanced_matte_bundle):
        report = validate_bundle(bundle)
        assert report.ok, report.problems
        assert report.manifest.enhanced_size == 2 * SIZE


def test_output_size_follows_the_bundle(enhanced_bundle, rng):
    source, driver = frames(rng, 2)
    volume, descriptor, _, _ = reference_source(tensor(source))
    base = reference_generator(volume, descriptor, *reference_motion(tensor(driver)))
    with Animator(enhanced_bundle, provider="cpu", threads=1, crop=False, paste_back=False,
                  motion="absolute") as a:
        assert a.enhances and a.output_size == 2 * SIZE
        got = a.animate_frame(a.prepare(source), driver)
    assert got.shape == (2 * SIZE, 2 * SIZE, 3)
    assert np.abs(got.astype(int) - to_image(reference_enhancer(base)).astype(int)).max() <= 1
    with Animator(enhanced_bundle, provider="cpu", threads=1, crop=False, paste_back=False,
                  motion="absolute", enhance=False) as a:
        assert not a.enhances and a.output_size == SIZE and ENHANCER not in a.bundle.sessions
        got = a.animate_frame(a.prepare(source), driver)
    assert got.shape == (SIZE, SIZE, 3)
    assert np.abs(got.astype(int) - to_image(base).astype(int)).max() <= 1


def test_paste_back_keeps_the_photo_size(enhanced_bundle, rng):
    photo = rng.integers(0, 256, (3 * SIZE, 3 * SIZE, 3), dtype=np.uint8)
    with Animator(enhanced_bundle, provider="cpu", threads=1, face_fallback="centre") as a:
        avatar = a.prepare(photo)
        out = a.animate_frame(avatar, photo)
    assert out.shape == photo.shape


def test_matte_model_composites_at_the_high_size(enhanced_matte_bundle, rng):
    source, driver = frames(rng, 2)
    volume, descriptor, pose_s, expression_s = reference_source(tensor(source))
    base = reference_generator(volume, descriptor, *reference_motion(tensor(driver)))
    own = reference_generator(volume, descriptor, pose_s, expression_s)  # the source re-rendered
    high_crop = cut_crop(source, CropBox.whole(SIZE, SIZE), 2 * SIZE)
    plate = background_plate(tensor(high_crop)[0], nearest2x(reference_matte(own))[0])
    expected = composite(reference_enhancer(base), nearest2x(reference_matte(base)), plate)
    with Animator(enhanced_matte_bundle, provider="cpu", threads=1, crop=False, paste_back=False,
                  motion="absolute") as a:
        avatar = a.prepare(source)
        assert avatar.backdrop.shape == (3, 2 * SIZE, 2 * SIZE)
        got = a.animate_frame(avatar, driver)
    assert got.shape == (2 * SIZE, 2 * SIZE, 3)
    assert np.abs(got.astype(int) - to_image(expected).astype(int)).max() <= 1


def test_info_shows_the_enhancer(enhanced_bundle, capsys):
    from megaportraits.cli import main

    assert main(["info", "--bundle", str(enhanced_bundle), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["bundle"]["enhanced_size"] == 2 * SIZE
    assert main(["info", "--bundle", str(enhanced_bundle)]) == 0
    assert f"enhancer: {SIZE} -> {2 * SIZE}px" in capsys.readouterr().out


def test_animate_no_enhance_flag(enhanced_bundle, tmp_path, rng):
    from megaportraits.cli import main
    import cv2

    from megaportraits.images import save_image

    source, driver = frames(rng, 2)
    save_image(tmp_path / "s.png", source)
    save_image(tmp_path / "d.png", driver)
    for flag, side in (([], 2 * SIZE), (["--no-enhance"], SIZE)):
        out = tmp_path / f"out{len(flag)}.png"
        assert main(["animate", str(tmp_path / "s.png"), str(tmp_path / "d.png"), "-o", str(out),
                     "--bundle", str(enhanced_bundle), "--no-crop", "--no-paste-back", "--provider", "cpu"] + flag) == 0
        assert cv2.imread(str(out)).shape == (side, side, 3)


def test_benchmark_has_an_enhancer_stage(enhanced_bundle, toy_bundle):
    from megaportraits.benchmark.machine import MachinePeaks
    from megaportraits.benchmark.runner import BenchmarkPlan, run_benchmark
    from megaportraits.benchmark.stages import RunSettings

    peaks = {1: MachinePeaks(threads=1, gemm_gflops=100.0, gemm_size=1, numpy_gemm_gflops=None,
                             bandwidth_gbs=10.0, copy_gbs=None, ort_stream_gbs=10.0)}
    settings = RunSettings(warmup=1, runs=2, max_seconds=0.2)
    plan = BenchmarkPlan(bundle_dir=enhanced_bundle, threads=(1,), stages=("generator", "enhancer"), settings=settings)
    report = run_benchmark(plan, log=lambda _: None, peaks=peaks)
    enhancer = next(r for r in report.results if r.stage == "enhancer")
    # by hand: Mul and Add on 3 x 64 x 64 (Resize nearest counts nothing)
    assert enhancer.flops == 2 * 3 * (2 * SIZE) ** 2 and enhancer.timing.median_ms > 0
    plain = run_benchmark(BenchmarkPlan(bundle_dir=toy_bundle, threads=(1,), stages=("enhancer",), settings=settings),
                          log=lambda _: None, peaks=peaks)
    assert not plain.results and any("no enhancer graph" in n for n in plain.notes)
