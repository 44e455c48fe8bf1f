"""Crop talking-head clips to the face, consistently over each clip.

    python -m megaportraits_export preprocess INPUT OUTPUT [--size 256] [--box clip|track]
        [--format frames|mp4] [--detector haar|centre] [--detect-every 5] [--smooth 5]

INPUT holds clips in the layouts of :mod:`megaportraits_export.data.video_dataset`
(``id/video/clip.mp4`` or ``id/video/clip/*.png|jpg``); OUTPUT receives the same tree with every
clip cropped to ``size`` x ``size``, as frames (``id/video/clip/00000.png``...) or H.264 MP4.

Why consistent crops: the model learns head motion from pairs of frames of one clip; a crop that
jitters from frame to frame adds motion that is not in the video. So faces are detected (every
``--detect-every`` frames, with the SDK's Haar detector and crop framing,
:mod:`megaportraits.faces`), then either

- ``--box clip`` (default): ONE square for the whole clip, centred on the median face position
  and large enough for the head's movement: the background is perfectly still, as in the
  paper's data; or
- ``--box track``: a per-frame square, gaps between detections interpolated and the track
  smoothed with a Gaussian of ``--smooth`` frames: for clips where the head travels far.

The boxes used are written to OUTPUT/crops.jsonl (one line per clip) so a crop can be traced.
Clips where no face is found are skipped and listed.
"""
from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from megaportraits.faces import CropBox, CropGeometry, HaarFaceDetector, cut_crop
from megaportraits.video import VideoReader, VideoWriter
from megaportraits_export import command
from megaportraits_export.data.video_dataset import Clip, find_clips

DEFAULT_FPS = Fraction(25)


def iter_frames(clip: Clip) -> Iterator[np.ndarray]:
    """RGB uint8 frames of ``clip`` one by one (clips can be too long to hold in memory)."""
    if clip.is_video_file:
        with VideoReader(clip.path, what="clip") as reader:
            yield from reader
        return
    for path in clip.frames:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read image {path}")
        yield cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def clip_fps(clip: Clip) -> Fraction:
    if not clip.is_video_file:
        return DEFAULT_FPS
    with VideoReader(clip.path, what="clip") as reader:
        return reader.fps


def centred_face(rgb: np.ndarray, geometry: CropGeometry = CropGeometry()) -> np.ndarray:
    """``--detector centre``: for footage already centred on the face, a face box whose crop
    (framed by ``geometry``) is the largest centred square of the frame."""
    height, width = rgb.shape[:2]
    side = min(height, width) / geometry.scale
    return np.array([[(width - side) / 2, (height - side) / 2 + geometry.lift * side, side, side]])


def largest(boxes: np.ndarray) -> np.ndarray:
    return boxes[int(np.argmax(boxes[:, 2] * boxes[:, 3]))]


def detect_crops(clip: Clip, detector, geometry: CropGeometry, every: int) -> tuple[np.ndarray, int]:
    """Crop squares ``(T, 3)`` as (centre x, centre y, side), NaN where no detection ran or
    found a face; and T. The face followed is the largest at first, then the nearest."""
    crops, previous = [], None
    for index, frame in enumerate(iter_frames(clip)):
        crop = np.full(3, np.nan)
        if index % every == 0:
            boxes = np.asarray(detector(frame), dtype=np.float64).reshape(-1, 4)
            if len(boxes):
                if previous is None:
                    face = largest(boxes)
                else:
                    centres = boxes[:, :2] + boxes[:, 2:] / 2
                    face = boxes[int(np.argmin(np.linalg.norm(centres - previous, axis=1)))]
                previous = face[:2] + face[2:] / 2
                crop = geometry.around(face)
        crops.append(crop)
    return np.array(crops).reshape(-1, 3), len(crops)


def clip_box(crops: np.ndarray) -> np.ndarray:
    """One (cx, cy, side) for the clip: the median centre, and a side that holds the crop at
    90% of the detected positions (the median crop side plus twice the 90th-percentile offset
    of the centre from the median)."""
    valid = crops[~np.isnan(crops).any(axis=1)]
    centre = np.median(valid[:, :2], axis=0)
    reach = np.percentile(np.abs(valid[:, :2] - centre).max(axis=1), 90)
    side = np.percentile(valid[:, 2], 90) + 2 * reach
    return np.array([centre[0], centre[1], side])


def smoothed_track(crops: np.ndarray, sigma: float) -> np.ndarray:
    """(T, 3) per-frame crops: detections interpolated over the gaps (held at the ends), then
    smoothed with a Gaussian of ``sigma`` frames (reflected at the ends)."""
    frames = np.arange(len(crops))
    valid = ~np.isnan(crops).any(axis=1)
    track = np.stack([np.interp(frames, frames[valid], crops[valid, k]) for k in range(3)], axis=1)
    if sigma <= 0 or len(track) < 2:
        return track
    radius = int(3 * sigma) + 1
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(track, ((radius, radius), (0, 0)), mode="reflect" if len(track) > radius else "edge")
    return np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(3)], axis=1)


class _FrameWriter:
    def __init__(self, destination: Path, fmt: str, image_format: str, fps: Fraction, size: int):
        self.destination, self.fmt, self.image_format, self.count = destination, fmt, image_format, 0
        if fmt == "mp4":
            destination.parent.mkdir(parents=True, exist_ok=True)
            self.video = VideoWriter(destination.with_suffix(".mp4"), fps, size, size)
        else:
            destination.mkdir(parents=True, exist_ok=True)

    def write(self, rgb: np.ndarray) -> None:
        if self.fmt == "mp4":
            self.video.write(rgb)
        else:
            path = self.destination / f"{self.count:05d}.{self.image_format}"
            if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
                raise OSError(f"cannot write {path}")
        self.count += 1

    def finish(self) -> None:
        if self.fmt == "mp4":
            self.video.finish()


@dataclass
class ClipCropper:
    """The settings of one run; calling it crops one clip and returns its crops.jsonl record
    (None when no face is found). Picklable, so ``--workers`` can hand it to processes; each
    process builds its own detector on first use."""

    output: Path
    size: int = 256
    box_mode: str = "clip"
    fmt: str = "frames"
    image_format: str = "png"
    detector_name: str = "haar"
    geometry: CropGeometry = CropGeometry()
    every: int = 5
    sigma: float = 5.0
    _detector: object = field(default=None, repr=False)

    def detector(self):
        if self._detector is None:
            self._detector = (HaarFaceDetector() if self.detector_name == "haar"
                              else functools.partial(centred_face, geometry=self.geometry))
        return self._detector

    def __call__(self, clip: Clip) -> dict | None:
        crops, frames = detect_crops(clip, self.detector(), self.geometry, self.every)
        if np.isnan(crops).any(axis=1).all():
            return None
        if self.box_mode == "clip":
            boxes = np.repeat(clip_box(crops)[None], frames, axis=0)
        else:
            boxes = smoothed_track(crops, self.sigma)
        destination = self.output / clip.identity / clip.video / clip.name
        writer = _FrameWriter(destination, self.fmt, self.image_format, clip_fps(clip), self.size)
        for frame, (cx, cy, side) in zip(iter_frames(clip), boxes):
            writer.write(cut_crop(frame, CropBox.from_centre(cx, cy, side), self.size))
        writer.finish()
        record = {"clip": clip.key, "frames": frames, "size": self.size, "mode": self.box_mode}
        if self.box_mode == "clip":
            record["box"] = [round(float(v), 2) for v in boxes[0]]
        else:
            record["boxes"] = [[round(float(v), 2) for v in row] for row in boxes]
        return record


@contextlib.contextmanager
def _pool(workers: int):
    if workers == 1:
        yield None
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield pool


def build_parser() -> command.Parser:
    parser = command.parser("preprocess", "Crop talking-head clips to the face, consistently over each clip.")
    parser.add_argument("input", type=Path, help="root with id/video/clip.mp4 or id/video/clip/*.png|jpg")
    parser.add_argument("output", type=Path, help="root to write the cropped clips to (same layout)")
    parser.add_argument("--size", type=int, default=256, help="side of the square crops in pixels (256)")
    parser.add_argument("--box", choices=("clip", "track"), default="clip",
                        help="one box per clip (default) or a smoothed per-frame track")
    parser.add_argument("--format", choices=("frames", "mp4"), default="frames", help="output as frames or H.264 MP4")
    parser.add_argument("--image-format", choices=("png", "jpg"), default="png", help="frame file type (png)")
    parser.add_argument("--detector", choices=("haar", "centre"), default="haar",
                        help="'haar': the SDK's face detector; 'centre': the clip is already centred on the face")
    parser.add_argument("--detect-every", type=int, default=5, help="run the detector on every N-th frame (5)")
    parser.add_argument("--smooth", type=float, default=5.0, help="--box track: Gaussian smoothing in frames (5)")
    parser.add_argument("--scale", type=float, default=CropGeometry.scale, help="crop side / face box side (1.8)")
    parser.add_argument("--lift", type=float, default=CropGeometry.lift, help="crop moved up by this many face heights (0.1)")
    parser.add_argument("--workers", type=int, default=1, help="clips cropped in parallel processes (1)")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.size < 8 or args.detect_every < 1 or args.workers < 1:
        parser.error("--size must be at least 8, --detect-every and --workers at least 1")
    return command.run(_preprocess, args)


def _preprocess(args) -> int:
    if not args.input.is_dir():
        raise command.CommandError(f"input {args.input} is not a directory; give the root of the clips")
    clips = find_clips(args.input)
    if not clips:
        raise command.CommandError(f"no clips under {args.input} (expected id/video/clip.mp4 or "
                                   "id/video/clip/*.png|jpg)")
    cropper = ClipCropper(args.output, args.size, args.box, args.format, args.image_format, args.detector,
                          CropGeometry(scale=args.scale, lift=args.lift), args.detect_every, args.smooth)
    args.output.mkdir(parents=True, exist_ok=True)
    skipped = []
    with open(args.output / "crops.jsonl", "w") as log, _pool(args.workers) as pool:
        records = pool.imap(cropper, clips) if pool else map(cropper, clips)
        for number, (clip, record) in enumerate(zip(clips, records), 1):
            if record is None:
                skipped.append(clip.key)
                print(f"[{number}/{len(clips)}] {clip.key}: no face found, skipped", file=sys.stderr)
                continue
            log.write(json.dumps(record) + "\n")
            print(f"[{number}/{len(clips)}] {clip.key}: {record['frames']} frames", file=sys.stderr)
    done = len(clips) - len(skipped)
    print(f"cropped {done} of {len(clips)} clips to {args.output}"
          + (f"; no face in {len(skipped)}: {', '.join(skipped)}" if skipped else ""))
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
