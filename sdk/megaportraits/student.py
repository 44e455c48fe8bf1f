"""Animating the avatars of a distilled student bundle: per frame only face crop -> student -> paste-back.

A student bundle (``python -m megaportraits_export distill``) holds one ``student`` graph and its
avatars: each avatar's source photo, where its face crop lies in the photo and, for a matte
student, the backdrop its frames are composited onto. Nothing runs per avatar: the avatar is an
index into the student's own tensors. Per frame the driver's face is tracked and cropped, the
student renders the avatar with that crop's motion, and the result is composited and pasted back
into the avatar's photo.

A student reproduces the driver's *absolute* motion: it sees only the driver image, so there is
no source pose and expression for a relative motion to start from. Asking for relative motion is
an error that says so. ``Animator(student_bundle)`` returns a :class:`StudentAnimator`, so the
same code drives either kind of bundle; its avatars are prepared by name.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .animator import AnimatorOptions, _rgb_frame, run_graph, to_image, to_tensor
from .bundle import open_bundle
from .compositing import composite
from .errors import InputError, MegaportraitsError
from .faces import CropBox, CropGeometry, FaceTracker, LazyDetector, PasteBack, cut_crop
from .images import as_rgb_image, check_size, load_image
from .schema import AVATAR_INDEX, DRIVER_IMAGE, IMAGE_OUTPUT, MATTE_OUTPUT, STUDENT, STUDENT_ROLES

#: the driver's face is detected on one frame in this many and followed by its appearance between
#: (faces.FaceFollower): the detector costs several times the student's whole frame otherwise
REDETECT_EVERY = 8

#: the student of the bundled demo model, distilled for the demo portrait (``megaportraits demo --student``)
DEMO_STUDENT = Path(__file__).resolve().parent / "assets" / "demo_student"

ABSOLUTE_ONLY = ("a student bundle reproduces the driver's absolute motion (it sees only the driver image, so "
                 "there is no source motion to be relative to); use absolute motion (--absolute, motion='absolute')")


@dataclass(frozen=True, eq=False)
class StudentAvatar:
    """One of the bundle's avatars: its index in the student, photo, crop and backdrop."""

    name: str
    index: int
    image: np.ndarray              # the avatar's photo, RGB uint8
    crop: CropBox                  # where the face crop sits in ``image``
    paste: PasteBack | None        # None when results are returned as crops
    backdrop: np.ndarray | None    # (3, S, S) float32 for matte students compositing onto it
    source_path: Path | None = None  # no source file outside the bundle: nothing to protect


class StudentAnimator:
    """Loads a student bundle and animates its avatars by name (see the module docstring)."""

    def __init__(self, bundle, options=None, **overrides):
        if overrides.get("motion") == "relative" or (options is not None and options.motion == "relative"
                                                     and "motion" not in overrides and _explicit(options)):
            raise MegaportraitsError(ABSOLUTE_ONLY)
        options = dataclasses.replace(options or AnimatorOptions(), **{**overrides, "motion": "absolute"}).validate()
        self.options = options
        self.bundle = open_bundle(bundle, provider=options.provider, threads=options.threads,
                                  portable=options.portable, roles=STUDENT_ROLES, precision=options.precision)
        manifest = self.bundle.manifest
        if not manifest.is_student:
            raise MegaportraitsError(f"{bundle} is not a student bundle; use megaportraits.Animator")
        self.image_size = manifest.image_size
        self.has_matte = manifest.has_matte
        self.composites = self.has_matte and options.background == "source"
        self.avatar_names = manifest.avatar_names()
        self.output_specs = {STUDENT: {t.name: t for t in manifest.graphs[STUDENT].outputs}}
        self._outputs = [IMAGE_OUTPUT] + ([MATTE_OUTPUT] if self.has_matte else [])
        self._geometry = CropGeometry(scale=options.crop_scale)
        self._detector = LazyDetector(options.detector)

    def __enter__(self) -> "StudentAnimator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.bundle.sessions.clear()

    @property
    def detector(self):
        return self._detector.get()

    def prepare(self, name, source_path=None) -> StudentAvatar:
        """The avatar called ``name``; an unknown name is an :class:`InputError` listing the bundle's."""
        if not isinstance(name, str) or name not in self.avatar_names:
            shown = name if isinstance(name, str) else type(name).__name__
            raise InputError(f"this student bundle has no avatar {shown[:60]!r}; its avatars are "
                             f"{', '.join(self.avatar_names)}")
        index = self.avatar_names.index(name)
        entry = self.bundle.manifest.student["avatars"][index]
        image = load_image(self.bundle.directory / entry["image"], f"avatar {name!r} image")
        box = CropBox(*entry["crop"])
        backdrop = None
        if self.composites and entry.get("backdrop"):
            plate = load_image(self.bundle.directory / entry["backdrop"], f"avatar {name!r} backdrop")
            backdrop = np.ascontiguousarray(plate.transpose(2, 0, 1), dtype=np.float32) / 255.0
        paste = PasteBack(image, box) if self.options.paste_back else None
        return StudentAvatar(name, index, image, box, paste, backdrop)

    def performance(self, avatar: StudentAvatar, fps: float = 30.0) -> "StudentPerformance":
        if (isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps)
                or not 0 < fps <= 1000):
            raise InputError(f"fps must be a positive frame rate of at most 1000, not {fps!r}")
        if not isinstance(avatar, StudentAvatar):
            raise InputError(f"expected an avatar from StudentAnimator.prepare(name), not {type(avatar).__name__}")
        return StudentPerformance(self, avatar)

    def stream(self, avatar: StudentAvatar, frames, fps: float = 30.0):
        performance = self.performance(avatar, fps)
        for frame in frames:
            yield performance(frame)

    def animate_frame(self, avatar: StudentAvatar, driver_frame, reference_frame=None) -> np.ndarray:
        return self.performance(avatar)(as_rgb_image(driver_frame, "driver image"))

    def animate_video(self, avatar: StudentAvatar, driver, output, max_frames=None, progress: bool = True):
        from .video import animate_file

        return animate_file(self, avatar, driver, output, max_frames=max_frames, progress=progress)


class StudentPerformance:
    """One stream: the driver's face tracker, the reused input buffers, the avatar's index."""

    def __init__(self, animator: StudentAnimator, avatar: StudentAvatar):
        self.animator, self.avatar = animator, avatar
        size = animator.image_size
        options = animator.options
        self._tracker = (FaceTracker(animator.detector, animator._geometry, redetect_every=REDETECT_EVERY,
                                     centre_fallback=options.face_fallback == "centre") if options.crop else None)
        self._input = np.empty((1, 3, size, size), np.float32)
        self._index = np.array([avatar.index], dtype=np.int64)
        self._frame = np.empty((1, 3, size, size), np.float32) if animator.composites else None
        self._session = animator.bundle.sessions[STUDENT]

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        frame = _rgb_frame(frame)
        check_size(frame.shape[1], frame.shape[0], "driver frame")
        box = self._tracker.update(frame) if self._tracker is not None else CropBox.whole(*frame.shape[:2])
        to_tensor(cut_crop(frame, box, self.animator.image_size), out=self._input)
        outputs = run_graph(self._session, STUDENT, self.animator._outputs,
                            {DRIVER_IMAGE: self._input, AVATAR_INDEX: self._index},
                            self.animator.output_specs[STUDENT])
        image = outputs[0]
        if self.animator.composites and self.avatar.backdrop is not None:
            image = composite(image, outputs[1], self.avatar.backdrop, out=self._frame)
        rgb = to_image(image)
        return self.avatar.paste(rgb) if self.avatar.paste is not None else rgb


def _explicit(options) -> bool:
    """An options object whose motion is not the dataclass default was chosen on purpose."""
    default = type(options)().motion
    return options.motion != default


def is_student_bundle(directory) -> bool:
    """True when ``directory`` holds a readable student bundle's manifest."""
    from . import manifest as mf

    try:
        return mf.load_manifest(directory).is_student
    except MegaportraitsError:
        return False
    except OSError:
        return False
