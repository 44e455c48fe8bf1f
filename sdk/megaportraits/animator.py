"""The Animator: prepare an avatar from a source photo once, then animate it frame by frame.

    animator = Animator("bundle_dir", provider="cpu")
    avatar = animator.prepare("me.jpg")              # runs the SOURCE graph once
    for frame in animator.stream(avatar, webcam):    # DRIVER + GENERATOR per frame
        show(frame)
    animator.animate_video(avatar, "driver.mp4", "out.mp4")

Per frame, nothing depends on the avatar but its cached tensors. On a GPU the avatar's canonical
volume and descriptor are placed on the device once and the stream's graphs are bound once
(IOBinding, :mod:`megaportraits.binding`): a frame is uploaded once, the generator's image feeds
the enhancer on the device, and the frame comes back once; on the CPU a plain run already reads
everything in place (``io_binding`` then defaults to off; on, it is bit-equal). The driver's
input buffer is reused, and the paste-back mask and region are computed once per avatar.

A bundle with an ``enhancer`` graph renders at the enhancer's size (``model.enhanced_size``, e.g.
512 -> 1024) unless ``enhance=False``: the generator's frame (and matte) goes through the
enhancer, and the backdrop, the composite and the paste-back work at the high size.

A bundle whose generator also outputs a ``matte`` renders only the person; with
``background="source"`` (the default) each frame is composited onto the source's own backdrop,
inpainted where the person was (:mod:`megaportraits.compositing`), made once per avatar.

Every graph output is checked against the bundle's manifest (shape, dtype, finiteness) before
it is used, so a broken or tampered graph is one error naming the graph and the output, never
a numpy traceback or a garbage video (:func:`check_outputs`).

Threads: one Animator may serve several threads at once, each with its own avatars and
:class:`Performance` streams (ONNX Runtime sessions run concurrently; the face detector keeps
no shared scratch state). One :class:`Performance` is one stream's state: use it from one
thread at a time (it refuses a second caller with a clear error rather than mixing frames).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnxruntime as ort

from .binding import BoundFrames
from .binding import device_state as device_state_of
from .bundle import Bundle, open_bundle, open_role
from .compositing import background_plate, composite
from .errors import InputError, MegaportraitsError, NoFaceError
from .files import check_output_path
from .faces import (CropBox, CropGeometry, FaceDetector, FaceTracker, LazyDetector, PasteBack,
                    cut_crop, find_source_face)
from .images import OUTPUT_IMAGE_EXTENSIONS, as_rgb_image, check_size, save_image, to_rgb8
from . import motion_liveportrait
from .motion import MOTION_MODES, Motion, MotionSmoother, RelativeMotion
from .precision import check_precision_choice
from .providers import device_of
from .schema import LIVEPORTRAIT
from .schema import AVATAR, AVATAR_GENERATOR_INPUTS, BASE_IMAGE, BASE_MATTE, ENHANCER, MOTION, SOURCE_IMAGE

FACE_FALLBACKS = ("error", "centre")
MAX_THREADS = 1024  # ONNX Runtime intra-op threads: more is a typo, not a machine
BACKGROUNDS = ("source", "generated")
_ORT_FLOATS = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class AnimatorOptions:
    """How an :class:`Animator` runs. Every field has a sensible default."""

    provider: str = "auto"            # auto | cpu | cuda
    threads: int = 0                  # ONNX Runtime intra-op threads; 0: its default
    portable: bool = False            # force the standard-op graphs even if the op library loads
    motion: str = "relative"          # relative | absolute
    smooth: bool = False              # One-Euro filter on pose and expression
    smooth_min_cutoff: float = 1.0    # Hz; lower: smoother at rest
    smooth_beta: float = 0.3          # higher: less lag on fast moves
    crop: bool = True                 # find and crop the face (False: input is already cropped)
    paste_back: bool = True           # paste the animated crop back into the source photo
    face_fallback: str = "error"      # error | centre: what to do when no face is found at all
    crop_scale: float = 1.8           # crop side / detected face side
    detector: FaceDetector | None = None  # default: the bundled Haar cascade
    io_binding: bool | None = None    # bind the avatar's tensors to the device once per stream;
                                      # None: only on a GPU (on the CPU plain run is as fast)
    background: str = "source"        # source | generated: for a model with a matte, composite the
                                      # person onto the source's inpainted backdrop, or keep the
                                      # generator's image as it is (models without a matte: always)
    enhance: bool = True              # run the bundle's enhancer when it has one (frames at its size);
                                      # False: frames at the base model's size
    precision: str = "auto"           # auto | fp32 | fp16 | int8: which of the bundle's graph flavours
                                      # run (auto: the fastest the provider runs well; megaportraits.precision)

    def validate(self) -> "AnimatorOptions":
        if (isinstance(self.threads, bool) or not isinstance(self.threads, numbers.Integral)
                or not 0 <= self.threads <= MAX_THREADS):
            raise MegaportraitsError(f"threads must be a whole number from 0 (ONNX Runtime's choice) to "
                                     f"{MAX_THREADS}, not {self.threads!r}")
        if self.motion not in MOTION_MODES:
            raise MegaportraitsError(f"motion must be one of {', '.join(MOTION_MODES)}, not {self.motion!r}")
        if self.face_fallback not in FACE_FALLBACKS:
            raise MegaportraitsError(f"face_fallback must be one of {', '.join(FACE_FALLBACKS)}, "
                                     f"not {self.face_fallback!r}")
        check_precision_choice(self.precision)
        if self.background not in BACKGROUNDS:
            raise MegaportraitsError(f"background must be one of {', '.join(BACKGROUNDS)}, not {self.background!r}")
        if not (isinstance(self.crop_scale, numbers.Real) and math.isfinite(self.crop_scale)
                and self.crop_scale > 0):
            raise MegaportraitsError(f"crop_scale must be positive, not {self.crop_scale!r}")
        if not all(isinstance(v, numbers.Real) and math.isfinite(v)
                   for v in (self.smooth_min_cutoff, self.smooth_beta)) \
                or not (self.smooth_min_cutoff > 0 and self.smooth_beta >= 0):
            raise MegaportraitsError("smoothing needs smooth_min_cutoff > 0 and smooth_beta >= 0")
        return self


@dataclass(frozen=True, eq=False)
class Avatar:
    """One prepared source: the SOURCE graph's outputs plus how to paste results back.

    Hold as many as you like; each costs its canonical volume (C x D x H x W floats)."""

    canonical_volume: np.ndarray   # (1, C, D, H, W)
    global_descriptor: np.ndarray  # (1, Cd, h, w)
    motion: Motion                 # the source's own pose and expression
    image: np.ndarray              # the full source photo, RGB uint8
    crop: CropBox                  # where the face crop sits in ``image``
    paste: PasteBack | None        # None when results are returned as crops
    device_state: dict             # OrtValues of the volume and descriptor on the session device
    backdrop: np.ndarray | None = None  # (3, S, S) float32: the source crop without the person,
                                        # for matte models with background="source"; else None
    source_path: Path | None = None     # the file it was read from, which no output may overwrite
    # the generator's inputs from the avatar beyond the volume and descriptor, name -> array, for
    # a bundle whose generator declares them (schema.AVATAR_GENERATOR_INPUTS: the source crop and
    # the source's own pose and expression, for a model with the source-pixel path); empty for
    # every other bundle
    generator_inputs: dict = field(default_factory=dict)


class Animator:
    """Loads a bundle and animates avatars with it. Use as a context manager or call close().

    The default bundle is the demo model, trained only on this project's synthetic rendered
    heads (``self.bundle.manifest.trained_on_synthetic_data`` is True): it animates those well
    and a real photo roughly (a blurry face). For real portraits use a real model: convert
    official weights (``python -m megaportraits_export convert``) or train on real talking-head
    video (``configs/paper512_voxceleb2.toml``), and pass its bundle directory."""

    def __new__(cls, bundle: str | Path | None = None, options: AnimatorOptions | None = None, **overrides):
        """A distilled student's bundle gives a :class:`megaportraits.student.StudentAnimator`
        (same calls; avatars prepared by name, absolute motion only)."""
        if cls is Animator and bundle is not None:
            from .student import StudentAnimator, is_student_bundle

            if is_student_bundle(bundle):
                return StudentAnimator(bundle, options, **overrides)
        return super().__new__(cls)

    def __init__(self, bundle: str | Path | None = None, options: AnimatorOptions | None = None, **overrides):
        options = dataclasses.replace(options or AnimatorOptions(), **overrides).validate()
        self.options = options
        self.bundle: Bundle = open_bundle(bundle, provider=options.provider, threads=options.threads,
                                          portable=options.portable, precision=options.precision)
        self.image_size = self.bundle.image_size
        #: the bundle's enhancer runs on every frame (it has one and enhance is on)
        self.enhances = bool(options.enhance) and ENHANCER in self.bundle.manifest.graphs
        if self.enhances:
            open_role(self.bundle, ENHANCER, options.threads)
        #: the side of the crops the Animator renders: the enhancer's output when it runs
        self.output_size = self.bundle.manifest.enhanced_size if self.enhances else self.image_size
        self._device = device_of(self.bundle.providers)
        self._io_binding = options.io_binding if options.io_binding is not None else self._device != "cpu"
        self._detector = LazyDetector(options.detector)
        #: the model family (megaportraits.schema.FAMILIES): how motion goes from driver to generator
        self.family = self.bundle.manifest.family
        self._geometry = _crop_geometry(self.bundle.manifest.crop("source")) or CropGeometry(scale=options.crop_scale)
        self._driver_geometry = _crop_geometry(self.bundle.manifest.crop("driver")) or self._geometry
        self.input_dtypes = {role: {i.name: _ORT_FLOATS.get(i.type, np.float32) for i in session.get_inputs()}
                             for role, session in self.bundle.sessions.items()}
        #: the generator renders a matte too (see megaportraits.compositing)
        self.has_matte = self.bundle.manifest.has_matte
        #: role -> output name -> TensorSpec, what every graph output is checked against
        self.output_specs = {role: {t.name: t for t in graph.outputs}
                             for role, graph in self.bundle.manifest.graphs.items()}
        self.composites = self.has_matte and options.background == "source"

    @classmethod
    def create_from_options(cls, bundle: str | Path | None, options: AnimatorOptions) -> "Animator":
        return cls(bundle, options)

    def __enter__(self) -> "Animator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.bundle.sessions.clear()

    # ---- avatars -------------------------------------------------------------------------
    def prepare(self, source_image, source_path: str | os.PathLike | None = None) -> Avatar:
        """Run the SOURCE graph once on a photo (path or RGB/RGBA/gray array) -> Avatar. For a
        matte model with background="source" the generator also runs once, for the backdrop.
        ``source_path`` (default: ``source_image`` when it is a path) is remembered so that no
        output of this avatar may overwrite it.

        Raises InputError for unreadable images and NoFaceError when no face is found."""
        if source_path is None and isinstance(source_image, (str, os.PathLike)):
            source_path = source_image
        image = as_rgb_image(source_image, "source image")
        box = self._source_crop(image)
        crop = cut_crop(image, box, self.image_size)
        source_input = to_tensor(crop).astype(self.input_dtypes["source"]["source_image"], copy=False)
        if self.family == LIVEPORTRAIT:  # implicit keypoints: megaportraits.motion_liveportrait
            state = motion_liveportrait.read_source(
                lambda names, feeds: run_graph(self._session("source"), "source", names, feeds,
                                               self.output_specs["source"]), source_input)
            return Avatar(state.feature_volume, None, state, image, box,
                          PasteBack(image, box) if self.options.paste_back else None, {}, None,
                          Path(source_path) if source_path is not None else None)
        generator = self.input_dtypes["generator"]  # an fp16 bundle keeps its volume in fp16
        # what the generator reads from the avatar beyond AVATAR: name -> the source tensor it is
        extra = {name: AVATAR_GENERATOR_INPUTS[name] for name in generator if name in AVATAR_GENERATOR_INPUTS}
        names = list(AVATAR + MOTION) + [t for t in dict.fromkeys(extra.values()) if t not in AVATAR + MOTION + (SOURCE_IMAGE,)]
        outputs = run_graph(self._session("source"), "source", names, {SOURCE_IMAGE: source_input},
                            self.output_specs["source"])
        volume, descriptor, pose, expression = outputs[:4]
        source_tensors = {SOURCE_IMAGE: source_input, **dict(zip(names, outputs))}
        volume = np.ascontiguousarray(volume, dtype=generator["canonical_volume"])
        descriptor = np.ascontiguousarray(descriptor, dtype=generator["global_descriptor"])
        pose, expression = (np.ascontiguousarray(x, dtype=np.float32) for x in (pose, expression))
        # the avatar's own tensors (its own pose, not a frame's motion), copied once
        generator_inputs = {name: np.array(source_tensors[origin], dtype=generator[name], copy=True)
                            for name, origin in extra.items()}
        paste = PasteBack(image, box) if self.options.paste_back else None
        device_state = (device_state_of(volume, descriptor, self._device, generator_inputs)
                        if self._io_binding else {})
        motion = Motion(pose, expression)
        if self.enhances:  # the backdrop is cut at the size frames are composited at
            crop = cut_crop(image, box, self.output_size)
        backdrop = (self.render_backdrop(crop, volume, descriptor, motion, generator_inputs)
                    if self.composites else None)
        return Avatar(volume, descriptor, motion, image, box, paste, device_state, backdrop,
                      Path(source_path) if source_path is not None else None, generator_inputs)

    def render_backdrop(self, crop: np.ndarray, volume: np.ndarray, descriptor: np.ndarray, motion: Motion,
                        generator_inputs: dict | None = None) -> np.ndarray:
        """The source crop without the person. The person is cut out along the model's own matte
        of the source (re-rendered with the source's motion), so plate and frames agree on it.
        ``generator_inputs``: the avatar's other generator inputs (:attr:`Avatar.generator_inputs`)."""
        generator = self.input_dtypes["generator"]
        image, matte = run_graph(self._session("generator"), "generator", ["image", "matte"], {
            **(generator_inputs or {}),
            "canonical_volume": volume, "global_descriptor": descriptor,
            "pose": motion.pose.astype(generator["pose"], copy=False),
            "expression": motion.expression.astype(generator["expression"], copy=False)},
            self.output_specs["generator"])
        if self.enhances:
            image, matte = self.enhance([image, matte], ["image", "matte"])
        return background_plate(to_tensor(crop)[0], matte[0].astype(np.float32, copy=False))

    def enhance(self, rendering: list, outputs: list) -> list:
        """The enhancer on the generator's ``[image]`` or ``[image, matte]`` (base size) ->
        ``outputs`` (``image``, and ``matte`` if asked) at the high size."""
        dtypes = self.input_dtypes[ENHANCER]
        feeds = {BASE_IMAGE: rendering[0].astype(dtypes[BASE_IMAGE], copy=False)}
        if BASE_MATTE in dtypes:
            feeds[BASE_MATTE] = rendering[1].astype(dtypes[BASE_MATTE], copy=False)
        return run_graph(self._session(ENHANCER), ENHANCER, outputs, feeds, self.output_specs[ENHANCER])

    def _source_crop(self, image: np.ndarray) -> CropBox:
        if not self.options.crop:
            return CropBox.whole(*image.shape[:2])
        try:
            return find_source_face(image, self.detector, self._geometry)
        except NoFaceError:
            if self.options.face_fallback != "centre":
                raise
            return CropBox.whole(*image.shape[:2])

    @property
    def detector(self) -> FaceDetector:
        return self._detector.get()

    # ---- animating -----------------------------------------------------------------------
    def performance(self, avatar: Avatar, fps: float = 30.0) -> "Performance":
        """A stateful driver for one stream of frames (first-frame reference, crop tracker,
        smoother). Call it with each RGB frame; it returns the animated RGB frame. ``fps``
        (the frames' rate, for smoothing) must be a positive, finite number."""
        if (isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps)
                or not 0 < fps <= 1000):
            raise InputError(f"fps must be a positive frame rate of at most 1000, not {fps!r}")
        if not isinstance(avatar, Avatar):
            raise InputError(f"expected an Avatar from Animator.prepare(), not {type(avatar).__name__}")
        return Performance(self, avatar, float(fps))

    def stream(self, avatar: Avatar, frames: Iterable[np.ndarray], fps: float = 30.0) -> Iterator[np.ndarray]:
        """Animate an iterable of RGB frames lazily, one in, one out, in constant memory."""
        performance = self.performance(avatar, fps)
        for frame in frames:
            yield performance(frame)

    def animate_frame(self, avatar: Avatar, driver_frame, reference_frame=None) -> np.ndarray:
        """One frame. In relative mode the motion is taken relative to ``reference_frame``
        (default: the frame itself, which reproduces the source's pose and expression)."""
        performance = self.performance(avatar)
        if reference_frame is not None and self.options.motion == "relative":
            performance.set_reference(as_rgb_image(reference_frame, "reference frame"))
        return performance(as_rgb_image(driver_frame, "driver image"))

    def animate_video(self, avatar: Avatar, driver: str | Path, output: str | Path,
                      max_frames: int | None = None, progress: bool = True):
        """Animate a whole driver video into an H.264 MP4 at the driver's frame rate, keeping
        its audio. Returns a :class:`megaportraits.video.WriteResult`."""
        from .video import animate_file
        return animate_file(self, avatar, driver, output, max_frames=max_frames, progress=progress)

    def save_frame(self, avatar: Avatar, driver_frame, output: str | os.PathLike,
                   reference_frame=None) -> Path:
        """:meth:`animate_frame`, written to an image file through the shared output guard
        (the output may be neither ``driver_frame``, when it is a path, nor the avatar's source)."""
        inputs = {"source image": avatar.source_path,
                  "driver image": driver_frame if isinstance(driver_frame, (str, os.PathLike)) else None}
        check_output_path(output, OUTPUT_IMAGE_EXTENSIONS, inputs)
        return save_image(output, self.animate_frame(avatar, driver_frame, reference_frame), inputs)

    def _session(self, role: str) -> ort.InferenceSession:
        try:
            return self.bundle.sessions[role]
        except KeyError:
            raise MegaportraitsError("this Animator is closed") from None


class Performance:
    """One avatar driven by one stream of frames; see :meth:`Animator.performance`."""

    def __init__(self, animator: Animator, avatar: Avatar, fps: float = 30.0):
        options = animator.options
        self.animator = animator
        self.avatar = avatar
        size = animator.image_size
        self._driver = animator._session("driver")
        self._generator = animator._session("generator")
        self._driver_input = np.zeros((1, 3, size, size), animator.input_dtypes["driver"]["driver_image"])
        generator_inputs = animator.input_dtypes["generator"]
        self._motion_dtypes = (generator_inputs.get("pose"), generator_inputs.get("expression"))
        self._keypoints = None  # the keypoint family's composer (relative/absolute, smoothing)
        if animator.family == LIVEPORTRAIT:
            self._keypoints = motion_liveportrait.KeypointComposer(
                avatar.motion.motion, options.motion, options.smooth, fps, options.smooth_min_cutoff, options.smooth_beta)
        self._tracker = None
        if options.crop:
            self._tracker = FaceTracker(animator.detector, animator._driver_geometry,
                                        centre_fallback=options.face_fallback == "centre")
        self._smoother = (MotionSmoother(fps, options.smooth_min_cutoff, options.smooth_beta)
                          if options.smooth and self._keypoints is None else None)
        self._relative = None
        self._composites = animator.composites
        self._enhances = animator.enhances
        # what the frame needs: the matte to composite, and a matte model's enhancer reads it too
        self._enhanced_outputs = ["image", "matte"] if self._composites else ["image"]
        self._outputs = ["image", "matte"] if self._composites or (self._enhances and animator.has_matte) else ["image"]
        if self._composites:
            if avatar.backdrop is None or avatar.backdrop.shape[-1] != animator.output_size:
                raise MegaportraitsError("this avatar has no backdrop to composite onto at this size; prepare it "
                                         "with this Animator (background 'source')")
            out = animator.output_size
            self._frame = np.empty((1, 3, out, out), np.float32)  # the composited frame, reused
        self._busy = threading.Lock()
        self._binding = None  # megaportraits.binding: the avatar on the device, frames in and out once
        if animator._io_binding and self._keypoints is None:
            state = avatar.device_state or device_state_of(  # an avatar prepared without binding
                avatar.canonical_volume, avatar.global_descriptor, animator._device, avatar.generator_inputs)
            self._binding = BoundFrames(animator.bundle.sessions, animator._device, state, self._driver_input,
                                        animator.output_specs, enhance=self._enhances)

    def set_reference(self, frame: np.ndarray) -> None:
        """Use ``frame`` as the driver's neutral first frame for relative motion."""
        if self._keypoints is not None:
            self._keypoints.set_reference(self._driver_keypoints(frame))
            return
        self._relative = RelativeMotion(self.avatar.motion, self._driver_motion(frame))

    def _specs(self, role: str) -> dict:
        return self.animator.output_specs[role]

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if not self._busy.acquire(blocking=False):
            raise MegaportraitsError("this Performance is already animating a frame in another thread; "
                                     "give each thread its own (Animator.performance or stream)")
        try:
            return self._animate(frame)
        finally:
            self._busy.release()

    def _animate(self, frame: np.ndarray) -> np.ndarray:
        if self._keypoints is not None:
            return self._animate_keypoints(frame)
        motion = self._driver_motion(frame)
        if self._smoother is not None:
            motion = self._smoother(motion)
        if self.animator.options.motion == "relative":
            if self._relative is None:
                self._relative = RelativeMotion(self.avatar.motion, motion)
            motion = self._relative(motion)
        crop = to_image(self._generate(motion))
        return self.avatar.paste(crop) if self.avatar.paste is not None else crop

    animate = __call__

    def _animate_keypoints(self, frame: np.ndarray) -> np.ndarray:
        """The keypoint family's frame: driver motion -> driving keypoints -> generator."""
        driving = self._keypoints(self._driver_keypoints(frame))
        (image,) = run_graph(self._generator, "generator", ["image"],
                             motion_liveportrait.generator_feeds(self.avatar.motion, driving), self._specs("generator"))
        crop = to_image(image)
        return self.avatar.paste(crop) if self.avatar.paste is not None else crop

    def _driver_keypoints(self, frame: np.ndarray):
        self._driver_tensor(frame)
        return motion_liveportrait.read_driver(
            lambda names, feeds: run_graph(self._driver, "driver", names, feeds, self._specs("driver")),
            self._driver_input)

    def _driver_tensor(self, frame: np.ndarray) -> np.ndarray:
        """The driver frame's face crop, into the reused driver input buffer."""
        frame = _rgb_frame(frame)
        check_size(frame.shape[1], frame.shape[0], "driver frame")
        box = self._tracker.update(frame) if self._tracker is not None else CropBox.whole(*frame.shape[:2])
        crop = cut_crop(frame, box, self.animator.image_size)
        return to_tensor(crop, out=self._driver_input)

    def _driver_motion(self, frame: np.ndarray) -> Motion:
        self._driver_tensor(frame)
        if self._binding is not None:
            pose, expression = self._binding.motion(["pose", "expression"])
        else:
            pose, expression = run_graph(self._driver, "driver", ["pose", "expression"],
                                         {"driver_image": self._driver_input}, self._specs("driver"))
        return Motion(pose.astype(np.float32, copy=False), expression.astype(np.float32, copy=False))

    def _generate(self, motion: Motion) -> np.ndarray:
        """The generator's frame (1, 3, S, S), composited onto the avatar's backdrop for a
        matte model with background="source"."""
        if self._binding is not None:
            motion = self._motion_for_generator(motion)
            outputs = self._binding.render(motion.pose, motion.expression, self._outputs,
                                           self._enhanced_outputs if self._enhances else [])
        else:
            outputs = self._run_generator(motion)
            if self._enhances:
                outputs = self.animator.enhance(outputs, self._enhanced_outputs)
        if not self._composites:
            return outputs[0]
        image, matte = outputs
        return composite(image, matte, self.avatar.backdrop, out=self._frame)

    def _motion_for_generator(self, motion: Motion) -> Motion:
        return Motion(motion.pose.astype(self._motion_dtypes[0], copy=False),
                      motion.expression.astype(self._motion_dtypes[1], copy=False))

    def _run_generator(self, motion: Motion) -> list:
        motion = self._motion_for_generator(motion)
        return run_graph(self._generator, "generator", self._outputs, {
            **self.avatar.generator_inputs,
            "canonical_volume": self.avatar.canonical_volume,
            "global_descriptor": self.avatar.global_descriptor,
            "pose": motion.pose, "expression": motion.expression}, self._specs("generator"))


def _crop_geometry(crop) -> CropGeometry | None:
    """A manifest's crop (side = scale x face, centre moved by vy_ratio x side, +y down) as the
    SDK's framing around a detected face box (side = scale x box, lifted by ``lift`` box heights)."""
    return None if crop is None else CropGeometry(scale=crop.scale, lift=-crop.vy_ratio * crop.scale)


def run_graph(session, role: str, outputs: list, feeds: dict, specs: dict | None = None) -> list:
    """``session.run``, with ONNX Runtime's failures (a graph that loads but cannot run on this
    provider, say) turned into one-line errors, and each output checked against ``specs``
    (name -> the manifest's TensorSpec) when given."""
    try:
        values = session.run(outputs, feeds)
    except Exception as e:
        raise _graph_failed(role, e) from None
    if specs is None:
        return values
    batch = next(iter(feeds.values())).shape[0]
    return check_outputs(role, outputs, values, specs, batch)


def check_outputs(role: str, names: list, values: list, specs: dict, batch: int = 1) -> list:
    """Each output has the manifest's rank, fixed dims (and the batch on its ``batch`` axis),
    dtype, and only finite values; else one :class:`MegaportraitsError` naming the graph and
    the output."""
    for name, value in zip(names, values):
        spec = specs.get(name)
        if spec is None:
            continue
        where = f"the {role!r} graph's output {name!r}"
        if not isinstance(value, np.ndarray):
            raise MegaportraitsError(f"{where} is a {type(value).__name__}, not a tensor; the bundle is broken")
        # fixed dims must match, the "batch" axis is the feeds' batch, other named axes are free
        expected = tuple(batch if d == "batch" else d for d in spec.shape)
        if value.ndim != len(expected) or any(isinstance(e, int) and e != v for e, v in zip(expected, value.shape)):
            raise MegaportraitsError(f"{where} has shape {value.shape}, the manifest says {expected}; "
                                     "the bundle is broken or was exported for another SDK")
        if value.dtype != np.dtype(spec.dtype):
            raise MegaportraitsError(f"{where} is {value.dtype}, the manifest says {spec.dtype}; the bundle is broken")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise MegaportraitsError(f"{where} holds NaN or infinite values (a broken model, or an input "
                                     "it cannot handle)")
    return values


def _graph_failed(role: str, error: Exception) -> MegaportraitsError:
    text = " ".join(str(error).split())[:300]
    return MegaportraitsError(f"running the {role!r} graph failed in ONNX Runtime: {text}")


def _rgb_frame(frame) -> np.ndarray:
    """The fast path for what video readers give (H, W, 3 uint8); anything else is converted."""
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    return to_rgb8(frame, "driver frame")


def to_tensor(crop: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 (S, S, 3) -> float32 (1, 3, S, S) in [0, 1], into ``out`` when given."""
    if out is None:
        out = np.empty((1, 3) + crop.shape[:2], np.float32)
    np.multiply(crop.transpose(2, 0, 1)[None], np.float32(1.0 / 255.0), out=out, casting="unsafe")
    return out


def to_image(tensor: np.ndarray) -> np.ndarray:
    """float (1, 3, S, S) in [0, 1] -> RGB uint8 (S, S, 3)."""
    image = np.clip(tensor[0].transpose(1, 2, 0).astype(np.float32) * 255.0 + 0.5, 0.0, 255.0)
    return image.astype(np.uint8)
