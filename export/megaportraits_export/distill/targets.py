"""Distillation targets: the teacher bundle's cross-driven renderings of each avatar, through the SDK.

The teacher is any bundle the SDK runs (exported, converted or user-trained): an
:class:`megaportraits.Animator` prepares each avatar from its photo (face crop, source graph,
the matte model's backdrop), then every driver crop goes through the bundle's own driver graph
and the generator with the driver's absolute motion, which is what a student reproduces (it sees
only the driver image). Each target pairs the driver crop the student will see with the
teacher's rendering of one avatar: (avatar, frame) -> image [+ matte].

The teacher's base model is distilled, with any enhancer the bundle carries switched off
explicitly (``enhance=False``): the student renders at the base size, and adding an enhancer to a
teacher bundle later changes none of its targets. The teacher's identity as it was when the
targets were rendered (its manifest's sha256, name and preset) is stored with them
(``targets/teacher.json``) and is what the student bundle records, even if the teacher bundle
changes afterwards.

Drivers: the project's synthetic talking heads by default (random identities and motions,
rendered at the teacher's size, already face crops), or the user's videos and image folders,
face-cropped the way the SDK crops a source (largest face, the SDK's crop geometry; the whole
frame when no face is found). Targets are stored as uint8 arrays in the output directory
(``targets/``), written atomically once, so a resumed distillation reuses them.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megaportraits import Animator
from megaportraits import manifest as mf
from megaportraits.animator import run_graph, to_tensor
from megaportraits.errors import NoFaceError
from megaportraits.faces import CropBox, CropGeometry, HaarFaceDetector, cut_crop, find_source_face
from megaportraits.images import as_rgb_image
from megaportraits.bundle import find_bundle
from megaportraits.precision import reference_precision
from megaportraits.schema import DRIVER, DRIVER_IMAGE, EXPRESSION, GENERATOR, IMAGE_OUTPUT, MATTE_OUTPUT, POSE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")


@dataclass
class Targets:
    """drivers (F, S, S, 3) uint8 RGB crops; renderings (A, F, S, S, C) uint8, C = 3 or 4 (matte)."""

    drivers: np.ndarray
    renderings: np.ndarray
    teacher: dict | None = None     # the teacher as it was when these were rendered (TeacherRenderer.record)

    @property
    def has_matte(self) -> bool:
        return self.renderings.shape[-1] == 4


def synthetic_drivers(count: int, size: int, seed: int = 0) -> np.ndarray:
    """``count`` synthetic talking-head frames (random identities and motions) at ``size``."""
    from megaportraits_export.data.synthetic.parameters import HeadMotion, Identity
    from megaportraits_export.data.synthetic.rendering import render

    rng = np.random.default_rng(seed)
    frames = np.empty((count, size, size, 3), np.uint8)
    identities = [Identity.sample(int(s)) for s in rng.integers(0, 10_000, max(1, count // 8))]
    for i in range(count):
        motion = HeadMotion.random(rng)
        frames[i] = render(identities[i % len(identities)], motion.pose, motion.expression, size)
    return frames


def user_drivers(paths: list, count: int, size: int) -> np.ndarray:
    """Up to ``count`` face crops from the given videos and image folders, spread over them."""
    from megaportraits.video import VideoReader

    detector, geometry = HaarFaceDetector(), CropGeometry()
    per_source = max(1, -(-count // len(paths)))
    crops = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            frames = (as_rgb_image(str(p), "driver image") for p in files[:per_source])
        else:
            reader = VideoReader(path)
            frames = (frame for _, frame in zip(range(per_source), reader))
        for frame in frames:
            try:
                box = find_source_face(frame, detector, geometry)
            except NoFaceError:
                box = CropBox.whole(*frame.shape[:2])
            crops.append(cut_crop(frame, box, size))
    if not crops:
        raise NoFaceError(f"no driver frame could be read from {', '.join(map(str, paths))}")
    return np.stack(crops[:count])


class TeacherRenderer:
    """The teacher bundle in the SDK: avatars from photos, renderings from driver crops."""

    def __init__(self, teacher: str | os.PathLike, threads: int = 0):
        # paste_back off: frames come back as crops; background "generated": the raw rendering
        # enhance=False: the base model's output is distilled (see the module docstring)
        # precision: the teacher as exported (fp32 where carried), not the int8 flavour auto would take
        self.animator = Animator(teacher, threads=threads, paste_back=False, background="generated",
                                 face_fallback="centre", enhance=False,
                                 precision=reference_precision(mf.load_manifest(find_bundle(teacher))))
        self.image_size = self.animator.image_size
        self.has_matte = self.animator.has_matte
        self.manifest = self.animator.bundle.manifest
        directory = self.animator.bundle.directory
        #: the teacher as loaded now: what a student distilled from these renderings records
        self.record = {"manifest_sha256": mf.sha256_file(Path(directory) / mf.MANIFEST_NAME),
                       "model_name": self.manifest.model_name, "preset": self.manifest.preset}

    def avatar(self, image):
        """The SDK's Avatar of a photo (face crop, source graph); its backdrop for a matte teacher."""
        avatar = self.animator.prepare(image)
        backdrop = None
        if self.has_matte:
            crop = cut_crop(avatar.image, avatar.crop, self.image_size)
            backdrop = self.animator.render_backdrop(crop, avatar.canonical_volume, avatar.global_descriptor,
                                                     avatar.motion, avatar.generator_inputs)
        return avatar, backdrop

    def render(self, avatar, drivers: np.ndarray) -> np.ndarray:
        """(F, S, S, 3) uint8 driver crops -> (F, S, S, C) uint8 renderings with absolute motion."""
        sessions, specs = self.animator.bundle.sessions, self.animator.output_specs
        batch = np.concatenate([to_tensor(d) for d in drivers]).astype(np.float32)
        pose, expression = run_graph(sessions[DRIVER], DRIVER, [POSE, EXPRESSION], {DRIVER_IMAGE: batch}, specs[DRIVER])
        n = len(drivers)
        names = [IMAGE_OUTPUT] + ([MATTE_OUTPUT] if self.has_matte else [])
        feeds = {"canonical_volume": np.repeat(avatar.canonical_volume.astype(np.float32), n, axis=0),
                 "global_descriptor": np.repeat(avatar.global_descriptor.astype(np.float32), n, axis=0),
                 POSE: pose.astype(np.float32), EXPRESSION: expression.astype(np.float32),
                 **{name: np.repeat(value, n, axis=0) for name, value in avatar.generator_inputs.items()}}
        outputs = run_graph(sessions[GENERATOR], GENERATOR, names, feeds, specs[GENERATOR])
        rendering = np.concatenate([o.astype(np.float32) for o in outputs], axis=1)
        return np.clip(rendering.transpose(0, 2, 3, 1) * 255 + 0.5, 0, 255).astype(np.uint8)


def build_targets(renderer: TeacherRenderer, avatars: list, drivers: np.ndarray, directory: Path,
                  chunk: int = 16) -> Targets:
    """Render every avatar over every driver crop (progress on stderr), or load them from ``directory``."""
    directory = Path(directory)
    driver_file, rendering_file = directory / "drivers.npy", directory / "renderings.npy"
    teacher_file = directory / "teacher.json"
    if driver_file.is_file() and rendering_file.is_file():
        recorded = json.loads(teacher_file.read_text()) if teacher_file.is_file() else renderer.record
        targets = Targets(np.load(driver_file), np.load(rendering_file), recorded)
        if targets.renderings.shape[:2] == (len(avatars), len(drivers)):
            if recorded["manifest_sha256"] != renderer.record["manifest_sha256"]:
                print(f"distill: the teacher's manifest changed since these targets were rendered; the student "
                      f"records the one they came from ({recorded['manifest_sha256'][:12]})",
                      file=sys.stderr, flush=True)
            return targets
    channels = 4 if renderer.has_matte else 3
    renderings = np.empty((len(avatars), len(drivers), renderer.image_size, renderer.image_size, channels), np.uint8)
    total = len(avatars) * len(drivers)
    for a, avatar in enumerate(avatars):
        for start in range(0, len(drivers), chunk):
            renderings[a, start:start + chunk] = renderer.render(avatar, drivers[start:start + chunk])
            done = a * len(drivers) + min(start + chunk, len(drivers))
            print(f"distill: teacher targets {done}/{total}", file=sys.stderr, flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    _save_atomically(driver_file, drivers)
    _save_atomically(rendering_file, renderings)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".teacher.json.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(renderer.record, f, indent=2)
    os.replace(tmp, teacher_file)
    return Targets(drivers, renderings, renderer.record)


def _save_atomically(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)
