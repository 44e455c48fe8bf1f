"""Generated test media: videos with and without audio, in several containers and codecs."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_video(path, frames, fps=25, codec="libx264", audio: str | None = None,
                audio_rate: int = 16000, pix_fmt="yuv420p", options: dict | None = None) -> Path:
    """Encode RGB uint8 frames; optionally add a 440 Hz tone with the given audio codec."""
    path = Path(path)
    frames = list(frames)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", options=options or {}) as out:
        vs = out.add_stream(codec, rate=Fraction(fps))
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        a_stream = None
        if audio:
            a_stream = out.add_stream(audio, rate=audio_rate)
            a_stream.layout = "mono"
        n_samples = int(round(len(frames) / fps * audio_rate))
        tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n_samples) / audio_rate)).astype(np.float32)
        for i, rgb in enumerate(frames):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.pts = i
            out.mux(vs.encode(f))
        out.mux(vs.encode(None))
        if a_stream is not None:
            fmt = a_stream.codec_context.format.name
            chunk = 1024
            for start in range(0, n_samples, chunk):
                piece = tone[start:start + chunk]
                if fmt.startswith("s16"):
                    data = (piece * 32767).astype(np.int16)[None]
                    af = av.AudioFrame.from_ndarray(data, format="s16" if fmt == "s16" else "s16p", layout="mono")
                else:
                    af = av.AudioFrame.from_ndarray(piece[None], format="fltp", layout="mono")
                af.sample_rate = audio_rate
                af.pts = start
                out.mux(a_stream.encode(af))
            out.mux(a_stream.encode(None))
    return path


def probe(path) -> dict:
    """Streams, frame count and size of a file, by decoding it completely."""
    with av.open(str(path)) as c:
        info = {"video": None, "audio": None}
        if c.streams.video:
            vs = c.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(vs)]
            info["video"] = {"codec": vs.codec_context.name, "frames": len(frames), "pix_fmt": vs.codec_context.pix_fmt,
                             "width": vs.codec_context.width, "height": vs.codec_context.height,
                             "fps": vs.average_rate, "last": frames[-1] if frames else None}
    with av.open(str(path)) as c:
        if c.streams.audio:
            a = c.streams.audio[0]
            samples = sum(f.samples for f in c.decode(a))
            info["audio"] = {"codec": a.codec_context.name, "seconds": samples / a.codec_context.sample_rate}
    return info
