"""Issue 12, outputs: nothing the SDK writes may destroy an input, fail late, or leave a
half-written file (findings 1, 9, 10, 12, 13, 17, 18, 20)."""
from __future__ import annotations

import errno
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from megaportraits import animator as animator_mod
from megaportraits import video as video_mod
from megaportraits.animator import Animator
from megaportraits.errors import InputError, MegaportraitsError
from megaportraits.files import TEMPORARY_NAME_EXTRA
from megaportraits.images import OUTPUT_IMAGE_EXTENSIONS, load_image, save_image

from hardening_inputs import REPO, count_frames, digest, run_cli, temporary_files


# ---- 1: the output may never be an input ---------------------------------------------------
def test_1_api_refuses_to_write_over_the_driver_however_it_is_named(media, toy, tmp_path):
    avatar = toy.prepare(media["source"])
    driver = tmp_path / "mine.mp4"
    driver.write_bytes(media["driver"].read_bytes())
    (tmp_path / "link.mp4").symlink_to(driver)
    os.link(driver, tmp_path / "hard.mp4")
    (tmp_path / "sub").mkdir()
    before = digest([driver])
    for output in (driver, tmp_path / "link.mp4", tmp_path / "sub" / ".." / "mine.mp4", tmp_path / "hard.mp4"):
        with pytest.raises(InputError, match=r"would overwrite the driver video .*; choose another output name"):
            toy.animate_video(avatar, driver, output, progress=False)
    assert digest([driver]) == before and temporary_files(tmp_path) == []


def test_1_the_avatars_source_is_protected_too(media, toy, tmp_path):
    source = tmp_path / "me.mp4"  # an odd name, but a valid PNG: suffixes do not protect it
    source.write_bytes(media["source"].read_bytes())
    avatar = toy.prepare(media["source"], source_path=source)
    with pytest.raises(InputError, match="would overwrite the source image"):
        toy.animate_video(avatar, media["driver"], source, progress=False)
    png = tmp_path / "me.png"
    png.write_bytes(media["source"].read_bytes())
    avatar = toy.prepare(png)  # a path: remembered by itself
    before = digest([png])
    with pytest.raises(InputError, match="would overwrite the source image"):
        toy.save_frame(avatar, media["driver_png"], png)
    with pytest.raises(InputError, match="would overwrite the source image"):
        save_image(png, np.zeros((40, 40, 3), np.uint8), inputs={"source image": png})
    assert digest([png]) == before


def test_1_cli_refuses_a_symlinked_output(media, toy_bundle, tmp_path, capsys):
    (tmp_path / "out.png").symlink_to(media["source"])
    before = digest([media["source"]])
    code, _, err = run_cli(capsys, "animate", media["source"], media["driver_png"], "-o", tmp_path / "out.png",
                           "--bundle", toy_bundle)
    assert code == 1 and "would overwrite the source image" in err and err.count("\n") == 1
    assert digest([media["source"]]) == before


# ---- 9: a full disk ----------------------------------------------------------------------
class _FullDisk:
    """A PyAV output container whose disk fills up after ``after`` packets (or at close)."""

    def __init__(self, real, after):
        self._real, self._after = real, after

    def mux(self, packets):
        if self._after is not None:
            self._after -= 1
            if self._after < 0:
                raise OSError(errno.ENOSPC, "No space left on device")
        return self._real.mux(packets)

    def close(self):
        self._real.close()
        if self._after is None:
            raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.mark.parametrize("after", [3, None], ids=["while-writing", "at-finish"])
def test_9_full_disk_video_is_one_line_and_no_file(media, toy_bundle, tmp_path, capsys, monkeypatch, after):
    real_open = video_mod.av.open

    def fake_open(path, mode="r", **kw):
        container = real_open(path, mode=mode, **kw)
        return _FullDisk(container, after) if mode == "w" else container

    monkeypatch.setattr(video_mod.av, "open", fake_open)
    out = tmp_path / "out.mp4"
    code, _, err = run_cli(capsys, "animate", media["source"], media["driver"], "-o", out, "--bundle", toy_bundle,
                           "--quiet")
    assert code == 1 and err == f"megaportraits: error: cannot write {str(out)!r}: No space left on device; nothing was written\n"
    assert list(tmp_path.iterdir()) == []


def test_9_full_disk_image_is_one_line_and_no_file(media, toy_bundle, tmp_path, capsys, monkeypatch):
    def full(self, data):
        with open(self, "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    out = tmp_path / "out.png"
    code, _, err = run_cli(capsys, "animate", media["source"], media["driver_png"], "-o", out, "--bundle", toy_bundle)
    assert code == 1 and "cannot write" in err and "No space left on device" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


# ---- 10: a name too long for the temporary file ------------------------------------------
def test_10_long_names_are_refused_before_any_work(media, toy_bundle, tmp_path, capsys, monkeypatch):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX") - TEMPORARY_NAME_EXTRA
    too_long = tmp_path / ("x" * (limit - 3) + "x.mp4")
    monkeypatch.setattr(animator_mod.Animator, "prepare", lambda *a, **k: pytest.fail("work began"))
    code, _, err = run_cli(capsys, "animate", media["source"], media["driver"], "-o", too_long, "--bundle", toy_bundle)
    assert code == 1 and err == (f"megaportraits: error: output file name is {limit + 2} bytes long; this directory "
                                 f"allows {limit} (the temporary file beside it needs {TEMPORARY_NAME_EXTRA} more); "
                                 "choose a shorter name\n")
    assert list(tmp_path.iterdir()) == []


def test_10_the_longest_allowed_name_works(media, toy_bundle, tmp_path, capsys):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX") - TEMPORARY_NAME_EXTRA
    out = tmp_path / ("y" * (limit - 4) + ".png")
    code, _, err = run_cli(capsys, "animate", media["source"], media["driver_png"], "-o", out, "--bundle", toy_bundle)
    assert code == 0, err
    assert load_image(out).shape == (257, 301, 3) and list(tmp_path.iterdir()) == [out]


# ---- 12: benchmark outputs checked before measuring --------------------------------------
@pytest.mark.parametrize("option", ["--output", "--png"])
def test_12_benchmark_missing_output_directory_fails_first(toy_bundle, tmp_path, capsys, monkeypatch, option):
    from megaportraits.benchmark import cli as bench_cli
    monkeypatch.setattr(bench_cli, "run_benchmark", lambda *a, **k: pytest.fail("measuring began"))
    target = tmp_path / "missing" / ("r.json" if option == "--output" else "r.png")
    code, _, err = run_cli(capsys, "benchmark", "--bundle", toy_bundle, option, target)
    assert code == 1 and err == f"megaportraits: error: output directory '{tmp_path / 'missing'}' does not exist; create it first\n"


# ---- 13: absurd thread counts ------------------------------------------------------------
@pytest.mark.parametrize("command", ["animate", "benchmark"])
def test_13_huge_thread_count_is_one_usage_line(media, toy_bundle, tmp_path, capsys, command):
    argv = (["animate", media["source"], media["driver"], "-o", tmp_path / "o.mp4"] if command == "animate"
            else ["benchmark"]) + ["--bundle", toy_bundle, "--threads", "99999999999"]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and "99999999999" in err and "1024" in err, err
    assert list(tmp_path.iterdir()) == []


def test_13_api_thread_count_is_validated(toy_bundle):
    for bad in (99999999999, -1, 2.5, True):
        with pytest.raises(MegaportraitsError, match="threads must be a whole number from 0"):
            Animator(toy_bundle, provider="cpu", threads=bad)


# ---- 17: only formats that can be written are offered ------------------------------------
def test_17_pgm_output_is_refused_up_front(media, toy_bundle, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(animator_mod.Animator, "prepare", lambda *a, **k: pytest.fail("work began"))
    code, _, err = run_cli(capsys, "animate", media["source"], media["driver_png"], "-o", tmp_path / "o.pgm",
                           "--bundle", toy_bundle)
    assert code == 1 and "has the extension '.pgm'; it must end in .png" in err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extension", OUTPUT_IMAGE_EXTENSIONS)
def test_17_every_offered_image_format_writes_and_reads_back(tmp_path, extension):
    rgb = np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    path = save_image(tmp_path / f"o{extension}", rgb)
    back = load_image(path)
    assert back.shape == rgb.shape
    lossy = extension in (".jpg", ".jpeg", ".webp")
    assert np.abs(back.astype(int) - rgb).mean() < (60 if lossy else 1e-9)
    assert list(tmp_path.iterdir()) == [path]


# ---- 18: a closed or full standard output ------------------------------------------------
def _cli(*argv, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "megaportraits", *map(str, argv)], env=env, cwd=REPO, **kw)


def test_18_json_into_head_is_quiet(toy_bundle):
    proc = _cli("info", "--bundle", toy_bundle, "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # what `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(60) in (0, 141) and first.strip() == b"{" and "Traceback" not in err and "Error" not in err, err


def test_18_full_stdout_is_one_line(toy_bundle):
    with open("/dev/full", "w") as full:
        proc = _cli("info", "--bundle", toy_bundle, "--json", stdout=full, stderr=subprocess.PIPE)
        err = proc.stderr.read().decode()
    assert proc.wait(60) == 1
    assert err == "megaportraits: error: cannot write to standard output: No space left on device\n"


# ---- 20: replacing an existing output is said -------------------------------------------
def test_20_an_existing_output_is_replaced_and_the_cli_says_so(media, toy_bundle, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"an older result")
    code, _, err = run_cli(capsys, "animate", media["source"], media["driver"], "-o", out, "--bundle", toy_bundle,
                           "--quiet", "--max-frames", "3")
    assert code == 0 and err.endswith("; replaced the existing file)\n") and err.count("\n") == 1, err
    assert count_frames(out) == 3 and list(tmp_path.iterdir()) == [out]
    code, _, err = run_cli(capsys, "animate", media["source"], media["driver"], "-o", tmp_path / "new.mp4",
                           "--bundle", toy_bundle, "--quiet", "--max-frames", "3")
    assert code == 0 and "replaced" not in err
