"""The SDK on the real tiny model (random weights, exported by tests/conftest.py), checked
against the PyTorch model it was exported from; the custom-op flavour against its portable
fallback; streaming memory; and the per-frame latency it reports."""
from __future__ import annotations

import os

import numpy as np
import pytest

from megaportraits import Animator
from megaportraits import sessions
from megaportraits.bundle import custom_op_status
from megaportraits.errors import PortableFallbackWarning

torch = pytest.importorskip("torch", reason="the reference model needs torch (export extra)")


@pytest.fixture(scope="module")
def model():
    from megaportraits_export.onnx_export import random_model

    net, config = random_model("tiny", 0)
    return net, config.image_size


def images(n, size, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size, size, 3)).astype(np.int16)
    return [np.clip(base + rng.integers(-60, 61, base.shape), 0, 255).astype(np.uint8) for _ in range(n)]


def as_torch(image):
    return torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]


def make(bundle, **options):
    return Animator(bundle, provider="cpu", threads=1, crop=False, paste_back=False, **options)


def torch_image(tensor):
    return np.clip(tensor[0].permute(1, 2, 0).numpy() * 255.0 + 0.5, 0, 255).astype(np.uint8)


def test_absolute_motion_matches_pytorch(tiny_bundle, model):
    net, size = model
    source, driver = images(2, size)
    with torch.no_grad():
        expected = torch_image(net(as_torch(source), as_torch(driver))["image"])
    a = make(tiny_bundle, motion="absolute")
    got = a.animate_frame(a.prepare(source), driver)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_relative_motion_matches_pytorch_and_starts_at_the_source(tiny_bundle, model):
    net, size = model
    source, first, later = images(3, size, seed=1)
    with torch.no_grad():
        state = net.source_branch(as_torch(source))
        pose_0, z_0 = net.driver_branch(as_torch(first))
        pose_1, z_1 = net.driver_branch(as_torch(later))
        h = lambda p: torch.cat([p.double(), torch.tensor([[[0, 0, 0, 1.0]]], dtype=torch.float64)], 1)  # noqa: E731
        pose = (h(pose_1) @ torch.linalg.inv(h(pose_0)) @ h(state.pose))[:, :3].float()
        z = state.expression + (z_1 - z_0)
        want_first = torch_image(net.generator(state.canonical_volume, state.global_descriptor, state.pose,
                                               state.expression))
        want_later = torch_image(net.generator(state.canonical_volume, state.global_descriptor, pose, z))
    a = make(tiny_bundle)
    performance = a.performance(a.prepare(source))
    assert np.abs(performance(first).astype(int) - want_first.astype(int)).max() <= 1
    assert np.abs(performance(later).astype(int) - want_later.astype(int)).max() <= 1


def test_source_graph_runs_once(tiny_bundle):
    a = make(tiny_bundle)
    runs = {"n": 0}
    session = a.bundle.sessions["source"]

    class Counting:
        def run(self, *args):
            runs["n"] += 1
            return session.run(*args)
    a.bundle.sessions["source"] = Counting()
    avatar = a.prepare(images(1, a.image_size)[0])
    for _ in a.stream(avatar, images(5, a.image_size, seed=2)):
        pass
    assert runs["n"] == 1


@pytest.mark.skipif(not custom_op_status().available, reason="the custom-op library is not built")
def test_portable_fallback_matches_the_custom_op(tiny_bundle, monkeypatch):
    source, *drive = images(4, 64, seed=3)
    custom = make(tiny_bundle)
    assert not custom.bundle.portable
    want = list(custom.stream(custom.prepare(source), drive))

    def fails(options, path):
        raise RuntimeError(f"{path}: cannot open shared object file")
    monkeypatch.setattr(sessions, "register_library", fails)
    with pytest.warns(PortableFallbackWarning, match="using the bundle's portable graphs"):
        portable = make(tiny_bundle)
    assert portable.bundle.portable
    got = list(portable.stream(portable.prepare(source), drive))
    for w, g in zip(want, got):
        assert np.abs(w.astype(int) - g.astype(int)).max() <= 1


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_streaming_memory_is_flat(tiny_bundle):
    a = make(tiny_bundle)
    size = a.image_size
    avatar = a.prepare(images(1, size)[0])
    rng = np.random.default_rng(5)

    def webcam(n):
        for _ in range(n):
            yield rng.integers(0, 256, (size, size, 3), dtype=np.uint8)

    stream = a.stream(avatar, webcam(600))
    for _ in range(100):
        next(stream)
    before = rss_bytes()
    for _ in stream:
        pass
    growth = rss_bytes() - before
    assert growth < 4 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 500 frames"


def relative_reference(net, source, frames):
    """The relative-motion images PyTorch makes of ``frames`` (the first is the reference)."""
    def h(p):
        return torch.cat([p.double(), torch.tensor([[[0, 0, 0, 1.0]]], dtype=torch.float64)], 1)

    with torch.no_grad():
        state = net.source_branch(as_torch(source))
        pose_0, z_0 = net.driver_branch(as_torch(frames[0]))
        expected = []
        for frame in frames:
            pose_k, z_k = net.driver_branch(as_torch(frame))
            pose = (h(pose_k) @ torch.linalg.inv(h(pose_0)) @ h(state.pose))[:, :3].float()
            expected.append(torch_image(net.generator(state.canonical_volume, state.global_descriptor, pose,
                                                      state.expression + (z_k - z_0))))
    return expected


def test_io_binding_and_plain_runs_match_pytorch_frame_by_frame(tiny_bundle, model):
    """Both ways of feeding ONNX Runtime give the same frames, and each is PyTorch's. (Their
    per-frame latency is measured by benchmarks/bench_animator.py, not asserted here.)"""
    net, size = model
    source, *frames = images(7, size, seed=6)
    expected = relative_reference(net, source, frames)
    got = {}
    for io_binding in (True, False):
        a = make(tiny_bundle, io_binding=io_binding)
        performance = a.performance(a.prepare(source))
        got[io_binding] = [performance(f) for f in frames]
    for k, (bound, plain, want) in enumerate(zip(got[True], got[False], expected)):
        assert np.array_equal(bound, plain), f"frame {k}: IOBinding and run() differ"
        assert np.abs(plain.astype(int) - want.astype(int)).max() <= 1, f"frame {k}"
    assert len({f.tobytes() for f in got[True]}) == len(frames), "every frame is a different image"


def test_cli_end_to_end_on_the_tiny_model(tiny_bundle, tmp_path, capsys):
    import cv2

    from drawn_faces import draw_face
    from media import probe, write_video
    from megaportraits import cli

    cv2.imwrite(str(tmp_path / "source.png"), cv2.cvtColor(draw_face(size=240, width=320, cx=170, cy=120, scale=0.9),
                                                           cv2.COLOR_RGB2BGR))
    frames = [draw_face(size=256, cx=128 + 3 * (i % 3), noise_seed=i) for i in range(8)]
    write_video(tmp_path / "driver.mp4", frames, fps=30, audio="aac")
    out = tmp_path / "out.mp4"
    code = cli.main(["animate", str(tmp_path / "source.png"), str(tmp_path / "driver.mp4"), "-o", str(out),
                     "--bundle", str(tiny_bundle), "--provider", "cpu", "--smooth", "--quiet"])
    assert code == 0, capsys.readouterr().err
    info = probe(out)
    assert info["video"]["frames"] == 8 and (info["video"]["width"], info["video"]["height"]) == (320, 240)
    assert info["audio"]["codec"] == "aac"


def test_face_tracking_and_paste_back_on_the_real_model(tiny_bundle):
    """Tracked 640x480 driver frames, pasted into a 512x512 photo: each result is the animated
    crop pasted at the source's face box, and the photo outside that box is untouched. (The
    latency of this path is measured by benchmarks/bench_animator.py.)"""
    from drawn_faces import draw_face

    from megaportraits.faces import PasteBack

    source = draw_face(size=512, cx=256, cy=250, scale=1.6)
    frames = [draw_face(size=480, width=640, cx=320 + 8 * np.sin(i / 3), cy=240, scale=1.4, noise_seed=i)
              for i in range(5)]
    pasting = Animator(tiny_bundle, provider="cpu", threads=1)
    cropping = Animator(tiny_bundle, provider="cpu", threads=1, paste_back=False)
    avatar, crop_avatar = pasting.prepare(source), cropping.prepare(source)
    assert avatar.crop == crop_avatar.crop
    box = avatar.crop
    outside = np.ones(source.shape[:2], bool)
    outside[max(box.y, 0):box.y + box.side, max(box.x, 0):box.x + box.side] = False
    assert 0.1 < outside.mean() < 0.9, "the face box covers part of the photo"
    paste = PasteBack(source, box)
    pasted, cropped = pasting.performance(avatar), cropping.performance(crop_avatar)
    crops = []
    for frame in frames:
        out, crop = pasted(frame), cropped(frame)
        assert out.shape == source.shape and crop.shape == (pasting.image_size, pasting.image_size, 3)
        assert np.array_equal(out, paste(crop))
        assert np.array_equal(out[outside], source[outside])
        crops.append(crop)
    assert not np.array_equal(out[~outside], source[~outside])
    assert len({c.tobytes() for c in crops}) > 1, "the tracked driver moves, so the crops change"
