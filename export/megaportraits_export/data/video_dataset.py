"""Training pairs from real talking-head videos.

Layouts understood under a root directory (VoxCeleb2's, and the one preprocessing writes):

- ``root/<identity>/<video>/<clip>.mp4`` (any container FFmpeg reads: .mp4 .avi .mov .mkv .webm)
- ``root/<identity>/<video>/<clip>/*.png|jpg`` (frames, sorted by name)

An item, as in the paper: two frames of one clip (``source`` and ``driver``), and a second pair
from a clip of another identity (``source2``, ``driver2``) for the cycle loss. Frames should
already be face crops at the training size (``python -m megaportraits_export preprocess``);
anything else is centre-cropped to a square and resized, which is only right for crops.
Items are reproducible: item ``index`` draws its frames from a generator seeded by
``(seed, index)``.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from megaportraits.video import VideoReader

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass(frozen=True)
class Clip:
    """One clip: a video file, or a folder of frames (``frames`` lists them in order)."""

    identity: str
    video: str
    name: str
    path: Path
    frames: tuple[Path, ...] = ()

    @property
    def is_video_file(self) -> bool:
        return not self.frames

    @property
    def key(self) -> str:
        return f"{self.identity}/{self.video}/{self.name}"


def _subdirectories(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_clips(root: str | os.PathLike) -> list[Clip]:
    """Every clip under ``root`` in either layout, sorted by identity, video, clip."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a directory")
    clips = []
    for identity in _subdirectories(root):
        for video in _subdirectories(identity):
            for entry in sorted(video.iterdir()):
                if entry.is_file() and entry.suffix.lower() in VIDEO_EXTENSIONS:
                    clips.append(Clip(identity.name, video.name, entry.stem, entry))
                elif entry.is_dir():
                    frames = tuple(sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS))
                    if frames:
                        clips.append(Clip(identity.name, video.name, entry.name, entry, frames))
    return clips


def count_frames(clip: Clip) -> int:
    if not clip.is_video_file:
        return len(clip.frames)
    with VideoReader(clip.path, what="clip") as reader:
        if reader.frame_count:
            return int(reader.frame_count)
        return sum(1 for _ in reader)


def read_frames(clip: Clip, indices) -> list[np.ndarray]:
    """Frames ``indices`` of ``clip`` as RGB uint8 arrays, in the order asked."""
    indices = [int(i) for i in indices]
    if not clip.is_video_file:
        frames = []
        for index in indices:
            image = cv2.imread(str(clip.frames[index]), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"cannot read image {clip.frames[index]}")
            frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        return frames
    wanted, found = set(indices), {}
    with VideoReader(clip.path, what="clip") as reader:
        for position, frame in enumerate(reader):
            if position in wanted:
                found[position] = frame
            if len(found) == len(wanted):
                break
    missing = wanted - found.keys()
    if missing:
        raise ValueError(f"clip {clip.path} has no frame {min(missing)} (it has {len(found)} of those asked)")
    return [found[i] for i in indices]


def square_resize(frame: np.ndarray, size: int) -> np.ndarray:
    """Centre square of ``frame`` resized to ``size`` (a no-op for crops already at ``size``)."""
    height, width = frame.shape[:2]
    side = min(height, width)
    if (height, width) != (side, side):
        top, left = (height - side) // 2, (width - side) // 2
        frame = frame[top:top + side, left:left + side]
    if side != size:
        interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
        frame = cv2.resize(frame, (size, size), interpolation=interpolation)
    return frame


def to_tensor(frame: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frame.transpose(2, 0, 1))).float().div_(255.0)


class TalkingHeadVideos(torch.utils.data.Dataset):
    """Pairs of frames from real clips; the same item keys as ``SyntheticTalkingHeads`` (minus
    the pose/expression ground truth): ``source``, ``driver``, ``driver_input``, ``source2``,
    ``driver2``, ``driver2_input`` (3, size, size) float32 in [0, 1], and ``identity``/
    ``identity2`` (indices into :attr:`identities`).

    ``augmentation``: a callable like :class:`~megaportraits_export.data.augment.PairAugmentation`;
    without it ``driver_input`` is ``driver``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int = 256,
        seed: int = 0,
        length: int | None = None,
        augmentation=None,
    ):
        clips = find_clips(root)
        if not clips:
            raise ValueError(f"no clips under {root}: expected {root}/<identity>/<video>/<clip>.mp4 "
                             f"or {root}/<identity>/<video>/<clip>/*.png|jpg")
        self.identities = sorted({clip.identity for clip in clips})
        if len(self.identities) < 2:
            raise ValueError(f"{root} holds one identity ({self.identities[0]}); the cross pair of "
                             "the cycle loss needs clips of at least two")
        self.clips = clips
        self.size = size
        self.seed = seed
        self.length = length if length is not None else len(clips)
        self.augmentation = augmentation
        self._frame_counts: dict[Path, int] = {}
        self._clips_by_identity = {name: [c for c in clips if c.identity == name] for name in self.identities}

    def __len__(self) -> int:
        return self.length

    def frame_count(self, clip: Clip) -> int:
        if clip.path not in self._frame_counts:
            self._frame_counts[clip.path] = count_frames(clip)
        return self._frame_counts[clip.path]

    def _pair(self, clip: Clip, rng: np.random.Generator, first: str, second: str) -> dict:
        frames = self.frame_count(clip)
        if frames < 2:
            raise ValueError(f"clip {clip.path} has {frames} frame(s); a pair needs 2")
        indices = rng.choice(frames, size=2, replace=False)
        source, driver = (to_tensor(square_resize(f, self.size)) for f in read_frames(clip, indices))
        driver_input = driver
        if self.augmentation is not None:
            source, driver, driver_input, _ = self.augmentation(source, driver, rng)
        return {first: source, second: driver, f"{second}_input": driver_input}

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        rng = np.random.default_rng([self.seed, index])
        clip = self.clips[index % len(self.clips)]
        others = [name for name in self.identities if name != clip.identity]
        other_identity = others[int(rng.integers(len(others)))]
        candidates = self._clips_by_identity[other_identity]
        other_clip = candidates[int(rng.integers(len(candidates)))]
        item = self._pair(clip, rng, "source", "driver")
        item.update(self._pair(other_clip, rng, "source2", "driver2"))
        item["identity"] = torch.tensor(self.identities.index(clip.identity))
        item["identity2"] = torch.tensor(self.identities.index(other_identity))
        return item
