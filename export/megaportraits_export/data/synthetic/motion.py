"""Smooth motion: a talking head over time (head sway, speech, blinks, smiles, brows, gaze)."""
from __future__ import annotations

import numpy as np

from megaportraits_export.data.synthetic.parameters import Expression, HeadMotion, Pose


def _smooth_noise(rng: np.random.Generator, frames: int, fps: float, timescale_s: float) -> np.ndarray:
    """Zero-mean, unit-deviation noise whose wiggles last about ``timescale_s`` seconds."""
    sigma = max(timescale_s * fps, 0.5)
    radius = int(3 * sigma) + 1
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    white = rng.normal(0.0, 1.0, frames + 2 * radius)
    smooth = np.convolve(white, kernel / kernel.sum(), mode="valid")[:frames]
    return (smooth - smooth.mean()) / (smooth.std() + 1e-8) if frames > 1 else smooth * 0.0


def _speech_mouth(rng: np.random.Generator, frames: int, fps: float) -> np.ndarray:
    """Mouth opening of speech: syllables at about 4 Hz inside phrases separated by pauses."""
    speaking = np.zeros(frames)
    t = 0
    while t < frames:
        phrase = int(rng.uniform(1.0, 3.0) * fps)
        speaking[t:t + phrase] = 1.0
        t += phrase + int(rng.uniform(0.2, 0.9) * fps)
    envelope = np.convolve(speaking, np.ones(max(1, int(0.1 * fps))) / max(1, int(0.1 * fps)), mode="same")
    rate_hz = 4.0 + 1.0 * _smooth_noise(rng, frames, fps, 0.5)
    phase = np.cumsum(2 * np.pi * rate_hz / fps) + rng.uniform(0, 2 * np.pi)
    syllables = 0.5 - 0.5 * np.cos(phase)
    loudness = np.clip(0.6 + 0.25 * _smooth_noise(rng, frames, fps, 0.7), 0.1, 1.0)
    return np.clip(envelope * syllables * loudness, 0.0, 1.0)


def _blinks(rng: np.random.Generator, frames: int, fps: float) -> np.ndarray:
    """Eye closure with blinks every few seconds: ~80 ms closing, ~150 ms opening."""
    closure = np.zeros(frames)
    t = rng.exponential(2.0)
    time_s = np.arange(frames) / fps
    while t < frames / fps:
        closing = np.clip((time_s - t) / 0.08 + 1.0, 0.0, 1.0)
        opening = np.clip(1.0 - (time_s - t) / 0.15, 0.0, 1.0)
        closure = np.maximum(closure, np.where(time_s <= t, closing, opening))
        t += 0.25 + rng.exponential(3.0)
    return closure


def random_motion_track(rng: np.random.Generator, frames: int, fps: float = 25.0) -> list[HeadMotion]:
    """A smooth talking-head performance: head sway, speech, blinks, smiles, brow raises and
    gaze shifts, each a smooth curve of time. Used for demo driving videos and evaluation."""
    def curve(timescale_s, amplitude, centre=0.0):
        return centre + amplitude * _smooth_noise(rng, frames, fps, timescale_s)

    yaw, pitch, roll = curve(1.2, 0.22), curve(1.0, 0.08), curve(1.5, 0.06)
    tx, ty, scale = curve(1.5, 0.025), curve(1.2, 0.02), curve(2.0, 0.025, 1.0)
    mouth = _speech_mouth(rng, frames, fps)
    pitch = pitch + 0.03 * mouth  # nodding slightly along with speech
    eye_closure = np.clip(np.maximum(_blinks(rng, frames, fps), curve(2.0, 0.06, 0.08)), 0.0, 1.0)
    smile = np.clip(curve(2.5, 0.25, 0.25), -0.2, 1.0)
    brows = np.clip(curve(0.8, 0.35, 0.1) + 0.3 * mouth, -0.5, 1.0)
    gaze_x = np.clip(np.round(curve(1.0, 1.2)) * 0.25, -0.8, 0.8)  # saccades: steps ...
    gaze_x = np.convolve(gaze_x, np.ones(3) / 3, mode="same") if frames >= 3 else gaze_x  # ... not jumps
    gaze_y = np.clip(curve(1.5, 0.15), -0.5, 0.5)
    return [
        HeadMotion(
            Pose(scale=float(scale[i]), yaw=float(np.clip(yaw[i], -0.7, 0.7)), pitch=float(pitch[i]),
                 roll=float(roll[i]), tx=float(tx[i]), ty=float(ty[i]), tz=0.0),
            Expression(mouth_open=float(mouth[i]), smile=float(smile[i]), eye_closure=float(eye_closure[i]),
                       brow_raise=float(brows[i]), gaze_x=float(gaze_x[i]), gaze_y=float(gaze_y[i])),
        )
        for i in range(frames)
    ]
