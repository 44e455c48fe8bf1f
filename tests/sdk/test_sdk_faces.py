"""Face detection (the numpy Haar cascade against OpenCV's own results), the steady crop
tracker, and paste-back geometry."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from megaportraits.errors import NoFaceError
from megaportraits.faces import (CropBox, CropGeometry, FaceTracker, HaarFaceDetector, PasteBack,
                                 cut_crop, feathered_ellipse, find_source_face)
from megaportraits.haar import HaarCascade
from drawn_faces import draw_face

# Boxes from OpenCV 4.14's cv2.CascadeClassifier(...).detectMultiScale(gray, 1.1, 3) on the same
# images with the same cascade file (OpenCV 5 no longer has the class, so they are recorded).
OPENCV_BOXES = [
    (dict(scale=0.6), [[79, 79, 100, 100]]),
    (dict(scale=1.0), [[46, 50, 169, 169]]),
    (dict(scale=1.3), [[23, 25, 213, 213]]),
    (dict(size=240, width=320, cx=200, cy=120, scale=0.8), [[136, 57, 130, 130]]),
    (dict(size=200, cx=90, cy=110, scale=0.9, background=(200, 200, 200)), []),
]


@pytest.fixture(scope="module")
def cascade():
    return HaarCascade()


@pytest.mark.parametrize("case,expected", OPENCV_BOXES)
def test_haar_cascade_agrees_with_opencv(cascade, case, expected):
    gray = cv2.cvtColor(draw_face(**case), cv2.COLOR_RGB2GRAY)
    boxes = cascade.detect(gray, 1.1, 3)
    assert len(boxes) == len(expected)
    if expected:
        assert np.abs(boxes - np.array(expected)).max() <= 2


def test_haar_finds_nothing_in_noise(cascade):
    noise = np.random.default_rng(1).integers(0, 256, (240, 320), dtype=np.uint8)
    assert len(cascade.detect(noise)) == 0


def test_detector_reports_boxes_in_the_frame_pixels():
    big = cv2.resize(draw_face(scale=1.0), (1024, 1024), interpolation=cv2.INTER_LINEAR)
    (x, y, w, h), = HaarFaceDetector(max_side=256)(big)
    assert abs(x - 46 * 4) < 12 and abs(y - 50 * 4) < 12 and abs(w - 169 * 4) < 16


def test_source_crop_and_no_face():
    geometry = CropGeometry(scale=1.8, lift=0.1)
    box = find_source_face(draw_face(), HaarFaceDetector(), geometry)
    face_x, face_y, face_side = 47, 51, 167
    assert box.side == pytest.approx(1.8 * face_side, abs=6)
    assert box.x + box.side / 2 == pytest.approx(face_x + face_side / 2, abs=3)
    assert box.y + box.side / 2 == pytest.approx(face_y + face_side / 2 - 0.1 * face_side, abs=3)
    with pytest.raises(NoFaceError, match="no face found in the source image; .* --no-crop"):
        find_source_face(np.full((128, 128, 3), 90, np.uint8), HaarFaceDetector(), geometry)


class ScriptedDetector:
    """Returns the boxes it is given, one list per call, to drive the tracker exactly."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = 0

    def __call__(self, rgb):
        self.calls += 1
        return np.array(self.script.pop(0) if self.script else [], float).reshape(-1, 4)


def _full_frame_only(tracker):
    tracker._detect_near = lambda frame, face: None


def test_tracker_holds_still_under_jitter_and_follows_real_moves():
    frame = np.zeros((480, 640, 3), np.uint8)
    jitter = [[[200 + dx, 150 + dy, 100, 100]] for dx, dy in [(0, 0), (3, -2), (-4, 3), (2, 4), (-3, -3)]]
    moved = [[[320, 150, 100, 100]]] * 12
    tracker = FaceTracker(ScriptedDetector(jitter + moved), CropGeometry(scale=2.0, lift=0.0), margin=0.06)
    _full_frame_only(tracker)
    boxes = [tracker.update(frame) for _ in range(len(jitter))]
    assert len(set(boxes)) == 1 and boxes[0] == CropBox(150, 100, 200)
    follow = [tracker.update(frame) for _ in moved]
    xs = [b.x for b in follow]
    assert xs == sorted(xs) and xs[0] < 270 and xs[-1] == 270  # eases over, then arrives
    assert len(set(follow[-3:])) == 1


def test_tracker_keeps_the_last_crop_when_the_face_is_lost():
    frame = np.zeros((240, 320, 3), np.uint8)
    tracker = FaceTracker(ScriptedDetector([[[100, 60, 80, 80]], [], []]), CropGeometry(scale=2.0, lift=0.0))
    _full_frame_only(tracker)
    first = tracker.update(frame)
    assert tracker.update(frame) == first and tracker.update(frame) == first


def test_tracker_first_frame_without_face():
    frame = np.zeros((240, 320, 3), np.uint8)
    with pytest.raises(NoFaceError, match="driver's first frame; .* --no-crop"):
        FaceTracker(ScriptedDetector([])).update(frame)
    box = FaceTracker(ScriptedDetector([]), centre_fallback=True).update(frame)
    assert box == CropBox(40, 0, 240)


def test_tracker_searches_near_the_last_face_first():
    tracker = FaceTracker(HaarFaceDetector())
    assert tracker.near_detector.face_range == (0.3, 0.85)
    calls = []

    class Spy:
        def __init__(self, name, detector):
            self.name, self.detector = name, detector

        def __call__(self, rgb):
            calls.append((self.name, rgb.shape[:2]))
            return self.detector(rgb)
    tracker.detector = Spy("full", tracker.detector)
    tracker.near_detector = Spy("near", tracker.near_detector)
    boxes = [tracker.update(draw_face(size=256, cx=128 + dx)) for dx in (0, 4, 8)]
    assert calls == [("full", (256, 256))] + [("near", (112, 112))] * 3
    assert len(set(boxes)) == 1


def test_sized_detector_finds_only_faces_of_that_size():
    image = draw_face(size=256, scale=1.0)  # face box about 167 px
    detector = HaarFaceDetector()
    assert len(detector.sized((0.5, 0.8))(image)) == 1
    assert len(detector.sized((0.0, 0.4))(image)) == 0
    assert len(detector.sized((0.8, 1.0))(image)) == 0


def test_drawn_face_video_gives_a_steady_crop():
    tracker = FaceTracker(HaarFaceDetector())
    boxes = [tracker.update(draw_face(size=256, cx=128 + (i % 2), noise_seed=i)) for i in range(8)]
    assert len(set(boxes)) == 1


def test_cut_crop_repeats_edges_outside_the_frame():
    frame = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    crop = cut_crop(frame, CropBox(-5, -5, 10), 10)
    assert np.array_equal(crop[5:, 5:], frame[:5, :5])
    assert np.array_equal(crop[0, 5:], frame[0, :5]) and np.array_equal(crop[5:, 0], frame[:5, 0])


@pytest.mark.parametrize("box", [CropBox(40, 30, 64), CropBox(-20, 70, 80), CropBox(150, -10, 70)])
def test_paste_back_lands_where_the_crop_came_from(box):
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)
    paste = PasteBack(frame, box)
    # pasting the frame's own crop back changes nothing
    assert np.abs(paste(cut_crop(frame, box, box.side)).astype(int) - frame.astype(int)).max() <= 1
    # a white crop whitens the ellipse inside the box, nothing outside it
    out = paste(np.full((32, 32, 3), 255, np.uint8)).astype(int)
    changed = np.abs(out - frame.astype(int)).max(axis=2) > 0
    ys, xs = np.nonzero(changed)
    assert xs.min() >= max(box.x, 0) and xs.max() < box.x + box.side
    assert ys.min() >= max(box.y, 0) and ys.max() < box.y + box.side
    cy, cx = box.y + box.side // 2, box.x + box.side // 2
    if 0 <= cy < 120 and 0 <= cx < 200:
        assert (out[cy, cx] == 255).all()


def test_feathered_mask_is_soft_and_symmetric():
    mask = feathered_ellipse(101)
    assert mask[50, 50] == 1.0 and mask[0, 0] == 0.0 and mask[50, 0] == 0.0
    assert np.allclose(mask, mask.T, atol=1e-5) and np.allclose(mask, mask[::-1], atol=1e-5)
    ramp = mask[50, :50]
    assert np.all(np.diff(ramp) >= 0) and ((ramp > 0.05) & (ramp < 0.95)).sum() >= 3
