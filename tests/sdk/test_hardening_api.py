"""Issue 12: the Python API validates its inputs as strictly as the CLI: every misuse below is
one MegaportraitsError whose message names the argument, never a TypeError, ValueError or
numpy error from deep inside."""
from __future__ import annotations

import numpy as np
import pytest

from megaportraits.animator import Animator
from megaportraits.errors import InputError, MegaportraitsError
from megaportraits.images import save_image

from drawn_faces import draw_face


@pytest.mark.parametrize("source,message", [
    (None, "source image has shape ()"),
    ("missing.png", "source image 'missing.png' does not exist"),
    (np.zeros((64, 64, 5), np.uint8), "source image has shape (64, 64, 5)"),
    (np.zeros((64, 64, 3), np.int64), "source image has pixel type int64; expected uint8, uint16 or float in [0, 1]"),
    (np.full((64, 64, 3), np.nan, np.float32), "source image holds NaN or infinite values"),
    (np.zeros((64, 64, 3), bool), "source image has pixel type bool"),
    (np.full((64, 64, 3), -0.5), "float images must lie in [0, 1]"),
])
def test_prepare_refuses_what_it_cannot_use(toy, source, message):
    with pytest.raises(InputError) as caught:
        toy.prepare(source)
    assert message in str(caught.value)


@pytest.mark.parametrize("max_frames", [0, -1, 2.5, True, "3"])
def test_animate_video_max_frames(toy, media, tmp_path, max_frames):
    avatar = toy.prepare(media["source"])
    with pytest.raises(InputError, match="max_frames must be a whole number of at least 1"):
        toy.animate_video(avatar, media["driver"], tmp_path / "o.mp4", max_frames=max_frames, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_not_an_avatar(toy):
    with pytest.raises(InputError, match="expected an Avatar from Animator.prepare"):
        list(toy.stream("me.png", [draw_face()]))


@pytest.mark.parametrize("option,value,message", [
    ("crop_scale", float("nan"), "crop_scale must be positive"),
    ("crop_scale", 0, "crop_scale must be positive"),
    ("smooth_beta", -1, "smoothing needs"),
    ("smooth_min_cutoff", float("inf"), "smoothing needs"),
    ("motion", "sideways", "motion must be one of relative, absolute"),
    ("background", "pink", "background must be one of source, generated"),
    ("face_fallback", "guess", "face_fallback must be one of error, centre"),
    ("threads", "2", "threads must be a whole number"),
])
def test_options_are_checked_before_loading(toy_bundle, option, value, message):
    with pytest.raises(MegaportraitsError, match=message):
        Animator(toy_bundle, provider="cpu", **{option: value})


@pytest.mark.parametrize("image,message", [
    (np.zeros((40, 40, 3), np.float32), "save_image takes an H x W x 3 uint8 RGB image, not float32"),
    (np.zeros((40, 40), np.uint8), "not uint8 (40, 40)"),
    (np.zeros((0, 40, 3), np.uint8), "not uint8 (0, 40, 3)"),
])
def test_save_image_checks_the_image(tmp_path, image, message):
    with pytest.raises(InputError) as caught:
        save_image(tmp_path / "o.png", image)
    assert message in str(caught.value) and list(tmp_path.iterdir()) == []
