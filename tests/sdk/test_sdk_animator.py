"""The Animator on the toy bundle, whose graphs are known functions (toy_bundle.py): avatar
caching, relative/absolute motion arithmetic, several avatars, smoothing, IOBinding vs run."""
from __future__ import annotations

import numpy as np
import pytest

from megaportraits import Animator, AnimatorOptions
from megaportraits.animator import to_image
from megaportraits.errors import MegaportraitsError
from megaportraits.motion import OneEuroFilter
from toy_bundle import SIZE, reference_generator, reference_motion, reference_source


class Recording:
    """Wraps an ONNX Runtime session: counts runs and keeps the feeds of plain runs."""

    def __init__(self, session):
        self._session = session
        self.runs = 0
        self.feeds = []

    def run(self, names, feeds, *args):
        self.runs += 1
        self.feeds.append({k: np.array(v) for k, v in feeds.items()})
        return self._session.run(names, feeds, *args)

    def run_with_iobinding(self, binding, *args):
        self.runs += 1
        return self._session.run_with_iobinding(binding, *args)

    def __getattr__(self, name):
        return getattr(self._session, name)


def record(animator: Animator) -> dict:
    wrapped = {role: Recording(s) for role, s in animator.bundle.sessions.items()}
    animator.bundle.sessions.update(wrapped)
    return wrapped


def tensor(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]


def frames(rng, n):
    return [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(n)]


def animator(bundle, **options) -> Animator:
    return Animator(bundle, provider="cpu", threads=1, crop=False, paste_back=False, **options)


def test_source_graph_runs_once_per_avatar(toy_bundle, rng):
    a = animator(toy_bundle)
    sessions = record(a)
    avatars = [a.prepare(img) for img in frames(rng, 2)]
    performances = [a.performance(av) for av in avatars]
    for frame in frames(rng, 6):
        for p in performances:
            p(frame)
    assert sessions["source"].runs == 2
    assert sessions["driver"].runs == 12
    assert sessions["generator"].runs == 12


@pytest.mark.parametrize("io_binding", [True, False])
def test_absolute_motion_output_matches_reference(toy_bundle, rng, io_binding):
    a = animator(toy_bundle, motion="absolute", io_binding=io_binding)
    source, driver = frames(rng, 2)
    volume, descriptor, _, _ = reference_source(tensor(source))
    expected = to_image(reference_generator(volume, descriptor, *reference_motion(tensor(driver))))
    got = a.animate_frame(a.prepare(source), driver)
    assert got.dtype == np.uint8 and got.shape == (SIZE, SIZE, 3)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_relative_motion_is_the_documented_formula(toy_bundle, rng):
    a = animator(toy_bundle, io_binding=False)
    generator = record(a)["generator"]
    source, first, later = frames(rng, 3)
    avatar = a.prepare(source)
    performance = a.performance(avatar)
    performance(first)
    out = performance(later)

    pose_s, z_s = reference_motion(tensor(source))
    pose_0, z_0 = reference_motion(tensor(first))
    pose_1, z_1 = reference_motion(tensor(later))
    h = lambda p: np.vstack([p[0].astype(np.float64), [0, 0, 0, 1]])  # noqa: E731
    want_pose = (h(pose_1) @ np.linalg.inv(h(pose_0)) @ h(pose_s))[:3]
    want_z = z_s + (z_1 - z_0)

    first_feed, later_feed = generator.feeds
    # a driver equal to its first frame reproduces the source's own pose and expression
    np.testing.assert_allclose(first_feed["pose"][0], pose_s[0], atol=1e-6)
    np.testing.assert_allclose(first_feed["expression"], z_s, atol=1e-6)
    np.testing.assert_allclose(later_feed["pose"][0], want_pose, atol=1e-5)
    np.testing.assert_allclose(later_feed["expression"], want_z, atol=1e-5)
    assert not np.allclose(later_feed["pose"], pose_1, atol=1e-3)  # relative differs from absolute
    volume, descriptor, _, _ = reference_source(tensor(source))
    expected = to_image(reference_generator(volume, descriptor, want_pose[None].astype(np.float32),
                                            want_z.astype(np.float32)))
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


def test_relative_first_frame_reproduces_source_output(toy_bundle, rng):
    a = animator(toy_bundle)
    source, driver = frames(rng, 2)
    avatar = a.prepare(source)
    volume, descriptor, pose, expression = reference_source(tensor(source))
    reconstruction = to_image(reference_generator(volume, descriptor, pose, expression))
    assert np.abs(a.animate_frame(avatar, driver).astype(int) - reconstruction.astype(int)).max() <= 1


def test_animate_frame_with_reference(toy_bundle, rng):
    a = animator(toy_bundle)
    source, reference, driver = frames(rng, 3)
    avatar = a.prepare(source)
    performance = a.performance(avatar)
    performance(reference)
    assert np.array_equal(a.animate_frame(avatar, driver, reference_frame=reference), performance(driver))


def test_several_avatars_do_not_interfere(toy_bundle, rng):
    a = animator(toy_bundle)
    sources, drive = frames(rng, 2), frames(rng, 5)
    alone = [list(a.stream(a.prepare(s), drive)) for s in sources]
    streams = [a.performance(a.prepare(s)) for s in sources]
    interleaved = [[], []]
    for f in drive:
        for i, p in enumerate(streams):
            interleaved[i].append(p(f))
    for i in range(2):
        assert all(np.array_equal(x, y) for x, y in zip(alone[i], interleaved[i]))
    assert not np.array_equal(alone[0][-1], alone[1][-1])


def test_stream_is_lazy(toy_bundle, rng):
    a = animator(toy_bundle)
    avatar = a.prepare(frames(rng, 1)[0])
    pulled = []

    def source():
        for f in frames(rng, 3):
            pulled.append(1)
            yield f

    it = a.stream(avatar, source())
    next(it)
    assert len(pulled) == 1


def test_smoothing_reduces_jitter_and_keeps_first_frame(toy_bundle, rng):
    base = rng.integers(60, 200, (SIZE, SIZE, 3)).astype(np.int16)
    jitter = [np.clip(base + rng.integers(-40, 41, base.shape), 0, 255).astype(np.uint8) for _ in range(30)]
    motions = {}
    for smooth in (False, True):
        a = animator(toy_bundle, io_binding=False, smooth=smooth, motion="absolute")
        generator = record(a)["generator"]
        list(a.stream(a.prepare(jitter[0]), jitter))
        motions[smooth] = np.stack([f["expression"][0] for f in generator.feeds])
    np.testing.assert_array_equal(motions[True][0], motions[False][0])
    assert motions[True][10:].std(axis=0).mean() < 0.5 * motions[False][10:].std(axis=0).mean()


def test_one_euro_filter_by_hand():
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0, derivative_cutoff=1.0)
    dt = 0.1
    assert f(np.array([1.0]), dt)[0] == 1.0
    tau = 1.0 / (2 * np.pi)
    alpha = 1.0 / (1.0 + tau / dt)
    np.testing.assert_allclose(f(np.array([2.0]), dt), [1.0 + alpha * 1.0])


def test_options_are_validated(toy_bundle):
    with pytest.raises(MegaportraitsError, match="motion must be one of relative, absolute"):
        Animator(toy_bundle, motion="sideways")
    with pytest.raises(MegaportraitsError, match="face_fallback"):
        Animator(toy_bundle, options=AnimatorOptions(face_fallback="guess"))


def test_closed_animator_says_so(toy_bundle, rng):
    with animator(toy_bundle) as a:
        pass
    with pytest.raises(MegaportraitsError, match="closed"):
        a.prepare(frames(rng, 1)[0])


def test_runtime_failures_become_one_line_errors(toy_bundle, rng):
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    a = animator(toy_bundle)
    avatar = a.prepare(frames(rng, 1)[0])

    class Broken:
        def run(self, *args):
            raise Fail("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running\nGridSample")
    a.bundle.sessions["generator"] = Broken()
    with pytest.raises(MegaportraitsError, match=r"^running the 'generator' graph failed in ONNX Runtime: "
                                                 r"\[ONNXRuntimeError\] : 1 : FAIL : .* running GridSample$"):
        a.animate_frame(avatar, frames(rng, 1)[0])


def test_fp16_bundle_io(toy_bundle, tmp_path, rng):
    from toy_bundle import make_toy_bundle

    half = make_toy_bundle(tmp_path / "fp16", fp16=True)
    source, first, later = frames(rng, 3)
    outputs = []
    for bundle in (toy_bundle, half):
        a = animator(bundle)
        avatar = a.prepare(source)
        outputs.append(list(a.stream(avatar, [first, later])))
        if bundle == half:
            assert avatar.canonical_volume.dtype == np.float16 and avatar.motion.pose.dtype == np.float32
    for full, reduced in zip(*outputs):
        assert np.abs(full.astype(int) - reduced.astype(int)).max() <= 3
