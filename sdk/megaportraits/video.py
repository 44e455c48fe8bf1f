"""Video in and out with PyAV: read any container FFmpeg knows, write H.264 MP4 with the
driver's audio.

Writing is all-or-nothing except for Ctrl-C. The MP4 is written to a hidden temporary file in
the destination's directory and moved into place when complete; on an error it is deleted. On
Ctrl-C the encoder is flushed and the container finalised first, so the frames done form a
valid, playable file, which is then moved into place (:class:`AnimationInterrupted`).

H.264 with yuv420p needs even dimensions: an odd frame is padded by one edge pixel.
The driver's audio is copied as is when MP4 can hold its codec (AAC, MP3, ALAC), and
transcoded to AAC otherwise; it is cut where the video ends.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .errors import AnimationInterrupted, InputError
from .files import check_output_path, check_readable_file, temporary_sibling

MP4_AUDIO_CODECS = ("aac", "mp3", "alac")
DEFAULT_FPS = Fraction(25)


class VideoReader:
    """Decoded RGB frames of a file's first video track, with its frame rate."""

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
        self.stream.thread_type = "AUTO"
        self.fps = _frame_rate(self.stream)
        self.frame_count = self.stream.frames or None
        self.has_audio = bool(self._container.streams.audio)
        self.start_seconds = (float(self.stream.start_time * self.stream.time_base)
                              if self.stream.start_time is not None else 0.0)
        self.frames_read = 0

    def __iter__(self):
        try:
            for frame in self._container.decode(self.stream):
                self.frames_read += 1
                yield frame.to_ndarray(format="rgb24")
        except av.FFmpegError as e:
            raise InputError(f"{self.what} {str(self.path)!r} is damaged: decoding failed after "
                             f"{self.frames_read} frame(s) ({_reason(e)})") from None
        if self.frames_read == 0:
            raise InputError(f"{self.what} {str(self.path)!r} holds no video frames (empty or truncated)")

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
    """H.264 (libx264, yuv420p) MP4 at a fixed frame rate, written to a temporary sibling of
    ``path``; :meth:`finish` finalises and moves it into place, :meth:`abort` deletes it."""

    def __init__(self, path: str | os.PathLike, fps: Fraction, width: int, height: int,
                 audio_from: Path | None = None, video_start: float = 0.0, crf: int = 18):
        self.path = Path(path)
        self.fps = Fraction(fps)
        self.size = (width + width % 2, height + height % 2)
        self.frames = 0
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
            self._stream.options = {"crf": str(crf), "preset": "veryfast"}
            self._audio = _open_audio(audio_from, self._container, video_start) if audio_from else None
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise

    @property
    def audio_mode(self) -> str | None:
        return self._audio.mode if self._audio else None

    def write(self, rgb: np.ndarray) -> None:
        height, width = rgb.shape[:2]
        if (width + width % 2, height + height % 2) != self.size:
            raise ValueError(f"frame is {width}x{height}, the video is {self.size[0]}x{self.size[1]}")
        if width % 2 or height % 2:
            rgb = np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        if self._audio:
            self._audio.until((self.frames + 1) / self.fps)
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def finish(self) -> Path:
        """Flush the encoder, write the MP4 index, move the file into place."""
        try:
            self._container.mux(self._stream.encode(None))
            if self._audio:
                self._audio.finish(self.frames / self.fps)
            self._container.close()
            os.replace(self._tmp, self.path)
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


@contextlib.contextmanager
def _interrupt_between_frames():
    """Turn Ctrl-C into a flag that the frame loop checks between frames.

    A KeyboardInterrupt raised wherever the signal happens to land (inside PyAV's or ONNX
    Runtime's callbacks, say) can be swallowed there, and the job then runs to the end; a flag
    stops it at a frame boundary, with every finished frame safely in the encoder. Off the main
    thread signal handlers cannot be set, and a process that ignores SIGINT keeps ignoring it.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is signal.SIG_IGN):  # ours to keep, not to catch
        yield lambda: False
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield lambda: bool(caught)
    finally:
        signal.signal(signal.SIGINT, previous)


def animate_file(animator, avatar, driver: str | os.PathLike, output: str | os.PathLike,
                 max_frames: int | None = None, progress: bool = True) -> WriteResult:
    """Animate ``avatar`` with every frame of the video ``driver`` into the MP4 ``output``."""
    from tqdm import tqdm

    output = check_output_path(output, (".mp4",))
    if max_frames is not None and max_frames < 1:
        raise InputError(f"max_frames must be at least 1, not {max_frames}")
    with VideoReader(driver) as reader:
        total = min(x for x in (reader.frame_count, max_frames) if x) if (reader.frame_count or max_frames) else None
        performance = animator.performance(avatar, fps=float(reader.fps))
        writer = None
        bar = tqdm(total=total, unit="frame", disable=not progress, file=sys.stderr, leave=False)
        try:
            with _interrupt_between_frames() as interrupted:
                for index, frame in enumerate(reader):
                    if interrupted():
                        raise KeyboardInterrupt
                    if max_frames is not None and index >= max_frames:
                        break
                    animated = performance(frame)
                    if writer is None:
                        writer = VideoWriter(output, reader.fps, animated.shape[1], animated.shape[0],
                                             audio_from=reader.path if reader.has_audio else None,
                                             video_start=reader.start_seconds)
                    writer.write(animated)
                    bar.update(1)
        except KeyboardInterrupt:
            bar.close()
            if writer is None or writer.frames == 0:
                if writer is not None:
                    writer.abort()
                raise AnimationInterrupted(0, None) from None
            writer.finish()
            raise AnimationInterrupted(writer.frames, output) from None
        except BaseException:
            bar.close()
            if writer is not None:
                writer.abort()
            raise
        bar.close()
        writer.finish()
        return WriteResult(output, writer.frames, reader.fps, writer.audio_mode)
