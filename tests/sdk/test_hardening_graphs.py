"""Issue 12, what the engine runs: one Animator in two threads (2), a truncated graph (6),
graph outputs that are wrong (7), a custom face detector that returns garbage (16)."""
from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from megaportraits.animator import Animator
from megaportraits.errors import BundleError, InputError, MegaportraitsError, NoFaceError
from megaportraits.faces import HaarFaceDetector

import toy_bundle as toy_graphs
from drawn_faces import draw_face
from hardening_inputs import bundle_with, driver_with_pose


def _faces(n, width, height, seed):
    return [draw_face(size=height, width=width, cx=width / 2 + 7 * np.sin(i + seed), cy=height / 2,
                      scale=height / 256 * (1.0 + 0.04 * np.cos(i)), noise_seed=seed * 100 + i) for i in range(n)]


# ---- 2: one Animator, two threads --------------------------------------------------------
def test_2_haar_detector_in_two_threads_equals_one_thread():
    detector = HaarFaceDetector()
    # four integral-image strides (257, 181, 257, 121): the old one-stride cache was recompiled
    # under the other thread's feet (12 of 48 detections wrong in a trial of the old code)
    images = {"a": _faces(2, 256, 256, 1) + _faces(2, 180, 150, 3), "b": _faces(2, 300, 220, 2) + _faces(2, 120, 112, 4)}
    alone = {k: [detector(im) for im in v] for k, v in images.items()}
    results, errors = {"a": [], "b": []}, []

    def work(key):
        try:
            for _ in range(4):
                results[key].append([detector(im) for im in images[key]])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in images]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for key, runs in results.items():
        for run in runs:
            assert all(np.array_equal(x, y) for x, y in zip(run, alone[key]))


def test_2_animator_streams_in_two_threads_equal_one_thread(toy_bundle):
    with Animator(toy_bundle, provider="cpu", threads=1) as a:
        drivers = {"a": _faces(5, 256, 256, 3), "b": _faces(5, 320, 240, 4)}
        sources = {"a": draw_face(), "b": draw_face(size=288, width=300, cx=150, cy=140)}
        avatars = {k: a.prepare(sources[k]) for k in drivers}
        alone = {k: list(a.stream(avatars[k], drivers[k])) for k in drivers}
        got, errors = {}, []

        def work(key):
            try:
                got[key] = [list(a.stream(avatars[key], drivers[key])) for _ in range(2)]
            except Exception as e:  # pragma: no cover
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in drivers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        for key in drivers:
            for run in got[key]:
                assert all(np.array_equal(x, y) for x, y in zip(run, alone[key]))


def test_2_one_performance_refuses_a_second_thread(toy_bundle):
    inside, release = threading.Event(), threading.Event()
    haar = HaarFaceDetector()

    def slow_detector(rgb):
        if threading.current_thread().name == "first":
            inside.set()
            release.wait(30)
        return haar(rgb)

    with Animator(toy_bundle, provider="cpu", threads=1, detector=slow_detector) as a:
        frame = draw_face()
        performance = a.performance(a.prepare(frame))
        first = threading.Thread(target=performance, args=(frame,), name="first")
        first.start()
        assert inside.wait(30)
        try:
            with pytest.raises(MegaportraitsError, match="already animating a frame in another thread"):
                performance(frame)
        finally:
            release.set()
            first.join()
        assert performance(frame).shape == frame.shape  # free again


# ---- 6: a truncated graph with a matching hash -----------------------------------------------
def _bundle_with(toy_bundle, tmp_path, role: str, model_bytes: bytes):
    return bundle_with(toy_bundle, tmp_path / "bundle", role, model_bytes)


def test_6_truncated_graph_is_not_a_valid_onnx_model(toy_bundle, tmp_path):
    data = (toy_bundle / "generator.onnx").read_bytes()
    for cut in (len(data) - 4, len(data) // 2):  # - 4 ended in a BufferError from the closing mmap
        directory = _bundle_with(toy_bundle, tmp_path / str(cut), "generator", data[:cut])
        with pytest.raises(BundleError, match="'generator.onnx' is not a valid ONNX model"):
            Animator(directory, provider="cpu")


# ---- 7: graph outputs checked against the manifest -------------------------------------
_driver_with_pose = driver_with_pose


@pytest.mark.parametrize("case,nodes,inits,message", [
    ("zero", [helper.make_node("Mul", ["pose_raw", "k"], ["pose"])], [("k", np.float32(0))],
     "the driver graph's head pose for the reference (first) frame is singular"),
    ("nan", [helper.make_node("Mul", ["pose_raw", "k"], ["pose"])], [("k", np.float32(np.nan))],
     "the 'driver' graph's output 'pose' holds NaN or infinite values"),
    ("shape", [helper.make_node("Reshape", ["pose_raw", "s"], ["pose"])], [("s", np.array([1, 4, 3], np.int64))],
     "the 'driver' graph's output 'pose' has shape (1, 4, 3), the manifest says (1, 3, 4)"),
])
def test_7_bad_graph_outputs_are_one_error_naming_graph_and_output(toy_bundle, tmp_path, case, nodes, inits, message):
    directory = _bundle_with(toy_bundle, tmp_path, "driver", _driver_with_pose(nodes, inits))
    with Animator(directory, provider="cpu", threads=1) as a:
        avatar = a.prepare(draw_face())
        with pytest.raises(MegaportraitsError) as caught:
            list(a.stream(avatar, _faces(2, 256, 256, 5)))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_7_a_generator_giving_nan_never_reaches_the_video(toy_bundle, tmp_path):
    model = toy_graphs.generator_graph()
    for node in model.graph.node:
        node.output[:] = ["image_raw" if o == "image" else o for o in node.output]
    model.graph.node.append(helper.make_node("Div", ["image_raw", "zero"], ["ratio"]))
    model.graph.node.append(helper.make_node("Mul", ["ratio", "zero"], ["image"]))  # inf * 0 = NaN
    model.graph.initializer.append(numpy_helper.from_array(np.float32(0), "zero"))
    directory = _bundle_with(toy_bundle, tmp_path, "generator", model.SerializeToString())
    with Animator(directory, provider="cpu", threads=1) as a:
        avatar = a.prepare(draw_face())
        with pytest.raises(MegaportraitsError, match="the 'generator' graph's output 'image' holds NaN"):
            a.animate_frame(avatar, draw_face())


# ---- 16: a custom face detector's output is checked ----------------------------------------
@pytest.mark.parametrize("returned,message", [
    ("a face", "returned a str; it must return an (N, 4) array"),
    ([[10, 20, 30]], "returned an array of shape (1, 3); it must return an (N, 4) array"),
    ([[np.nan, 0, 50, 50]], "returned NaN or infinite coordinates"),
    ([[0, 0, 1e9, 1e9]], "returned the box (0.0, 0.0, 1000000000.0, 1000000000.0), which does not fit the 256x256 frame"),
    ([[10, 10, -5, 40]], "returned a box without a positive width and height"),
    ([[900, 900, 40, 40]], "which does not fit the 256x256 frame"),
    ([{"x": 1}], "that is not numbers"),
])
def test_16_detector_garbage_is_one_clear_error(toy_bundle, returned, message):
    def detector(rgb):
        return returned

    with Animator(toy_bundle, provider="cpu", detector=detector) as a:
        with pytest.raises(InputError) as caught:
            a.prepare(draw_face())
    assert str(caught.value).startswith("the face detector detector returned") and message in str(caught.value)


def test_16_none_or_empty_means_no_face(toy_bundle):
    for nothing in (None, [], np.zeros((0, 4))):
        with Animator(toy_bundle, provider="cpu", detector=lambda rgb, v=nothing: v) as a:
            with pytest.raises(NoFaceError, match="no face found in the source image"):
                a.prepare(draw_face())


def test_16_a_single_box_as_a_flat_list_is_accepted(toy_bundle):
    with Animator(toy_bundle, provider="cpu", detector=lambda rgb: [70, 60, 120, 120]) as a:
        box = a.prepare(draw_face()).crop
    assert (box.side, box.x + box.side / 2) == (216, 130)
