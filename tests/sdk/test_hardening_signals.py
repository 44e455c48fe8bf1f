"""Issue 12, finding 3: SIGINT, SIGTERM and SIGHUP during ``animate`` keep the frames done as a
valid file and leave no temporary file; the handlers are the caller's again afterwards.
Each case is a fresh process that sends itself the real signal at a known frame."""
from __future__ import annotations

import signal

import pytest

from megaportraits.animator import Animator

from hardening_inputs import N_FRAMES, count_frames, digest, run_with_signal, temporary_files


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_3_a_stop_signal_keeps_the_frames_done(media, toy_bundle, tmp_path, name):
    out = tmp_path / "out.mp4"
    before = digest(media.values())
    result = run_with_signal(["animate", media["source"], media["driver"], "-o", out, "--bundle", toy_bundle,
                              "--quiet"], name, at_frame=6)
    assert result.returncode == 128 + getattr(signal, name), result.stderr
    # the signal lands while frame 6 is animated: it is finished and written, then the loop stops
    assert result.stderr == f"megaportraits: interrupted: wrote 6 frame(s) to {out}\n"
    assert count_frames(out) == 6 < N_FRAMES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"] and temporary_files(tmp_path) == []
    assert digest(media.values()) == before


def test_3_a_signal_on_the_first_frame_leaves_nothing(media, toy_bundle, tmp_path):
    result = run_with_signal(["animate", media["source"], media["driver"], "-o", tmp_path / "out.mp4",
                              "--bundle", toy_bundle, "--quiet"], "SIGTERM", at_frame=1)
    # frame 1 is finished before the stop is seen, so one frame is kept
    assert result.returncode == 143 and "wrote 1 frame(s)" in result.stderr
    assert count_frames(tmp_path / "out.mp4") == 1 and temporary_files(tmp_path) == []


def test_3_previous_handlers_are_restored(media, toy_bundle, tmp_path):
    mine = lambda signum, frame: None  # noqa: E731
    previous = {s: signal.signal(s, mine) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with Animator(toy_bundle, provider="cpu", threads=1) as a:
            a.animate_video(a.prepare(media["source"]), media["driver"], tmp_path / "o.mp4", max_frames=2,
                            progress=False)
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGHUP) is mine
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


PREPARE_SCRIPT = """
import os, signal, sys
from megaportraits import animator, cli
original = animator.Animator.prepare
def prepare(self, *args, **kwargs):
    os.kill(os.getpid(), signal.{signal})
    return original(self, *args, **kwargs)
animator.Animator.prepare = prepare
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_3_a_stop_signal_before_the_frames_is_one_line(media, toy_bundle, tmp_path, name):
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", PREPARE_SCRIPT.format(signal=name), "animate", str(media["source"]),
                             str(media["driver"]), "-o", str(tmp_path / "out.mp4"), "--bundle", str(toy_bundle), "--quiet"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 128 + getattr(signal, name) and result.stderr == "megaportraits: interrupted\n"
    assert list(tmp_path.iterdir()) == []
