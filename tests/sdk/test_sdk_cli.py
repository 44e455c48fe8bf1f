"""The ``megaportraits`` command on the toy bundle with drawn faces and generated videos:
outputs, audio, and one clear line (no traceback, no output file) for every bad input."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import av
import cv2
import numpy as np
import pytest

from megaportraits import animator as animator_mod
from megaportraits import cli
from drawn_faces import draw_face
from media import probe, write_video

N_FRAMES = 12


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    cv2.imwrite(str(d / "source.png"), cv2.cvtColor(draw_face(size=257, width=301, cx=150, cy=130), cv2.COLOR_RGB2BGR))
    frames = [draw_face(size=256, cx=128 + 6 * np.sin(i / 2), cy=128, scale=1.0 + 0.03 * np.cos(i / 3), noise_seed=i)
              for i in range(N_FRAMES)]
    write_video(d / "driver.mp4", frames, fps=25, audio="aac")
    write_video(d / "driver_pcm.mkv", frames, fps=30, codec="mpeg4", audio="pcm_s16le")
    write_video(d / "silent.mov", frames, fps=24)
    cv2.imwrite(str(d / "driver.png"), cv2.cvtColor(frames[3], cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(d / "noise.png"), np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    cv2.imwrite(str(d / "tiny.png"), np.zeros((1, 1, 3), np.uint8))
    cv2.imwrite(str(d / "gray.png"), cv2.cvtColor(draw_face(), cv2.COLOR_RGB2GRAY))
    (d / "text.mp4").write_text("this is not a video\n")
    (d / "empty.mp4").write_bytes(b"")
    data = (d / "driver.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])  # index at the end: unreadable
    write_video(d / "faststart.mp4", frames, fps=25, options={"movflags": "faststart"})
    data = (d / "faststart.mp4").read_bytes()
    (d / "cut.mp4").write_bytes(data[: len(data) * 2 // 3])  # index first: frames run out midway
    with av.open(str(d / "noframes.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height = 64, 64
        out.start_encoding()  # a valid MP4 header, no samples
    return d


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def only(directory):
    return sorted(p.name for p in directory.iterdir())


def test_animate_video_keeps_fps_audio_and_evens_the_size(media, toy_bundle, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code, _, err = run(capsys, "animate", media / "source.png", media / "driver.mp4", "-o", out,
                       "--bundle", toy_bundle, "--provider", "cpu", "--threads", "1", "--quiet")
    assert code == 0, err
    assert err.strip() == f"megaportraits: wrote {out} ({N_FRAMES} frames at 25 fps, audio copied)"
    info = probe(out)
    video = info["video"]
    assert (video["codec"], video["pix_fmt"], video["frames"], video["fps"]) == ("h264", "yuv420p", N_FRAMES, 25)
    assert (video["width"], video["height"]) == (302, 258)  # 301x257 source, padded to even
    assert info["audio"]["codec"] == "aac" and abs(info["audio"]["seconds"] - N_FRAMES / 25) < 0.1
    assert only(tmp_path) == ["out.mp4"]


def test_animate_transcodes_audio_mp4_cannot_hold(media, toy_bundle, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    code, _, err = run(capsys, "animate", media / "source.png", media / "driver_pcm.mkv", "-o", out,
                       "--bundle", toy_bundle, "--quiet", "--max-frames", "5", "--smooth", "--absolute")
    assert code == 0, err
    assert "5 frames at 30 fps, audio transcoded to AAC" in err
    info = probe(out)
    assert info["video"]["frames"] == 5 and info["audio"]["codec"] == "aac"
    assert info["audio"]["seconds"] < 5 / 30 + 0.1  # audio is cut where the video ends


def test_crop_outputs_and_silent_driver(media, toy_bundle, tmp_path, capsys):
    out = tmp_path / "crop.mp4"
    code, _, err = run(capsys, "animate", media / "source.png", media / "silent.mov", "-o", out,
                       "--bundle", toy_bundle, "--no-paste-back", "--quiet")
    assert code == 0, err
    assert err.strip().endswith("(12 frames at 24 fps, no audio)")
    info = probe(out)
    assert (info["video"]["width"], info["video"]["height"]) == (32, 32) and info["audio"] is None


def test_driver_image_gives_an_image(media, toy_bundle, tmp_path, capsys):
    out = tmp_path / "out.png"
    code, _, err = run(capsys, "animate", media / "gray.png", media / "driver.png", "-o", out,
                       "--bundle", toy_bundle, "--no-crop")
    assert code == 0, err
    assert cv2.imread(str(out)).shape == (256, 256, 3)


def test_paste_back_keeps_the_photo_outside_the_face(media, toy_bundle, tmp_path, capsys):
    out = tmp_path / "out.png"
    code, _, err = run(capsys, "animate", media / "source.png", media / "driver.png", "-o", out, "--bundle", toy_bundle)
    assert code == 0, err
    source = cv2.imread(str(media / "source.png"))
    result = cv2.imread(str(out))
    assert result.shape == source.shape
    for corner in (np.s_[:10, :10], np.s_[:10, -10:], np.s_[-10:, :10], np.s_[-10:, -10:]):
        assert np.array_equal(result[corner], source[corner])  # outside the feathered ellipse
    assert np.abs(result.astype(int) - source.astype(int)).max() > 30  # the face was replaced


ERRORS = [
    # (argv after "animate", expected message fragment)
    (["missing.png", "driver.mp4"], "source image '{d}/missing.png' does not exist"),
    (["text.mp4", "driver.mp4"], "is not an image this SDK can read"),
    (["tiny.png", "driver.mp4"], "is 1x1 pixels, too small to hold a face"),
    (["noise.png", "driver.mp4"], "no face found in the source image; if it is already a cropped portrait, use --no-crop"),
    (["source.png", "missing.mp4"], "driver video '{d}/missing.mp4' does not exist"),
    (["source.png", "text.mp4"], "is not a video this SDK can read"),
    (["source.png", "empty.mp4"], "driver video '{d}/empty.mp4' is empty"),
    (["source.png", "truncated.mp4"], "driver video '{d}/truncated.mp4' is not a video this SDK can read"),
    (["source.png", "noframes.mp4"], "driver video '{d}/noframes.mp4' has no video track"),
    (["source.png", "noise.png"], "no face found in the driver's first frame"),
]


@pytest.mark.parametrize("argv,message", ERRORS)
def test_bad_inputs_give_one_line_and_no_output(media, toy_bundle, tmp_path, capsys, argv, message):
    out = tmp_path / ("out.png" if argv[1].endswith(".png") else "out.mp4")
    code, _, err = run(capsys, "animate", *[media / a for a in argv], "-o", out, "--bundle", toy_bundle, "--quiet")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("megaportraits: error: ")
    assert message.format(d=media) in err
    assert only(tmp_path) == []


def test_output_problems(media, toy_bundle, tmp_path, capsys):
    for out, message in [(tmp_path / "nowhere" / "out.mp4", "output directory"),
                         (tmp_path / "out.avi", "must end in .mp4"), (tmp_path, "is a directory")]:
        code, _, err = run(capsys, "animate", media / "source.png", media / "driver.mp4", "-o", out,
                           "--bundle", toy_bundle)
        assert code == 1 and message in err and err.count("\n") == 1
    assert only(tmp_path) == []


def test_centre_crop_only_when_asked(media, toy_bundle, tmp_path, capsys):
    out = tmp_path / "out.png"
    code, _, err = run(capsys, "animate", media / "noise.png", media / "driver.png", "-o", out, "--bundle", toy_bundle)
    assert code == 1 and "no face found in the source image" in err
    code, _, err = run(capsys, "animate", media / "noise.png", media / "noise.png", "-o", out, "--bundle", toy_bundle,
                       "--centre-crop")
    assert code == 0, err
    assert cv2.imread(str(out)).shape == (128, 128, 3)


def test_output_must_not_overwrite_an_input(media, toy_bundle, capsys):
    before = (media / "driver.mp4").read_bytes()
    code, _, err = run(capsys, "animate", media / "source.png", media / "driver.mp4", "-o", media / "driver.mp4",
                       "--bundle", toy_bundle)
    assert code == 1 and "would overwrite the driver" in err
    assert (media / "driver.mp4").read_bytes() == before


def test_bad_bundle_and_provider(media, toy_bundle, bundle_copy, tmp_path, capsys):
    bad = bundle_copy(toy_bundle)
    with open(bad / "generator.onnx", "ab") as f:
        f.write(b"x")
    out = tmp_path / "out.mp4"
    cases = [(["--bundle", bad], "'generator.onnx' does not match its sha256"),
             (["--bundle", tmp_path / "nope"], "does not exist"),
             (["--bundle", toy_bundle, "--provider", "cuda"], "provider 'cuda' is not available"),
             (["--bundle", toy_bundle, "--max-frames", "0"], "--max-frames must be at least 1")]
    if "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers():
        cases.pop(2)
    for extra, message in cases:
        code, _, err = run(capsys, "animate", media / "source.png", media / "driver.mp4", "-o", out, *extra)
        assert code == 1 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["animate", "a.png"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "required" in err


def test_ctrl_c_leaves_a_playable_file_of_the_frames_done(media, toy_bundle, tmp_path, capsys, monkeypatch):
    original = animator_mod.Performance.__call__
    calls = {"n": 0}

    def interrupt_on_sixth(self, frame):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return original(self, frame)

    monkeypatch.setattr(animator_mod.Performance, "__call__", interrupt_on_sixth)
    out = tmp_path / "out.mp4"
    code, _, err = run(capsys, "animate", media / "source.png", media / "driver.mp4", "-o", out,
                       "--bundle", toy_bundle, "--quiet")
    assert code == 130
    assert err.strip() == f"megaportraits: interrupted: wrote 5 frame(s) to {out}"
    info = probe(out)
    assert info["video"]["frames"] == 5 and info["audio"]["seconds"] < 5 / 25 + 0.1
    assert only(tmp_path) == ["out.mp4"]


def test_ctrl_c_before_any_frame(media, toy_bundle, tmp_path, capsys, monkeypatch):
    def interrupt(self, frame):
        raise KeyboardInterrupt
    monkeypatch.setattr(animator_mod.Performance, "__call__", interrupt)
    code, _, err = run(capsys, "animate", media / "source.png", media / "driver.mp4", "-o", tmp_path / "o.mp4",
                       "--bundle", toy_bundle, "--quiet")
    assert code == 130 and "no output file" in err and only(tmp_path) == []


def test_info(toy_bundle, tmp_path, capsys):
    code, out, _ = run(capsys, "info", "--bundle", toy_bundle, "--json")
    info = json.loads(out)
    assert code == 0
    assert info["bundle"]["status"] == "ok" and info["bundle"]["image_size"] == 32
    assert "CPUExecutionProvider" in info["providers_available"]
    assert set(info["custom_op_library"]) == {"available", "path", "reason"}
    code, out, _ = run(capsys, "info", "--bundle", tmp_path)
    assert code == 1 and "status: invalid: " in out and "has no manifest.json" in out


def test_demo_without_the_bundled_model(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "DEMO_SOURCE", tmp_path / "demo_source.png")
    monkeypatch.setattr(cli, "DEMO_DRIVER", tmp_path / "demo_driver.mp4")
    from megaportraits import bundle
    monkeypatch.setattr(bundle, "DEMO_BUNDLE", tmp_path / "demo_bundle")
    code, _, err = run(capsys, "demo", "-o", tmp_path / "demo.mp4")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("megaportraits: error: the bundled demo model is not installed")


def test_demo_with_the_bundled_assets_in_place(media, toy_bundle, monkeypatch, tmp_path, capsys):
    from megaportraits import bundle
    monkeypatch.setattr(cli, "DEMO_SOURCE", media / "source.png")
    monkeypatch.setattr(cli, "DEMO_DRIVER", media / "driver.mp4")
    monkeypatch.setattr(bundle, "DEMO_BUNDLE", toy_bundle)
    out = tmp_path / "demo.mp4"
    code, _, err = run(capsys, "demo", "-o", out, "--quiet", "--max-frames", "3")
    assert code == 0, err
    assert probe(out)["video"]["frames"] == 3
    assert (probe(out)["video"]["width"], probe(out)["video"]["height"]) == (302, 258)  # uncropped source
    code, _, err = run(capsys, "demo", "-o", out, "--quiet", "--max-frames", "2", "--crop", "--no-paste-back")
    assert code == 0, err
    assert probe(out)["video"]["frames"] == 2 and probe(out)["video"]["width"] == 32


def test_real_process_prints_no_traceback(media, tmp_path):
    result = subprocess.run([sys.executable, "-m", "megaportraits", "animate", str(media / "source.png"),
                             str(media / "missing.mp4"), "-o", str(tmp_path / "o.mp4")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr == f"megaportraits: error: driver video '{media}/missing.mp4' does not exist\n"


def test_import_does_not_pull_torch():
    code = ("import megaportraits, megaportraits.animator, megaportraits.cli, megaportraits.video, sys; "
            "megaportraits.cli.build_parser(); assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'megaportraits_export' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_real_ctrl_c_in_a_real_process(media, toy_bundle, tmp_path):
    """SIGINT to a running `python -m megaportraits animate`: exit 130, a playable partial file."""
    import signal
    import threading
    import time

    frames = [draw_face(size=128, cx=64 + (i % 5), cy=64, scale=0.5, noise_seed=None) for i in range(1000)]
    driver = write_video(tmp_path / "long.mp4", frames, fps=25, audio="aac")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "o.mp4"
    process = subprocess.Popen([sys.executable, "-m", "megaportraits", "animate", str(media / "source.png"), str(driver),
                                "-o", str(out), "--bundle", str(toy_bundle), "--threads", "1"],
                               stderr=subprocess.PIPE, text=True)
    seen = []

    def read():
        while True:
            chunk = process.stderr.read(1)
            if not chunk:
                return
            seen.append(chunk)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    def frames_done():  # tqdm redraws at intervals, so any count >= 2 will do, not exactly "2/400"
        counts = re.findall(r"(\d+)/1000", "".join(seen))
        return int(counts[-1]) if counts else 0

    while frames_done() < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    reader.join(timeout=10)
    last_line = "".join(seen).strip().splitlines()[-1].split("\r")[-1].strip()
    written = int(last_line.split("wrote ")[1].split(" ")[0])
    assert last_line == f"megaportraits: interrupted: wrote {written} frame(s) to {out}"
    assert 2 <= written < 1000
    assert probe(out)["video"]["frames"] == written
    assert only(out_dir) == ["o.mp4"]


def test_audio_that_cannot_be_kept_costs_only_the_sound(media, toy_bundle, tmp_path, capsys, monkeypatch):
    from megaportraits import video

    def unsupported(self, *args):
        raise ValueError("no encoder for this layout")
    monkeypatch.setattr(video.AudioCopy, "__init__", unsupported)
    out = tmp_path / "out.mp4"
    code, _, err = run(capsys, "animate", media / "source.png", media / "driver.mp4", "-o", out,
                       "--bundle", toy_bundle, "--quiet", "--max-frames", "3")
    assert code == 0
    assert err.splitlines() == [
        "megaportraits: warning: the driver's audio track cannot be kept (no encoder for this layout); the output is silent",
        f"megaportraits: wrote {out} (3 frames at 25 fps, no audio)"]
    assert probe(out)["audio"] is None
