"""The real-time path's cheaper face tracking: detect one frame in N, follow the face's appearance
between (faces.FaceFollower), re-detect when it is lost."""
from __future__ import annotations

import numpy as np
import pytest

from megaportraits.errors import InputError
from megaportraits.faces import CropGeometry, FaceFollower, FaceTracker, HaarFaceDetector
from megaportraits.video import VideoReader
from megaportraits.cli import DEMO_DRIVER


def _webcam_frames(count: int, offsets) -> list:
    """The demo clip's head (a textured synthetic face) placed at ``offsets`` in 640x480 frames."""
    import cv2

    frames = []
    for (dx, dy), clip in zip(offsets, VideoReader(DEMO_DRIVER)):
        canvas = np.full((480, 640, 3), 96, np.uint8)
        canvas[40 + dy:40 + dy + 300, 150 + dx:150 + dx + 300] = cv2.resize(clip, (300, 300))
        frames.append(canvas)
        if len(frames) == count:
            break
    return frames


def test_follower_finds_a_moved_face_where_it_went():
    detector = HaarFaceDetector()
    first, moved = _webcam_frames(2, [(0, 0), (23, -17)])
    face = detector(first)[0]
    box = FaceFollower(first, face).follow(moved, face)
    assert box is not None
    # where the detector itself now finds it, to within one template pixel (face side / 32)
    np.testing.assert_allclose(box[:2], face[:2] + [23, -17], atol=max(face[2:]) / 32 + 1)
    np.testing.assert_array_equal(box[2:], face[2:])


def test_follower_says_lost_when_the_face_is_gone():
    first, = _webcam_frames(1, [(0, 0)])
    face = HaarFaceDetector()(first)[0]
    noise = np.random.default_rng(0).integers(0, 256, first.shape, dtype=np.uint8)
    assert FaceFollower(first, face).follow(noise, face) is None
    assert FaceFollower(first, face).follow(np.zeros_like(first), face) is None  # flat: no correlation


class CountingDetector:
    def __init__(self, detector):
        self.detector, self.calls = detector, 0

    def __call__(self, rgb):
        self.calls += 1
        return self.detector(rgb)


def test_tracker_detects_one_frame_in_n_and_follows_the_face_between():
    offsets = [(2 * i, i) for i in range(16)]  # a steady drift, 2 px right and 1 down per frame
    frames = _webcam_frames(16, offsets)
    tracker = FaceTracker(HaarFaceDetector(), CropGeometry(), redetect_every=8)
    tracker.detector = CountingDetector(tracker.detector)
    tracker.near_detector = CountingDetector(tracker.near_detector)
    faces = []
    for frame in frames:
        tracker.update(frame)
        faces.append(tracker._face.copy())
    # frame 0: full frame + its near refinement; frame 8: the near search only
    assert (tracker.detector.calls, tracker.near_detector.calls) == (1, 2)
    # between detections the face moves with the drift (to a template pixel), its size held
    tolerance = max(faces[0][2:]) / 32 + 1
    for i in range(1, 8):
        np.testing.assert_allclose(faces[i][:2] - faces[0][:2], offsets[i], atol=tolerance)
        np.testing.assert_array_equal(faces[i][2:], faces[0][2:])


def test_tracker_runs_the_detector_at_once_when_the_face_is_lost():
    frames = _webcam_frames(3, [(0, 0)] * 3)
    frames[1] = np.random.default_rng(1).integers(0, 256, frames[1].shape, dtype=np.uint8)
    tracker = FaceTracker(HaarFaceDetector(), CropGeometry(), redetect_every=8)
    tracker.detector = CountingDetector(tracker.detector)
    tracker.near_detector = CountingDetector(tracker.near_detector)
    first = tracker.update(frames[0])
    assert tracker.update(frames[1]) == first  # lost: detector ran, found nothing, the crop holds
    calls = tracker.detector.calls + tracker.near_detector.calls
    assert calls > 2  # frame 0 took two; the lost frame ran the detector again


@pytest.mark.parametrize("bad", [0, -1, 2.5, "3"])
def test_redetect_every_must_be_a_positive_whole_number(bad):
    with pytest.raises(InputError, match="redetect_every"):
        FaceTracker(HaarFaceDetector(), redetect_every=bad)
