"""IOBinding end to end (megaportraits.binding) on the CPU provider, against plain runs.

The bound path is the one a GPU runs (avatar state bound once, the driver frame written into one
bound buffer, the generator's image handed to the enhancer as an OrtValue); on the CPU provider
the same code runs with host memory as the device, so its frames must be bit-equal to the plain
``session.run`` path, frame by frame, on random frames with relative motion (the motion composed
on the host between the two graphs). The sessions are wrapped to count which way each graph ran.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from megaportraits import Animator
from megaportraits.binding import BoundFrames
from megaportraits.errors import MegaportraitsError
from test_enhancer_sdk import add_toy_enhancer, with_matte_generator
from toy_bundle import SIZE


class Counting:
    """An InferenceSession wrapper counting plain and bound runs."""

    def __init__(self, session):
        self._session = session
        self.plain = self.bound = 0

    def run(self, *args, **kwargs):
        self.plain += 1
        return self._session.run(*args, **kwargs)

    def run_with_iobinding(self, *args, **kwargs):
        self.bound += 1
        return self._session.run_with_iobinding(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._session, name)


@pytest.fixture(params=["plain", "enhancer", "enhancer+matte"])
def bundle(request, toy_bundle, tmp_path):
    if request.param == "plain":
        return toy_bundle
    copy = tmp_path / request.param
    shutil.copytree(toy_bundle, copy)
    if request.param == "enhancer+matte":
        with_matte_generator(copy)
    return add_toy_enhancer(copy, matte=request.param == "enhancer+matte")


def _frames(seed: int, n: int) -> list:
    """Random frames, each with its own random channel gains (the toy driver reads channel
    means, so uniform noise alone would give nearly the same motion every frame)."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (SIZE, SIZE, 3)) * rng.uniform(0.2, 1.0, 3)).astype(np.uint8) for _ in range(n)]


def _animate(bundle, io_binding: bool, source, frames, **options):
    with Animator(bundle, provider="cpu", threads=1, crop=False, paste_back=False, io_binding=io_binding,
                  **options) as animator:
        sessions = {role: Counting(s) for role, s in animator.bundle.sessions.items()}
        animator.bundle.sessions.update(sessions)
        performance = animator.performance(animator.prepare(source))
        if io_binding:
            assert isinstance(performance._binding, BoundFrames) and performance._binding.device == "cpu"
        got = [performance(frame) for frame in frames]
    return got, sessions


@pytest.mark.parametrize("motion", ["relative", "absolute"])
@pytest.mark.parametrize("background", ["source", "generated"])
def test_bound_frames_are_bit_equal_to_plain_runs(bundle, background, motion):
    source, *frames = _frames(11, 7)
    bound, bound_sessions = _animate(bundle, True, source, frames, background=background, motion=motion)
    plain, plain_sessions = _animate(bundle, False, source, frames, background=background, motion=motion)
    assert len({f.tobytes() for f in plain}) == len(frames), "every frame is a different image"
    for k, (b, p) in enumerate(zip(bound, plain)):
        assert b.shape == p.shape and np.array_equal(b, p), f"frame {k}: IOBinding and run() differ"
    per_frame = [role for role in ("driver", "generator", "enhancer") if role in bound_sessions]
    for role in per_frame:  # every per-frame graph ran bound, none plainly (prepare's runs aside)
        assert bound_sessions[role].bound == len(frames), role
        assert plain_sessions[role].bound == 0 and plain_sessions[role].plain >= len(frames), role
    assert bound_sessions["driver"].plain == 0 and bound_sessions["generator"].plain <= 1  # <= 1: a backdrop


def test_the_bound_driver_reads_the_frame_written_into_its_buffer(toy_bundle):
    """The driver's bound OrtValue shares the Performance's host buffer on the CPU: a new frame
    written there is what the next run reads (no stale first frame)."""
    source, first, second = _frames(12, 3)
    with Animator(toy_bundle, provider="cpu", crop=False, paste_back=False, io_binding=True,
                  motion="absolute") as animator:
        performance = animator.performance(animator.prepare(source))
        images = [performance(first), performance(second), performance(first)]
    assert not np.array_equal(images[0], images[1]) and np.array_equal(images[0], images[2])


def test_a_device_output_of_the_wrong_shape_is_one_error(toy_bundle, tmp_path):
    """The generator's image stays on the device for the enhancer: checked there by shape."""
    copy = tmp_path / "enhanced"
    shutil.copytree(toy_bundle, copy)
    add_toy_enhancer(copy)
    with Animator(copy, provider="cpu", crop=False, paste_back=False, io_binding=True) as animator:
        spec = animator.output_specs["generator"]["image"]
        import dataclasses

        animator.output_specs["generator"]["image"] = dataclasses.replace(spec, shape=(spec.shape[0], 3, 7, 7))
        performance = animator.performance(animator.prepare(_frames(13, 1)[0]))
        with pytest.raises(MegaportraitsError) as e:
            performance(_frames(14, 1)[0])
    assert "'generator' graph's output 'image' has shape" in str(e.value) and "\n" not in str(e.value)
