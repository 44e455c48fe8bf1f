"""Finding the face, cropping it steadily over time, and pasting the result back.

The networks see a square crop around the head at the bundle's image size. The source is
cropped once; driver frames are cropped by a :class:`FaceTracker` that holds the crop still
while the face only jitters, follows it smoothly when it really moves, and searches near the
last face first (cheap) before scanning the whole frame. The animated crop is pasted back into
the source photo through a feathered ellipse, so no seam shows at the crop's edge.

Any detector can be plugged in: a callable taking an RGB uint8 frame and returning boxes
``(N, 4)`` as ``x, y, w, h`` in that frame's pixels (:class:`FaceDetector`). What it returns
is checked (:func:`detect_faces`): None or an empty array means no face; anything else must be
finite numbers in N rows of 4, with a positive size, overlapping the frame and at most
:data:`MAX_BOX_SCALE` times its size, or it is one :class:`InputError` saying what came back.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from .errors import InputError, NoFaceError
from .haar import HaarCascade


#: a face box may reach past the frame (a head at the edge), but not beyond this many frame sides
MAX_BOX_SCALE = 4.0


def detect_faces(detector, frame: np.ndarray) -> np.ndarray:
    """``detector(frame)`` as checked float64 boxes (N, 4), or an :class:`InputError` saying
    what the detector returned instead."""
    raw = detector(frame)
    if raw is None:
        return np.zeros((0, 4))
    name = getattr(detector, "__name__", type(detector).__name__)
    problem = f"the face detector {name} returned"
    expected = "it must return an (N, 4) array of x, y, w, h in the frame's pixels"
    if isinstance(raw, (str, bytes)):
        raise InputError(f"{problem} a {type(raw).__name__}; {expected}")
    try:
        boxes = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{problem} a {type(raw).__name__} that is not numbers; {expected}") from None
    if boxes.size == 0:
        return np.zeros((0, 4))
    if boxes.ndim == 1 and boxes.shape[0] == 4:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise InputError(f"{problem} an array of shape {boxes.shape}; {expected}")
    if not np.isfinite(boxes).all():
        raise InputError(f"{problem} NaN or infinite coordinates; {expected}")
    height, width = frame.shape[:2]
    x, y, w, h = boxes.T
    if (w <= 0).any() or (h <= 0).any():
        raise InputError(f"{problem} a box without a positive width and height; {expected}")
    limit = MAX_BOX_SCALE * max(height, width)
    misfit = (w > limit) | (h > limit) | (x + w <= 0) | (y + h <= 0) | (x >= width) | (y >= height)
    if misfit.any():
        bad = boxes[int(np.argmax(misfit))]
        raise InputError(f"{problem} the box {tuple(float(v) for v in bad)}, which does not fit the "
                         f"{width}x{height} frame; {expected}")
    return boxes


class FaceDetector(Protocol):
    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """Face boxes (N, 4) as x, y, w, h in pixels of ``rgb`` (H, W, 3 uint8)."""


class HaarFaceDetector:
    """The default detector: OpenCV's frontal-face Haar cascade, run on a copy of the frame
    downscaled to ``max_side`` (faces in portraits and talking-head videos are large).

    ``face_range`` bounds the face side as fractions of the image's shorter side; the tracker's
    search near the last face knows the size to expect, and skipping the other scales halves
    the work."""

    def __init__(self, max_side: int = 256, scale_factor: float = 1.1, min_neighbors: int = 3,
                 face_range: tuple = (0.0, 1.0), cascade: HaarCascade | None = None):
        self.max_side = max_side
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.face_range = face_range
        self._cascade = cascade or HaarCascade()

    def sized(self, face_range: tuple) -> "HaarFaceDetector":
        """The same detector (sharing the parsed cascade) looking only for faces of that size."""
        return HaarFaceDetector(self.max_side, self.scale_factor, self.min_neighbors, face_range, self._cascade)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        scale = min(1.0, self.max_side / max(gray.shape))
        if scale < 1.0:
            gray = cv2.resize(gray, (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale))),
                              interpolation=cv2.INTER_AREA)
        short = min(gray.shape)
        boxes = self._cascade.detect(gray, self.scale_factor, self.min_neighbors,
                                     min_size=int(self.face_range[0] * short),
                                     max_size=int(np.ceil(self.face_range[1] * short)))
        return boxes.astype(np.float64) / scale


@dataclass(frozen=True)
class CropGeometry:
    """How a head crop is framed around a detected face box: ``scale`` times the box's side,
    centred on the box, moved up by ``lift`` box heights to take in the hair."""

    scale: float = 1.8
    lift: float = 0.1

    def around(self, box) -> np.ndarray:
        x, y, w, h = (float(v) for v in box)
        side = self.scale * max(w, h)
        return np.array([x + w / 2, y + h / 2 - self.lift * h, side])


@dataclass(frozen=True)
class CropBox:
    """A square region of a frame in whole pixels; it may reach past the frame's edges."""

    x: int
    y: int
    side: int

    @classmethod
    def from_centre(cls, cx: float, cy: float, side: float) -> "CropBox":
        side = max(2, int(round(side)))
        return cls(int(round(cx - side / 2)), int(round(cy - side / 2)), side)

    @classmethod
    def whole(cls, height: int, width: int) -> "CropBox":
        """The largest centred square inside the frame."""
        side = min(height, width)
        return cls((width - side) // 2, (height - side) // 2, side)


def cut_crop(frame: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """The square ``box`` of ``frame`` resized to ``size``; parts outside the frame repeat its
    edge pixels (a black border would read as a hard edge to the networks)."""
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = box.x, box.y, box.x + box.side, box.y + box.side
    inside = frame[max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)]
    if inside.size == 0:
        raise NoFaceError("the face crop lies entirely outside the frame")
    pad = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
    if any(pad):
        inside = cv2.copyMakeBorder(inside, *pad, cv2.BORDER_REPLICATE)
    interpolation = cv2.INTER_AREA if box.side > size else cv2.INTER_LINEAR
    return cv2.resize(inside, (size, size), interpolation=interpolation)


def feathered_ellipse(side: int, feather: float = 0.08, inset: float = 0.04) -> np.ndarray:
    """A (side, side) mask in [0, 1]: 1 inside an ellipse inscribed in the square, falling off
    smoothly over about ``feather`` of the side and reaching 0 before the square's edge."""
    coords = (np.arange(side, dtype=np.float32) + 0.5) / side * 2.0 - 1.0
    radius = np.sqrt(coords[None, :] ** 2 + coords[:, None] ** 2)
    edge = 1.0 - inset
    width = max(2.0 * feather, 1e-6)
    t = np.clip((edge - radius) / width, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)  # smoothstep: no visible ring


class PasteBack:
    """Pastes animated crops into one fixed frame at one fixed box. Everything that depends
    only on the frame and the box (the clipped region, the mask) is computed once here."""

    def __init__(self, frame: np.ndarray, box: CropBox, feather: float = 0.08):
        h, w = frame.shape[:2]
        self.frame = frame
        self.box = box
        x0, y0 = max(box.x, 0), max(box.y, 0)
        x1, y1 = min(box.x + box.side, w), min(box.y + box.side, h)
        self.region = (slice(y0, y1), slice(x0, x1))
        self.inner = (slice(y0 - box.y, y1 - box.y), slice(x0 - box.x, x1 - box.x))
        mask = feathered_ellipse(box.side, feather)[self.inner]
        self.mask = mask[:, :, None]
        self._background = frame[self.region].astype(np.float32) * (1.0 - self.mask)

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        side = self.box.side
        interpolation = cv2.INTER_CUBIC if side > crop.shape[0] else cv2.INTER_AREA
        resized = cv2.resize(crop, (side, side), interpolation=interpolation)[self.inner]
        out = self.frame.copy()
        # background + crop * mask, rounded: in place, one buffer. The sum of two convex weights of
        # values in 0..255 lies in [0, 255], so + 0.5 and truncation need no clip to stay in uint8
        blended = resized.astype(np.float32)
        np.multiply(blended, self.mask, out=blended)
        np.add(self._background, blended, out=blended)
        blended += np.float32(0.5)
        out[self.region] = blended  # float -> uint8 truncates, as astype does
        return out


def largest(boxes: np.ndarray) -> np.ndarray:
    return boxes[int(np.argmax(boxes[:, 2] * boxes[:, 3]))]


def find_source_face(image: np.ndarray, detector: FaceDetector, geometry: CropGeometry) -> CropBox:
    """The crop around the largest face in the source, or a :class:`NoFaceError`."""
    boxes = detect_faces(detector, image)
    if len(boxes) == 0:
        raise NoFaceError("no face found in the source image; if it is already a cropped "
                          "portrait, use --no-crop (crop=False)")
    return CropBox.from_centre(*geometry.around(largest(boxes)))


class LazyDetector:
    """The detector an animator was given, or a Haar detector made on first use: under a lock, so
    that two threads' first frames do not parse the cascade twice (the Animator and the
    StudentAnimator share it)."""

    def __init__(self, given: FaceDetector | None = None):
        self._detector = given
        self._lock = threading.Lock()

    def get(self) -> FaceDetector:
        with self._lock:
            if self._detector is None:
                self._detector = HaarFaceDetector()
            return self._detector


class FaceTracker:
    """A steady crop for a stream of driver frames.

    The crop is held still while the detected face stays within ``margin`` (a fraction of the
    crop) of where the crop was last aimed and its size within ``size_margin`` (relative; the
    cascade measures sizes in 10% steps); past that it is re-aimed and eases there by
    ``follow`` of the remaining distance per frame. A frame without a face keeps the last crop.
    Detection runs first on a small region around the last face (``search_side`` pixels, with
    ``near_detector``: by default the detector itself, or for the Haar detector one that only
    looks for faces of about the last one's size), and on the whole frame only when the face
    is not there.

    ``redetect_every`` > 1 runs the detector on one frame in that many (and whenever the face is
    lost): on the frames between, the face is followed by matching the last detected face's
    appearance (:class:`FaceFollower`, a normalised cross-correlation on a 32-pixel template,
    well under a millisecond) around its last place. Its size is the last detection's. This is
    what a real-time path uses, where the detector costs more than the network.
    """

    def __init__(self, detector: FaceDetector, geometry: CropGeometry = CropGeometry(),
                 margin: float = 0.06, size_margin: float = 0.15, follow: float = 0.5,
                 search_side: int = 112, centre_fallback: bool = False,
                 near_detector: FaceDetector | None = None, redetect_every: int = 1):
        if not isinstance(redetect_every, int) or redetect_every < 1:
            raise InputError(f"redetect_every must be a whole number of frames, at least 1, not {redetect_every!r}")
        self.detector = detector
        self.near_detector = near_detector or _near_detector(detector)
        self.centre_fallback = centre_fallback
        self.geometry = geometry
        self.margin = margin
        self.size_margin = size_margin
        self.follow = follow
        self.search_side = search_side
        self.redetect_every = redetect_every
        self.reset()

    def reset(self) -> None:
        self._follower = None  # the last detected face's appearance, between detections
        self._since = 0        # frames since the detector last ran
        self._face = None      # last detected box (x, y, w, h)
        self._target = None    # (cx, cy, side) the crop is easing towards
        self._current = None   # (cx, cy, side) of the crop now

    def update(self, frame: np.ndarray) -> CropBox:
        face = self._detect(frame)
        if face is None and self._current is None:
            if not self.centre_fallback:
                raise NoFaceError("no face found in the driver's first frame; if the driver is "
                                  "already cropped to the face, use --no-crop (crop=False)")
            whole = CropBox.whole(*frame.shape[:2])
            self._aim(np.array([whole.x + whole.side / 2, whole.y + whole.side / 2, whole.side], float))
        if face is not None:
            self._face = face
            self._aim(self.geometry.around(face))
        self._current = self._current + self.follow * (self._target - self._current)
        return CropBox.from_centre(*self._current)

    def _aim(self, wanted: np.ndarray) -> None:
        if self._target is None:
            self._target = wanted.copy()
            self._current = wanted.copy()
            return
        shift = np.abs(wanted[:2] - self._target[:2]).max() / self._target[2]
        resize = abs(wanted[2] / self._target[2] - 1.0)
        if shift > self.margin or resize > self.size_margin:
            self._target = wanted

    def _detect(self, frame: np.ndarray):
        if self._follower is not None and self._since < self.redetect_every - 1:
            followed = self._follower.follow(frame, self._face)
            if followed is not None:
                self._since += 1
                return followed
        self._since = 0
        face = self._run_detector(frame)
        if self.redetect_every > 1:
            self._follower = None if face is None else FaceFollower(frame, face)
        return face

    def _run_detector(self, frame: np.ndarray):
        if self._face is not None:
            near = self._detect_near(frame, self._face)
            if near is not None:
                return near
        boxes = detect_faces(self.detector, frame)
        if len(boxes) == 0:
            return None
        if self._face is not None:
            return self._closest(boxes, self._face)
        # measure the first face the way every later one is measured (near search), so the
        # crop's scale does not jump between the first and second frame
        face = largest(boxes)
        refined = self._detect_near(frame, face)
        return face if refined is None else refined

    def _detect_near(self, frame: np.ndarray, face: np.ndarray):
        """Search a square twice the last face's size around it, scaled to ``search_side``."""
        x, y, w, h = face
        side = 2.0 * max(w, h)
        region = CropBox.from_centre(x + w / 2, y + h / 2, side)
        patch = cut_crop(frame, region, self.search_side)
        boxes = detect_faces(self.near_detector, patch)
        if len(boxes) == 0:
            return None
        scale = region.side / self.search_side
        boxes = boxes * scale + np.array([region.x, region.y, 0, 0])
        return self._closest(boxes, face)

    @staticmethod
    def _closest(boxes: np.ndarray, face: np.ndarray) -> np.ndarray:
        x, y, w, h = face
        centres = boxes[:, :2] + boxes[:, 2:] / 2
        distance = np.linalg.norm(centres - np.array([x + w / 2, y + h / 2]), axis=1)
        return boxes[int(np.argmin(distance))]


class FaceFollower:
    """Follows one detected face between detections by its appearance: the face's grey patch,
    scaled to ``template`` pixels, is matched (normalised cross-correlation, so lighting changes
    matter little) over a region twice the face's size around where it last was. A best match
    below ``min_score`` is a lost face: the tracker then runs the detector."""

    def __init__(self, frame: np.ndarray, face: np.ndarray, template: int = 32, min_score: float = 0.6):
        self.template_side = template
        self.min_score = min_score
        x, y, w, h = face
        self.side = max(w, h)
        box = CropBox.from_centre(x + w / 2, y + h / 2, self.side)
        self.template = cv2.cvtColor(cut_crop(frame, box, template), cv2.COLOR_RGB2GRAY)

    def follow(self, frame: np.ndarray, face: np.ndarray):
        """The face box (x, y, w, h) in ``frame``, moved to where the face now is; None when lost."""
        x, y, w, h = face
        region = CropBox.from_centre(x + w / 2, y + h / 2, 2 * self.side)
        scale = region.side / (2 * self.template_side)  # frame pixels per region pixel
        try:
            patch = cv2.cvtColor(cut_crop(frame, region, 2 * self.template_side), cv2.COLOR_RGB2GRAY)
        except NoFaceError:
            return None
        scores = cv2.matchTemplate(patch, self.template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (dx, dy) = cv2.minMaxLoc(scores)
        if not best >= self.min_score:  # also NaN, for a flat patch
            return None
        cx = region.x + (dx + self.template_side / 2) * scale
        cy = region.y + (dy + self.template_side / 2) * scale
        return np.array([cx - w / 2, cy - h / 2, w, h])


def _near_detector(detector: FaceDetector) -> FaceDetector:
    """In the search region (twice the last face) the face spans about half the side; allow
    it to have grown or shrunk by half."""
    if isinstance(detector, HaarFaceDetector):
        return detector.sized((0.3, 0.85))
    return detector
