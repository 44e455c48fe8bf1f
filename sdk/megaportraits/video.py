"""Video in and out with PyAV: read any container FFmpeg knows, write H.264 MP4 with the
driver's audio.

Reading gives frames upright (the display matrix phones record is applied) with their
presentation times; a variable-frame-rate driver gives a variable-frame-rate output, in step
with its audio. A truncated or damaged driver gives the frames that decode and a
:class:`DamagedVideoWarning` saying how many of how many (the CLI prints it; the result is
kept, as with an interruption, rather than thrown away).

Writing is all-or-nothing except for a stop signal. The MP4 is written to a hidden temporary
file in the destination's directory and moved into place when complete; on an error (a full
disk too) it is deleted. On SIGINT, SIGTERM or SIGHUP (:func:`megaportraits.files.deferred_signals`)
the frame loop stops, the encoder is flushed and the container finalised, so the frames done
form a valid, playable file, which is then moved into place (:class:`AnimationInterrupted`).

H.264 with yuv420p needs even dimensions: an odd frame is padded by one edge pixel.
The driver's audio is copied as is when MP4 can hold its codec (AAC, MP3, ALAC), and
transcoded to AAC otherwise; it is cut where the video ends.
"""
from __future__ import annotations

import numbers
import os
import signal
import sys
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .errors import AnimationInterrupted, InputError
from .images import MAX_PIXELS, MAX_SIDE
from .files import check_output_path, check_readable_file, deferred_signals, temporary_sibling, write_failed

MP4_AUDIO_CODECS = ("aac", "mp3", "alac")
DEFAULT_FPS = Fraction(25)
TIME_BASE = Fraction(1, 90000)  # the output's clock: fine enough for any driver's timestamps


class DamagedVideoWarning(UserWarning):
    """The driver video ended early (truncated or damaged): the output holds the frames that
    could be decoded, and the warning says how many of how many."""


class VideoReader:
    """Decoded RGB frames of a file's first video track, upright, with their times.

    * Rotation: a display matrix (how phones record portrait video) is applied, so frames come
      out the way a player shows them (:func:`upright`).
    * Timing: :meth:`timed` yields each frame with its presentation time in seconds from the
      first frame, so a variable-frame-rate driver keeps its timing in the output.
    * Damage: decoding that fails after some frames, or a stream that ends well before the
      frame count or duration its header promises, ends the frames there with a
      :class:`DamagedVideoWarning`; ``damage`` then says what happened. A file with no
      decodable frame at all is an :class:`InputError`.
    """

    def __init__(self, path: str | os.PathLike, what: str = "driver video"):
        self.path = check_readable_file(path, what)
        self.what = what
        try:
            self._container = av.open(str(self.path), mode="r")
        except av.FFmpegError as e:
            raise InputError(f"{what} {str(self.path)!r} is not a video this SDK can read ({_reason(e)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise InputError(f"{what} {str(self.path)!r} has no video track")
        self.stream = self._container.streams.video[0]
        width, height = self.stream.codec_context.width, self.stream.codec_context.height
        if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:  # before a frame is allocated
            self._container.close()
            raise InputError(f"{what} {str(self.path)!r} is {width}x{height} pixels, larger than this SDK accepts "
                             f"(at most {MAX_SIDE} px a side and {MAX_PIXELS // 1_000_000} MP); downscale it first")
        self.stream.thread_type = "AUTO"
        self.fps = _frame_rate(self.stream)
        self.frame_count = self.stream.frames or None
        self.duration = (float(self.stream.duration * self.stream.time_base)
                         if self.stream.duration and self.stream.time_base else None)
        self.has_audio = bool(self._container.streams.audio)
        self.start_seconds = (float(self.stream.start_time * self.stream.time_base)
                              if self.stream.start_time is not None else 0.0)
        self.frames_read = 0
        self.damage: str | None = None

    def __iter__(self):
        for rgb, _ in self.timed():
            yield rgb

    def timed(self):
        """(RGB frame, seconds since the stream's start) for every frame, in order; times are
        strictly increasing (a repeated or missing timestamp is placed one frame later)."""
        last = None
        step = 1.0 / float(self.fps)
        try:
            for frame in self._container.decode(self.stream):
                self.frames_read += 1
                seconds = frame.time - self.start_seconds if frame.time is not None else None
                if seconds is None or (last is not None and seconds <= last):
                    seconds = 0.0 if last is None else last + step
                last = seconds
                yield upright(frame.to_ndarray(format="rgb24"), frame.rotation), seconds
        except av.FFmpegError as e:
            if self.frames_read == 0:
                raise InputError(f"{self.what} {str(self.path)!r} is damaged: no frame could be decoded "
                                 f"({_reason(e)})") from None
            self.damage = f"decoding failed after frame {self.frames_read} ({_reason(e)})"
        if self.frames_read == 0:
            raise InputError(f"{self.what} {str(self.path)!r} holds no video frames (empty or truncated)")
        if self.damage is None:
            self.damage = self._shortfall(last, step)
        if self.damage is not None:
            warnings.warn(f"{self.what} {str(self.path)!r} is truncated or damaged: {self.damage}; "
                          f"the output holds the {self.frames_read} frame(s) that could be decoded",
                          DamagedVideoWarning, stacklevel=2)

    def _shortfall(self, last: float, step: float) -> str | None:
        """What the header promised and the stream did not deliver, or None."""
        if self.frame_count and self.frames_read + 1 < self.frame_count:
            return f"its header promises {self.frame_count} frames, only {self.frames_read} are there"
        if (not self.frame_count and self.duration
                and last + step < self.duration - 2 * step and self.frames_read > 1):
            return f"its header promises {self.duration:.2f} s, the frames end at {last + step:.2f} s"
        return None

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def upright(rgb: np.ndarray, rotation) -> np.ndarray:
    """The frame as it is displayed: ``rotation`` is the display matrix's counter-clockwise
    angle in degrees (PyAV's ``VideoFrame.rotation``), rounded to a quarter turn."""
    turns = int(round((rotation or 0) / 90.0)) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _frame_rate(stream) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 0 < float(rate) <= 1000:
            return Fraction(rate).limit_denominator(100000)
    return DEFAULT_FPS


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split())[:200]


class AudioWarning(UserWarning):
    """The driver's audio could not be kept (the video is written without it, or with part)."""

class AudioCopy:
    """The driver's first audio track, copied (or transcoded to AAC) into the output in step
    with the video: :meth:`until` writes everything before a time, so the file stays
    interleaved and a Ctrl-C still leaves matching audio and video."""

    def __init__(self, driver: Path, output, video_start: float):
        self._input = av.open(str(driver), mode="r")
        self._source = self._input.streams.audio[0]
        self._output = output
        self._shift = video_start
        self.copied = self._source.codec_context.name in MP4_AUDIO_CODECS
        if self.copied:
            self._stream = output.add_stream_from_template(self._source)
        else:
            rate = self._source.codec_context.sample_rate or 48000
            self._stream = output.add_stream("aac", rate=rate)
            self._stream.layout = "stereo" if self._source.codec_context.channels != 1 else "mono"
            self._resampler = av.AudioResampler(format="fltp", layout=self._stream.layout, rate=rate,
                                                frame_size=1024)
        self._packets = self._input.demux(self._source)
        self._pending = None
        self._done = False

    @property
    def mode(self) -> str:
        return "copied" if self.copied else "transcoded to AAC"

    def until(self, seconds: float) -> None:
        """Write the audio that starts before ``seconds`` of output time. Damaged audio ends the
        sound track with a warning; it never costs the video."""
        try:
            self._copy_until(seconds)
        except av.FFmpegError as e:
            self._done = True
            warnings.warn(f"the driver's audio could not be read past {seconds:.1f} s ({_reason(e)}); "
                          "the rest of the output is silent", AudioWarning, stacklevel=3)

    def _copy_until(self, seconds: float) -> None:
        while not self._done:
            packet = self._pending or self._next_packet()
            if packet is None:
                self._done = True
                break
            if _seconds(packet) - self._shift >= seconds:
                self._pending = packet
                break
            self._pending = None
            self._write(packet)

    def finish(self, seconds: float) -> None:
        self.until(seconds)
        if not self.copied:
            for frame in self._resampler.resample(None):
                self._output.mux(self._stream.encode(frame))
            self._output.mux(self._stream.encode(None))
        self._input.close()


    def _next_packet(self):
        for packet in self._packets:
            if packet.dts is not None and packet.pts is not None:
                return packet
        return None

    def _write(self, packet) -> None:
        offset = round(self._shift / packet.time_base)
        if packet.pts - offset < 0:
            return  # audio from before the first video frame
        if self.copied:
            packet.pts -= offset
            packet.dts -= offset
            packet.stream = self._stream
            self._output.mux(packet)
            return
        for decoded in packet.decode():
            decoded.pts = None
            for frame in self._resampler.resample(decoded):
                self._output.mux(self._stream.encode(frame))


def _open_audio(driver: Path, output, video_start: float) -> AudioCopy | None:
    try:
        return AudioCopy(driver, output, video_start)
    except (av.FFmpegError, ValueError) as e:
        warnings.warn(f"the driver's audio track cannot be kept ({_reason(e)}); the output is silent",
                      AudioWarning, stacklevel=3)
        return None


def _seconds(packet) -> float:
    return float(packet.pts * packet.time_base)


class VideoWriter:
    """H.264 (libx264, yuv420p) MP4, written to a temporary sibling of ``path``; :meth:`finish`
    finalises and moves it into place, :meth:`abort` deletes it.

    Frames are placed at the times :meth:`write` is given (seconds from the start), so a
    variable-frame-rate driver stays variable-rate, in step with its audio; without times
    they follow each other at ``fps``. A failed write (a full disk) is one
    :class:`MegaportraitsError` and nothing is left behind."""

    def __init__(self, path: str | os.PathLike, fps: Fraction, width: int, height: int,
                 audio_from: Path | None = None, video_start: float = 0.0, crf: int = 18):
        self.path = Path(path)
        self.fps = Fraction(fps)
        self.size = (width + width % 2, height + height % 2)
        self.frames = 0
        self._last_pts = -1
        self._end = 0.0  # output seconds where the last frame ends
        self._tmp = temporary_sibling(self.path)
        try:
            self._container = av.open(str(self._tmp), mode="w", format="mp4")
            try:
                self._stream = self._container.add_stream("libx264", rate=self.fps)
            except (av.FFmpegError, ValueError) as e:
                raise InputError(f"this PyAV build cannot encode H.264 with libx264 ({_reason(e)}); "
                                 "install the PyAV wheel from PyPI: pip install --force-reinstall av") from None
            self._stream.width, self._stream.height = self.size
            self._stream.pix_fmt = "yuv420p"
            self._stream.codec_context.time_base = self._stream.time_base = TIME_BASE
            self._stream.options = {"crf": str(crf), "preset": "veryfast"}
            self._audio = _open_audio(audio_from, self._container, video_start) if audio_from else None
        except OSError as e:
            self._tmp.unlink(missing_ok=True)
            raise write_failed(self.path, e) from None
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise

    @property
    def audio_mode(self) -> str | None:
        return self._audio.mode if self._audio else None

    def write(self, rgb: np.ndarray, seconds: float | None = None, duration: float | None = None) -> None:
        """Add one frame shown from ``seconds`` (default: right after the last one) for
        ``duration`` (default: one frame at ``fps``)."""
        height, width = rgb.shape[:2]
        if (width + width % 2, height + height % 2) != self.size:
            raise ValueError(f"frame is {width}x{height}, the video is {self.size[0]}x{self.size[1]}")
        if width % 2 or height % 2:
            rgb = np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        start = self._end if seconds is None else seconds
        pts = max(int(round(start / TIME_BASE)), self._last_pts + 1)
        frame.pts = self._last_pts = pts
        frame.time_base = TIME_BASE
        self._end = float(pts * TIME_BASE) + (duration if duration and duration > 0 else 1.0 / float(self.fps))
        try:
            if self._audio:
                self._audio.until(self._end)
            self._container.mux(self._stream.encode(frame))
        except OSError as e:
            self.abort()
            raise write_failed(self.path, e) from None
        self.frames += 1

    def finish(self) -> Path:
        """Flush the encoder, write the MP4 index, move the file into place."""
        try:
            self._container.mux(self._stream.encode(None))
            if self._audio:
                self._audio.finish(self._end)
            self._container.close()
            os.replace(self._tmp, self.path)
        except OSError as e:
            self.abort()
            raise write_failed(self.path, e) from None
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        try:
            self._container.close()
        except Exception:
            pass
        self._tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class WriteResult:
    path: Path
    frames: int
    fps: Fraction
    audio: str | None  # "copied", "transcoded to AAC", or None when the driver has no audio
    damage: str | None = None  # the driver ended early (truncated or damaged): what happened
    replaced: bool = False     # an existing file at ``path`` was replaced


def animate_file(animator, avatar, driver: str | os.PathLike, output: str | os.PathLike,
                 max_frames: int | None = None, progress: bool = True) -> WriteResult:
    """Animate ``avatar`` with every frame of the video ``driver`` into the MP4 ``output``.

    ``output`` passes :func:`megaportraits.files.check_output_path` first: it may be neither
    the driver nor the avatar's source file. Frames keep the driver's presentation times and
    upright orientation. SIGINT, SIGTERM or SIGHUP stop the work at the next frame: the frames
    done are saved as a valid file and :class:`AnimationInterrupted` is raised (its ``signum``
    says which signal). A truncated driver gives the frames it has and a
    :class:`DamagedVideoWarning` (``WriteResult.damage``)."""
    from tqdm import tqdm

    output = check_output_path(output, (".mp4",), inputs={
        "driver video": driver, "source image": getattr(avatar, "source_path", None)})
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, numbers.Integral)
                                   or max_frames < 1):
        raise InputError(f"max_frames must be a whole number of at least 1, not {max_frames!r}")
    replaced = output.exists()
    with VideoReader(driver) as reader:
        total = min(x for x in (reader.frame_count, max_frames) if x) if (reader.frame_count or max_frames) else None
        performance = animator.performance(avatar, fps=float(reader.fps))
        writer = None
        bar = tqdm(total=total, unit="frame", disable=not progress, file=sys.stderr, leave=False)
        with deferred_signals() as stop:
            try:
                frames = reader.timed()
                previous = None
                for index, (frame, seconds) in enumerate(frames):
                    if stop or (max_frames is not None and index >= max_frames):
                        break
                    animated = performance(frame)
                    if writer is None:
                        writer = VideoWriter(output, reader.fps, animated.shape[1], animated.shape[0],
                                             audio_from=reader.path if reader.has_audio else None,
                                             video_start=reader.start_seconds)
                    step = seconds - previous if previous is not None else None
                    writer.write(animated, seconds, step)
                    previous = seconds
                    bar.update(1)
                frames.close()
            except KeyboardInterrupt as e:  # raised by code in the loop rather than by the signal: the same stop
                if stop.signum is None:
                    stop.signum = getattr(e, "signum", signal.SIGINT)
            except BaseException:
                bar.close()
                if writer is not None:
                    writer.abort()
                raise
            bar.close()
            if stop:
                stop.handled = True
                if writer is None:
                    raise _interrupted(0, None, stop.signum)
                writer.finish()
                raise _interrupted(writer.frames, output, stop.signum)
            writer.finish()
        return WriteResult(output, writer.frames, reader.fps, writer.audio_mode, reader.damage, replaced)


def _interrupted(frames: int, path, signum: int) -> AnimationInterrupted:
    error = AnimationInterrupted(frames, path)
    error.signum = signum
    return error
