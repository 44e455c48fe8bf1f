"""A generator that reads the avatar (schema.AVATAR_GENERATOR_INPUTS: the source crop, the source's
own pose and expression) is fed them by the SDK in every mode, checked against the toy bundle's
numpy reference (tests/sdk/toy_bundle.py), with no torch."""
from __future__ import annotations

import numpy as np
import pytest

from megaportraits.animator import Animator, to_image, to_tensor
from megaportraits.bundle import validate_bundle
from megaportraits.motion import Motion, RelativeMotion
from megaportraits.schema import AVATAR_GENERATOR_INPUTS, GENERATOR, SOURCE_EXPRESSION, SOURCE_IMAGE, SOURCE_POSE

import toy_bundle as toy


def _frames(seed: int, count: int = 3) -> list:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (toy.SIZE, toy.SIZE, 3), dtype=np.uint8) for _ in range(count)]


def _animator(bundle, **options) -> Animator:
    return Animator(bundle, provider="cpu", threads=1, crop=False, paste_back=False, **options)


def test_the_bundle_is_valid_and_declares_the_avatar_inputs(toy_avatar_bundle, toy_bundle):
    report = validate_bundle(toy_avatar_bundle, open_sessions=True)
    assert report.ok, report.problems
    declared = [t.name for t in report.manifest.graphs[GENERATOR].inputs]
    assert declared[4:] == list(AVATAR_GENERATOR_INPUTS)
    with _animator(toy_bundle) as animator:  # a bundle without them: nothing extra
        assert animator.prepare(_frames(1)[0]).generator_inputs == {}


@pytest.mark.parametrize("io_binding", [False, True])
def test_relative_frames_read_the_avatars_own_motion_and_crop(toy_avatar_bundle, io_binding):
    source, *drivers = _frames(2)
    x_s = to_tensor(source)
    own = Motion(*toy.reference_motion(x_s))
    relative = None
    with _animator(toy_avatar_bundle, motion="relative", io_binding=io_binding) as animator:
        avatar = animator.prepare(source)
        np.testing.assert_array_equal(avatar.generator_inputs[SOURCE_IMAGE], x_s)
        frames = list(animator.stream(avatar, drivers))
    volume, descriptor, _, _ = toy.reference_source(x_s)
    assert len(drivers) >= 2  # the first frame reproduces the source's own motion; the others move
    for driver, frame in zip(drivers, frames):
        motion = Motion(*toy.reference_motion(to_tensor(driver)))
        relative = relative or RelativeMotion(own, motion)
        moved = relative(motion)
        want = toy.reference_generator(volume, descriptor, moved.pose, moved.expression, x_s, own.pose, own.expression)
        assert np.abs(frame.astype(int) - to_image(want).astype(int)).max() <= 1
        if np.abs(moved.pose - own.pose).max() < 1e-6:
            continue  # the reference frame itself: its motion is the source's own
        # fed the frame's motion as the source's, the answer would differ (so this can fail)
        wrong = toy.reference_generator(volume, descriptor, moved.pose, moved.expression, x_s, moved.pose,
                                        moved.expression)
        assert np.abs(to_image(wrong).astype(int) - to_image(want).astype(int)).max() > 8


def test_a_bound_stream_holds_the_avatar_inputs_on_the_device(toy_avatar_bundle):
    with _animator(toy_avatar_bundle, io_binding=True) as animator:
        avatar = animator.prepare(_frames(3)[0])
    assert {SOURCE_IMAGE, SOURCE_POSE, SOURCE_EXPRESSION} <= set(avatar.device_state)


def test_info_names_what_the_generator_reads_from_the_avatar(toy_avatar_bundle, toy_bundle, capsys):
    import json

    from megaportraits import cli

    for bundle, want in ((toy_avatar_bundle, list(AVATAR_GENERATOR_INPUTS)), (toy_bundle, [])):
        assert cli.main(["info", "--bundle", str(bundle), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["bundle"]["avatar_inputs"] == want
        assert cli.main(["info", "--bundle", str(bundle)]) == 0
        text = capsys.readouterr().out
        assert ("generator reads from the avatar: " + ", ".join(want) in text) == bool(want)
