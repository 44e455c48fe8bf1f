"""A model with the source-pixel path (``ModelConfig.warped_source``, preset ``tiny_ws``) exports to a
bundle and runs in the torch-free SDK as it runs in PyTorch.

The bundle's extra tensors are the generator's ``source_image``, ``source_pose`` and
``source_expression`` (``megaportraits.schema.AVATAR_GENERATOR_INPUTS``), fed by the SDK from the
avatar: the crop it fed the source graph, the source's own pose and expression (never the frame's
relative or smoothed motion). The source graph is unchanged: the crop is not one of its outputs.
References are the PyTorch model itself (its generator on the same images). The path's parts start
at nothing in a new model (zero convs); here they get random weights, so the rendering depends
strongly on the source pixels and motion, and a mis-fed input shows.
"""
from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from megaportraits import manifest as mf
from megaportraits.animator import Animator, to_image
from megaportraits.bundle import validate_bundle
from megaportraits.compositing import composite
from megaportraits.errors import BundleError
from megaportraits.schema import (AVATAR_GENERATOR_INPUTS, GENERATOR, GRAPH_IO, SOURCE, SOURCE_EXPRESSION,
                                  SOURCE_IMAGE, SOURCE_POSE)
from megaportraits.sessions import create_session, custom_op_status, session_options
from megaportraits_export import onnx_export
from megaportraits_export.model import split_matte

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PRESET, SEED = "tiny_ws", 0
PATH_PARTS = ("source_pixels.", "source_inputs.", "source_blend.")
AVATAR_INPUTS = (SOURCE_IMAGE, SOURCE_POSE, SOURCE_EXPRESSION)


def path_model(scale: float = 0.05):
    """tiny_ws with random weights everywhere, the source-pixel parts' of std ``scale`` (seeded;
    0.05, about a trained model's: the path weighs on the rendering, so a mis-fed input shows)."""
    model, config = onnx_export.random_model(PRESET, SEED)
    g = torch.Generator().manual_seed(SEED + 1)
    changed = 0
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if any(part in name for part in PATH_PARTS):
                parameter.copy_(scale * torch.randn(parameter.shape, generator=g))
                changed += 1
    assert changed >= 4  # the path's warp and surface, the stages' convs and the blend: it is there
    return model.eval(), config


@pytest.fixture(scope="module")
def model_and_config():
    return path_model()


@pytest.fixture(scope="module")
def exported(model_and_config):
    model, config = model_and_config
    return onnx_export.export_graphs(model, config, PRESET, {"weights": "random-init", "seed": SEED})


@pytest.fixture(scope="module")
def bundles(model_and_config, exported, tmp_path_factory):
    """(default bundle, portable bundle) of the one export, the default one verified against PyTorch."""
    model, _ = model_and_config
    root = tmp_path_factory.mktemp("source_pixels")
    default = onnx_export.write_bundle(exported, root / "default", verify_against=model)
    portable = onnx_export.write_bundle(exported, root / "portable", portable=True)
    return default, portable


def _images(size: int, seed: int):
    """Two random images, smooth as photos are (random 8x8 colours, enlarged bicubically): on
    pixel noise a flow error of float rounding (1e-6 of the side) already moves a colour by 1e-4."""
    import cv2

    rng = np.random.default_rng(seed)
    return [np.clip(cv2.resize(rng.uniform(0, 255, (8, 8, 3)), (size, size), interpolation=cv2.INTER_CUBIC),
                    0, 255).astype(np.uint8) for _ in range(2)]


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0)


def _torch_rendering(model, source: np.ndarray, driver: np.ndarray, motion=None) -> tuple:
    """(image, matte) of ``source``'s avatar moved by ``driver``'s absolute motion (or by
    ``motion``, numpy (pose, expression)), and the avatar."""
    with torch.no_grad():
        avatar = model.source_branch(_tensor(source))
        if motion is None:
            motion = model.driver_branch(_tensor(driver))
        else:
            motion = tuple(torch.from_numpy(m) for m in motion)
        image, matte = split_matte(model.generator(avatar.canonical_volume, avatar.global_descriptor, *motion,
                                                   *avatar.source_pixels))
    return image.numpy(), matte.numpy(), avatar


def _torch_generator(model, avatar, motion) -> np.ndarray:
    """PyTorch's generator on the SDK's own avatar (its source graph's outputs, its generator
    inputs) and motion: the generator graph alone against PyTorch."""
    def t(x):
        return torch.from_numpy(np.asarray(x, np.float32))

    with torch.no_grad():
        rendering = model.generator(t(avatar.canonical_volume), t(avatar.global_descriptor), t(motion.pose),
                                    t(motion.expression), *(t(avatar.generator_inputs[n]) for n in AVATAR_INPUTS))
    return split_matte(rendering)[0].numpy()


# The whole chain (source, driver and generator graphs) against PyTorch from the same images:
# measured 2.8e-5 (mean 2.6e-6; the generator graph alone 6e-7). The source graph's float rounding
# (its volume ~4e-5) goes through the path: with path weights of std 0.3 the chain's was 1.6e-4.
CHAIN_ATOL = 1e-4


def _animator(bundle, **options):
    return Animator(bundle, provider="cpu", threads=1, crop=False, paste_back=False, motion="absolute", **options)


def _raw_frame(animator, avatar, driver: np.ndarray) -> np.ndarray:
    """The generator's frame before it becomes uint8 (composited for background='source')."""
    performance = animator.performance(avatar)
    return performance._generate(performance._driver_motion(driver))


# ---- the bundle's vocabulary ------------------------------------------------------------------
def test_the_bundle_has_the_optional_tensors_and_a_bundle_without_the_path_has_none(bundles, bundle_factory):
    for bundle in bundles:
        report = validate_bundle(bundle)
        assert report.ok, report.problems
        graphs = report.manifest.graphs
        assert tuple(t.name for t in graphs[SOURCE].outputs) == GRAPH_IO[SOURCE].outputs  # not the crop
        assert tuple(t.name for t in graphs[SOURCE].inputs) == (SOURCE_IMAGE,)
        assert tuple(t.name for t in graphs[GENERATOR].inputs) == GRAPH_IO[GENERATOR].inputs + AVATAR_INPUTS
        specs = {t.name: t for t in graphs[GENERATOR].inputs + graphs[SOURCE].outputs + graphs[SOURCE].inputs}
        for name in AVATAR_INPUTS:  # each as the source tensor it is fed from
            assert specs[name].shape == specs[AVATAR_GENERATOR_INPUTS[name]].shape
    plain = mf.load_manifest(bundle_factory("tiny"))  # a model without the path: exactly the old tensors
    for role, io in GRAPH_IO.items():
        assert tuple(t.name for t in plain.graphs[role].inputs) == io.inputs
        assert tuple(t.name for t in plain.graphs[role].outputs) == io.outputs


def test_verification_at_export_covers_the_source_pixel_path(bundles, model_and_config):
    model, _ = model_and_config
    report = onnx_export.verify_bundle(bundles[0], model)
    assert report and all(r.ok for r in report)
    # a model whose path differs (the surface over depth) is caught at the generator's outputs
    other = path_model()[0]
    with torch.no_grad():
        other.generator.source_pixels.surface.weight.mul_(-1.0)
    failed = [r for r in onnx_export.verify_bundle(bundles[0], other) if not r.ok]
    assert failed and all(r.file.startswith("generator") for r in failed)


# ---- the graphs against PyTorch ---------------------------------------------------------------


@pytest.mark.parametrize("flavour", [0, 1], ids=["default", "portable"])
def test_the_animator_renders_what_pytorch_renders(bundles, model_and_config, flavour):
    model, config = model_and_config
    source, driver = _images(config.image_size, seed=5)
    want_image, _, torch_avatar = _torch_rendering(model, source, driver)
    with _animator(bundles[flavour], background="generated", portable=bool(flavour)) as animator:
        avatar = animator.prepare(source)
        assert set(avatar.generator_inputs) == set(AVATAR_INPUTS)
        np.testing.assert_allclose(avatar.generator_inputs[SOURCE_IMAGE], _tensor(source).numpy(), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(avatar.generator_inputs[SOURCE_POSE], avatar.motion.pose)
        np.testing.assert_allclose(avatar.generator_inputs[SOURCE_POSE], torch_avatar.pose.numpy(), atol=1e-5)
        np.testing.assert_allclose(avatar.generator_inputs[SOURCE_EXPRESSION], torch_avatar.expression.numpy(),
                                   atol=1e-4)
        performance = animator.performance(avatar)
        motion = performance._driver_motion(driver)
        got = performance._generate(motion)
        np.testing.assert_allclose(got, _torch_generator(model, avatar, motion), atol=1e-4)
        np.testing.assert_allclose(got, want_image, atol=CHAIN_ATOL)
        assert np.abs(got - want_image).mean() < 1e-4
        frame = animator.animate_frame(avatar, driver)  # the public call: the same frame as uint8
        assert np.abs(frame.astype(int) - to_image(want_image).astype(int)).max() <= 1


def test_relative_smoothed_frames_read_the_avatars_own_motion(bundles, model_and_config):
    """The generator's source pose and expression are the avatar's, whatever the frame's motion
    (relative to a reference frame, smoothed): PyTorch fed them so agrees, and fed the frame's
    motion instead it does not (so the check can fail)."""
    model, config = model_and_config
    source, driver = _images(config.image_size, seed=11)
    reference = _images(config.image_size, seed=12)[0]
    with Animator(bundles[0], provider="cpu", threads=1, crop=False, paste_back=False, background="generated",
                  motion="relative", smooth=True) as animator:
        avatar = animator.prepare(source)
        performance = animator.performance(avatar)
        performance.set_reference(reference)
        motion = performance._relative(performance._smoother(performance._driver_motion(driver)))
        got = performance._generate(motion)
    assert np.abs(motion.pose - avatar.motion.pose).max() > 1e-3  # the frame's motion is not the avatar's
    np.testing.assert_array_equal(avatar.generator_inputs[SOURCE_POSE], avatar.motion.pose)
    np.testing.assert_array_equal(avatar.generator_inputs[SOURCE_EXPRESSION], avatar.motion.expression)
    np.testing.assert_allclose(got, _torch_generator(model, avatar, motion), atol=1e-4)
    fed_the_frame = dataclasses.replace(avatar, generator_inputs={
        **avatar.generator_inputs, SOURCE_POSE: motion.pose, SOURCE_EXPRESSION: motion.expression})
    assert np.abs(_torch_generator(model, fed_the_frame, motion) - got).max() > 1e-2


@pytest.mark.parametrize("name", AVATAR_INPUTS)
def test_the_rendering_depends_on_each_avatar_input(bundles, model_and_config, name):
    """Not vacuous: another value of one avatar input, all else kept, changes the frame."""
    _, config = model_and_config
    source, driver = _images(config.image_size, seed=7)
    with _animator(bundles[0], background="generated") as animator:
        avatar = animator.prepare(source)
        value = avatar.generator_inputs[name]
        other = 1.0 - value if name == SOURCE_IMAGE else value + 0.3 * np.std(value) + 0.05
        changed = dataclasses.replace(avatar, generator_inputs={**avatar.generator_inputs, name: other})
        change = np.abs(_raw_frame(animator, changed, driver) - _raw_frame(animator, avatar, driver))
    assert change.max() > 2e-3  # measured 6e-3 (the expression) to 0.3; the graphs agree with PyTorch to 2e-5


def test_composited_frames_and_the_bound_stream_use_the_avatar_inputs(bundles, model_and_config):
    """background='source' (a matte model's default) renders the backdrop with the avatar's inputs;
    the IO-binding stream binds them once and gives bit-equal frames."""
    model, config = model_and_config
    source, driver = _images(config.image_size, seed=9)
    want_image, want_matte, _ = _torch_rendering(model, source, driver)
    with _animator(bundles[0]) as animator:
        avatar = animator.prepare(source)
        assert avatar.backdrop is not None
        got = _raw_frame(animator, avatar, driver)
        np.testing.assert_allclose(got, composite(want_image, want_matte, avatar.backdrop), atol=CHAIN_ATOL)
        plain = [animator.animate_frame(avatar, d) for d in (driver, source)]
    with _animator(bundles[0], io_binding=True) as animator:
        avatar = animator.prepare(source)
        assert set(avatar.device_state) >= set(AVATAR_INPUTS)
        bound = list(animator.stream(avatar, [driver, source]))
    for a, b in zip(plain, bound):
        np.testing.assert_array_equal(a, b)


# ---- malformed bundles --------------------------------------------------------------------------
def _edited_copy(bundle, tmp_path, edit):
    copy = tmp_path / "edited"
    shutil.copytree(bundle, copy)
    data = json.loads((copy / mf.MANIFEST_NAME).read_text())
    edit(data["graphs"])
    (copy / mf.MANIFEST_NAME).write_text(json.dumps(data))
    return copy


def _problems(bundle) -> list:
    report = validate_bundle(bundle)
    assert not report.ok
    with pytest.raises(BundleError) as refused:
        Animator(bundle, provider="cpu")
    assert "\n" not in str(refused.value)
    return report.problems


def test_an_unknown_generator_input_is_refused_with_the_known_ones_named(bundles, tmp_path):
    def rename(graphs):
        for t in graphs[GENERATOR]["inputs"]:
            if t["name"] == SOURCE_EXPRESSION:
                t["name"] = "source_depth"

    problems = _problems(_edited_copy(bundles[1], tmp_path, rename))
    assert any("'source_depth'" in p and "optionally also inputs" in p and SOURCE_EXPRESSION in p for p in problems)


def test_a_generator_input_of_another_shape_than_its_source_is_refused(bundles, tmp_path):
    def reshape(graphs):
        for t in graphs[GENERATOR]["inputs"]:
            if t["name"] == SOURCE_POSE:
                t["shape"][1] = 4

    problems = _problems(_edited_copy(bundles[1], tmp_path, reshape))
    assert any(f"input {SOURCE_POSE!r}" in p and "'pose' that feeds it" in p for p in problems)


# ---- precision variants -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flavoured_bundle(exported, tmp_path_factory):
    """fp32 main files with int8 and fp16 flavours, of the same export."""
    from megaportraits_export.onnx_export import precision as pr

    frames = pr.synthetic_calibration_frames(exported.image_size, count=8)
    return onnx_export.write_bundle(exported, tmp_path_factory.mktemp("flavoured") / "bundle",
                                    precision="fp32,int8,fp16", calibration_frames=frames)


def _generator_images(bundle, precision: str, seeds=(5, 6)) -> list:
    """The generator flavour's image for the SDK's avatar and motion of random smooth images
    (plain sessions: the SDK refuses fp16 on the CPU)."""
    manifest = mf.load_manifest(bundle)
    options = session_options(1, custom_op_status().path)
    session = create_session(bundle / manifest.graph_file(GENERATOR, precision=precision), ["CPUExecutionProvider"],
                             options)
    images = []
    with _animator(bundle, background="generated", precision="fp32") as animator:
        for seed in seeds:
            source, driver = _images(manifest.image_size, seed)
            avatar = animator.prepare(source)
            motion = animator.performance(avatar)._driver_motion(driver)
            feeds = {"canonical_volume": avatar.canonical_volume, "global_descriptor": avatar.global_descriptor,
                     "pose": motion.pose, "expression": motion.expression, **avatar.generator_inputs}
            images.append(session.run(["image"], feeds)[0])
    return images


def _psnr(a, b) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.mark.parametrize("precision, floor", [("int8", 36.0), ("fp16", 55.0)])
def test_reduced_precision_generators_render_what_fp32_renders(flavoured_bundle, precision, floor):
    """Measured (3 image pairs): int8 44.0-44.7 dB, fp16 64.3-66.7 dB against fp32, as for the
    model without the path (42-43 / 63 dB: tests/export/test_precision.py). The conversion is not
    to blame for what a network amplifies: with path weights of std 0.3 the same conversion gives
    int8 19-21 dB, fp16 52-54 dB (and the fp32 chain's float rounding grows likewise: CHAIN_ATOL)."""
    manifest = mf.load_manifest(flavoured_bundle)
    assert set(manifest.graphs[GENERATOR].precisions) == {"fp32", "int8", "fp16"}
    assert [t.name for t in manifest.graphs[GENERATOR].inputs][4:] == list(AVATAR_INPUTS)
    for reference, image in zip(_generator_images(flavoured_bundle, "fp32"),
                                _generator_images(flavoured_bundle, precision)):
        assert _psnr(image, reference) > floor
        assert np.abs(image - reference).max() > 1e-5  # it really is converted


def test_the_animator_runs_the_int8_flavour_with_the_avatar_inputs(flavoured_bundle):
    source, driver = _images(mf.load_manifest(flavoured_bundle).image_size, seed=8)
    frames = {}
    for precision in ("fp32", "int8"):
        with _animator(flavoured_bundle, background="generated", precision=precision) as animator:
            assert animator.bundle.precision(GENERATOR) == precision
            frames[precision] = animator.animate_frame(animator.prepare(source), driver)
    assert _psnr(frames["int8"] / 255.0, frames["fp32"] / 255.0) > 36.0
