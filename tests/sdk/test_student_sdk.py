"""The SDK on a student bundle: avatars by name, per frame crop -> student -> composite -> paste
back (compared with the PyTorch student), absolute motion only, one-line errors, the CLI."""
import numpy as np
import pytest

from megaportraits import Animator
from megaportraits.errors import InputError, MegaportraitsError
from megaportraits.student import StudentAnimator

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def student_bundle(tmp_path_factory, toy_bundle):
    """A tiny random matte student with two avatars; the toy bundle stands in as its teacher."""
    from megaportraits_export.distill.graph import StudentAvatar, write_student_bundle
    from megaportraits_export.networks.student import build_student
    from megaportraits_export.student_config import get_student_config

    torch.set_num_threads(1)
    torch.manual_seed(3)
    student = build_student(get_student_config("tiny").replace(num_avatars=2, matte=True)).eval()
    with torch.no_grad():
        for tensors in student.avatar_parameters():
            tensors.normal_(0, 0.3)
    rng = np.random.default_rng(0)
    avatars = [StudentAvatar("ann", rng.integers(0, 256, (100, 90, 3), dtype=np.uint8), (10, 20, 64),
                             backdrop=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
               StudentAvatar("bob", rng.integers(0, 256, (80, 80, 3), dtype=np.uint8), (8, 8, 64),
                             backdrop=rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))]
    path = write_student_bundle(student, avatars, toy_bundle, tmp_path_factory.mktemp("student") / "bundle")
    return path, student, avatars


def _reference(student, avatars, index, crop):
    """What the SDK must produce for a driver crop: the PyTorch student, composited onto the backdrop."""
    with torch.no_grad():
        out = student(torch.from_numpy(crop.transpose(2, 0, 1)[None].astype(np.float32) / 255),
                      torch.tensor([index]))[0].numpy()
    plate = avatars[index].backdrop.transpose(2, 0, 1).astype(np.float32) / 255
    rgb = out[3:] * out[:3] + (1 - out[3:]) * plate
    return np.clip(rgb.transpose(1, 2, 0) * 255 + 0.5, 0, 255).astype(np.uint8)


def test_animator_on_a_student_bundle_animates_avatars_by_name(student_bundle):
    path, student, avatars = student_bundle
    rng = np.random.default_rng(1)
    driver = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with Animator(path, crop=False, paste_back=False, threads=1) as animator:
        assert isinstance(animator, StudentAnimator) and animator.avatar_names == ["ann", "bob"]
        for index, name in enumerate(("ann", "bob")):
            frame = animator.animate_frame(animator.prepare(name), driver)
            assert np.abs(frame.astype(int) - _reference(student, avatars, index, driver)).max() <= 1
        other = animator.animate_frame(animator.prepare("ann"), driver)
        assert np.abs(other.astype(int) - frame).max() > 10  # the avatars differ


def test_frames_are_pasted_back_into_the_avatars_photo(student_bundle):
    path, student, avatars = student_bundle
    driver = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    with Animator(path, crop=False, threads=1) as animator:
        frame = animator.animate_frame(animator.prepare("ann"), driver)
    photo = avatars[0].image
    assert frame.shape == photo.shape
    assert np.array_equal(frame[:20], photo[:20]) and np.array_equal(frame[84:], photo[84:])  # outside the crop
    centre = frame[20 + 24:20 + 40, 10 + 24:10 + 40].astype(int)
    want = _reference(student, avatars, 0, driver)[24:40, 24:40].astype(int)
    assert np.abs(centre - want).mean() < 3


def test_unknown_avatar_and_relative_motion_are_one_line_errors(student_bundle):
    path = student_bundle[0]
    with Animator(path, threads=1) as animator:
        with pytest.raises(InputError, match="no avatar 'carol'; its avatars are ann, bob") as e:
            animator.prepare("carol")
        assert "\n" not in str(e.value)
    with pytest.raises(MegaportraitsError, match="absolute motion"):
        Animator(path, motion="relative")


def test_cli_animates_a_named_avatar(student_bundle, tmp_path, capsys):
    from megaportraits.cli import main
    from megaportraits.images import load_image, save_image

    path = student_bundle[0]
    driver = tmp_path / "driver.png"
    save_image(driver, np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    out = tmp_path / "out.png"
    assert main(["animate", "--bundle", str(path), "bob", str(driver), "-o", str(out), "--no-crop",
                 "--threads", "1"]) == 0
    assert load_image(out).shape == (80, 80, 3)
    capsys.readouterr()
    assert main(["animate", "--bundle", str(path), "carol", str(driver), "-o", str(tmp_path / "x.png"),
                 "--no-crop"]) == 1
    err = capsys.readouterr().err.strip()
    assert "no avatar 'carol'" in err and len(err.splitlines()) == 1
    assert main(["animate", "--bundle", str(path), "bob", str(driver), "-o", str(tmp_path / "y.png"),
                 "--relative"]) == 1
    assert "absolute motion" in capsys.readouterr().err


def test_cli_animates_a_driver_video(student_bundle, tmp_path, capsys):
    from media import probe, write_video

    from megaportraits.cli import main

    path = student_bundle[0]
    rng = np.random.default_rng(4)
    driver = write_video(tmp_path / "driver.mp4", [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
                                                   for _ in range(5)], fps=10)
    out = tmp_path / "out.mp4"
    assert main(["animate", "--bundle", str(path), "ann", str(driver), "-o", str(out), "--no-crop",
                 "--threads", "1", "--quiet"]) == 0
    info = probe(out)["video"]
    assert info["frames"] == 5 and (info["width"], info["height"]) == (90, 100)  # ann's photo, pasted back
    assert "5 frames" in capsys.readouterr().err


def test_info_validates_a_student_bundle(student_bundle, capsys):
    from megaportraits.bundle import validate_bundle
    from megaportraits.cli import main

    report = validate_bundle(student_bundle[0], open_sessions=True)
    assert report.ok and report.manifest.is_student, report.problems
    assert main(["info", "--bundle", str(student_bundle[0])]) == 0
    assert "status: ok" in capsys.readouterr().out
