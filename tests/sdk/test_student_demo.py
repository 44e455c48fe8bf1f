"""The shipped demo student (assets/demo_student): it opens, animates its avatar by name the way
its graph computes, refuses unknown names in one line, runs as `megaportraits demo --student`,
and keeps the package's assets within their 40 MB."""
from __future__ import annotations

import numpy as np
import pytest

from megaportraits import Animator, manifest as mf
from megaportraits.bundle import ASSET_BUDGET_BYTES, DEMO_BUNDLE, validate_bundle
from megaportraits.cli import DEMO_DRIVER, main
from megaportraits.errors import InputError
from megaportraits.schema import AVATAR_INDEX, DRIVER_IMAGE, STUDENT
from megaportraits.student import DEMO_STUDENT, StudentAnimator
from megaportraits.video import VideoReader


def test_the_demo_student_is_a_valid_student_of_the_demo_model():
    report = validate_bundle(DEMO_STUDENT)
    assert report.ok, report.problems
    manifest = report.manifest
    assert manifest.is_student and manifest.avatar_names() == ["demo"]
    teacher = manifest.student["teacher"]
    demo = mf.load_manifest(DEMO_BUNDLE)
    assert (teacher["model_name"], teacher["preset"]) == (demo.model_name, demo.preset)
    assert manifest.image_size == demo.image_size and manifest.has_matte
    # its teacher is the demo bundle's base model: the bundle itself (its enhancer, if any, is off
    # while a student's targets are rendered), or, when the enhancer was added after the student
    # was distilled (add-enhancer copies the base graphs byte for byte), the bundle it was added to
    teachers = {mf.sha256_file(DEMO_BUNDLE / mf.MANIFEST_NAME)}
    if demo.enhanced_size:
        teachers.add(demo.provenance["enhancer"]["base_bundle_manifest_sha256"])
    assert teacher["manifest_sha256"] in teachers


def test_the_demo_student_animates_its_avatar_by_name_as_its_graph_computes():
    frames = [f for _, f in zip(range(3), VideoReader(DEMO_DRIVER))]
    with Animator(DEMO_STUDENT, crop=False, paste_back=False, background="generated", threads=1) as animator:
        assert isinstance(animator, StudentAnimator)
        avatar = animator.prepare("demo")
        size = animator.image_size
        session = animator.bundle.sessions[STUDENT]
        for frame in frames:
            got = animator.animate_frame(avatar, frame)
            import cv2

            crop = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
            image = session.run(None, {DRIVER_IMAGE: crop.transpose(2, 0, 1)[None].astype(np.float32) / 255,
                                       AVATAR_INDEX: np.array([0], np.int64)})[0]
            want = np.clip(image[0].transpose(1, 2, 0) * 255 + 0.5, 0, 255).astype(np.uint8)
            assert np.abs(got.astype(int) - want).max() <= 1
            assert want.std() > 10  # a rendered face, not a flat frame
        with pytest.raises(InputError, match="no avatar 'nobody'; its avatars are demo"):
            animator.prepare("nobody")


def test_unknown_avatar_on_the_command_line_is_one_line(tmp_path, capsys):
    out = tmp_path / "out.mp4"
    assert main(["animate", "--bundle", str(DEMO_STUDENT), "nobody", str(DEMO_DRIVER), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no avatar 'nobody'" in err and "Traceback" not in err
    assert not out.exists()


def test_demo_student_command_writes_the_video(tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    assert main(["demo", "--student", "-o", str(out), "--max-frames", "4", "--quiet", "--threads", "1"]) == 0
    assert "avatar 'demo' of the student" in capsys.readouterr().err
    frames = list(VideoReader(out))
    assert len(frames) == 4 and frames[0].shape == (256, 256, 3)


def test_the_shipped_assets_stay_within_their_budget():
    assets = DEMO_STUDENT.parent
    total = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total <= ASSET_BUDGET_BYTES, f"assets are {total / 2**20:.1f} MB, over the {ASSET_BUDGET_BYTES >> 20} MB budget"


def test_the_benchmark_times_the_demo_student_beside_its_teacher():
    from megaportraits.benchmark.machine import MachinePeaks
    from megaportraits.benchmark.runner import BenchmarkPlan, run_benchmark
    from megaportraits.benchmark.stages import RunSettings

    peaks = MachinePeaks(threads=1, gemm_gflops=100.0, gemm_size=1, numpy_gemm_gflops=None,
                         bandwidth_gbs=10.0, copy_gbs=None, ort_stream_gbs=10.0)
    plan = BenchmarkPlan(bundle_dir=None, threads=(1,), stages=("per_frame", "student"),
                         settings=RunSettings(warmup=1, runs=3, max_seconds=2))
    report = run_benchmark(plan, log=lambda *_: None, peaks={1: peaks})
    student = report.find("student", "ours", "cpu", 1, 1)
    teacher = report.find("per_frame", "ours", "cpu", 1, 1) or report.find("per_frame", "portable", "cpu", 1, 1)
    assert student is not None and teacher is not None and student.timing.runs >= 3
    assert any(n.startswith("student per frame") and "faster" in n for n in report.notes)
    from megaportraits.benchmark.report import check_report_dict

    check_report_dict(report.to_dict())
