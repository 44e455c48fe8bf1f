"""Reenactors: what turns a source, a driver and a reference frame into the image a user sees,
through a checkpoint in PyTorch or through an exported bundle run by the SDK."""
from __future__ import annotations

import math

import numpy as np
import torch

from megaportraits.animator import BACKGROUNDS  # the SDK's choices: the evaluation scores what it shows
from megaportraits_export.evaluation.pairs import PairSet


# ---- reenactment through a checkpoint (PyTorch) ------------------------------------------------
def _homogeneous(pose: torch.Tensor) -> torch.Tensor:
    bottom = torch.zeros(pose.shape[0], 1, 4, dtype=pose.dtype, device=pose.device)
    bottom[:, 0, 3] = 1.0
    return torch.cat((pose, bottom), dim=1)


def relative_motion(source_motion, driver_motion, reference_motion) -> tuple:
    """theta = theta_d theta_d0^-1 theta_s, z = z_s + (z_d - z_d0) (docs/design.md, "Data flow")."""
    from megaportraits_export.warp import invert_pose

    pose = (_homogeneous(driver_motion[0]) @ _homogeneous(invert_pose(reference_motion[0]))
            @ _homogeneous(source_motion[0]))[:, :3]
    expression = source_motion[1] + (driver_motion[1] - reference_motion[1])
    return pose, expression


class CheckpointReenactor:
    """A PyTorch model from a checkpoint, reenacting batches of already-cropped frames.

    A matte model's renderings are composited over the source's inpainted backdrop with the
    SDK's own compositing code (``background="source"``, what the SDK shows), or returned raw
    (``"generated"``)."""

    def __init__(self, model: torch.nn.Module, batch_size: int = 8, background: str = "source"):
        self.model = model.eval()
        self.batch_size = batch_size
        self.image_size = model.config.image_size
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, not {background!r}")
        self.background = background

    @torch.no_grad()
    def reenact(self, source: torch.Tensor, driver: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        outputs = []
        for i in range(0, source.shape[0], self.batch_size):
            part = slice(i, i + self.batch_size)
            avatar = self.model.source_branch(source[part])
            motion = tuple(self.model.driver_branch(driver[part]))
            if reference is not None:
                base = tuple(self.model.driver_branch(reference[part]))
                motion = relative_motion((avatar.pose, avatar.expression), motion, base)
            rendering = self.model.generator(avatar.canonical_volume, avatar.global_descriptor, *motion,
                                             *avatar.source_pixels)
            outputs.append(self.shown_image(rendering, self.backdrop_plates(avatar, source[part])))
        return torch.cat(outputs).clamp(0.0, 1.0)

    def backdrop_plates(self, avatar, source: torch.Tensor) -> np.ndarray | None:
        """The sources' inpainted backdrops (N, 3, S, S), once per batch of avatars; None when
        nothing is composited (no matte, or ``background="generated"``)."""
        from megaportraits.compositing import background_plate

        from megaportraits_export.model import split_matte

        if not self.model.config.matte or self.background == "generated":
            return None
        # the backdrop is cut out with the matte of the source re-rendered with its own motion,
        # as the SDK does when it prepares an avatar
        own = self.model.generator(avatar.canonical_volume, avatar.global_descriptor, avatar.pose, avatar.expression,
                                   *avatar.source_pixels)
        source_matte = split_matte(own)[1].numpy()
        return np.stack([background_plate(s.numpy(), m) for s, m in zip(source, source_matte)])

    @staticmethod
    def shown_image(rendering: torch.Tensor, plates: np.ndarray | None) -> torch.Tensor:
        """The image a user sees: the rendering, composited over ``plates`` (from
        :meth:`backdrop_plates`) for a matte model."""
        from megaportraits.compositing import composite

        from megaportraits_export.model import split_matte

        image, matte = split_matte(rendering)
        if plates is None:
            return image
        return torch.from_numpy(composite(image.numpy(), matte.numpy(), plates))

    @torch.no_grad()
    def pose_errors(self, pairs: PairSet) -> dict:
        """Mean absolute error of the head-pose regressor on the held-out frames."""
        images = torch.cat((pairs.source, pairs.self_driver, pairs.cross_driver))
        truth = torch.cat((pairs.source_pose, pairs.driver_pose, pairs.driver_pose)).double()
        scale, rotation, translation = (t.double() for t in
                                        self.model.driver_branch.head_pose.pose_parameters(images))
        degrees = (rotation - truth[:, 1:4]).abs().mean(0) * 180.0 / math.pi
        return {"yaw_deg": float(degrees[0]), "pitch_deg": float(degrees[1]), "roll_deg": float(degrees[2]),
                "translation": float((translation - truth[:, 4:7]).abs().mean()),
                "scale_relative": float(((scale.mean(1) - truth[:, 0]).abs() / truth[:, 0]).mean())}


# ---- reenactment through a bundle (the SDK) -------------------------------------------------------
class BundleReenactor:
    """An exported bundle run by ``megaportraits.Animator`` on already-cropped frames
    (``crop=False``, ``paste_back=False``), one pair at a time as a user would.

    The base model is scored at its own size: a bundle's enhancer stays off here
    (``evaluate-enhancer`` scores it), else its frames would be the enhancer's twice-larger ones."""

    def __init__(self, bundle: str, provider: str = "cpu", background: str = "source"):
        import megaportraits
        from megaportraits import manifest as mf
        from megaportraits.bundle import find_bundle
        from megaportraits.precision import reference_precision

        self.bundle = bundle
        self.provider = provider
        precision = reference_precision(mf.load_manifest(find_bundle(bundle)))  # as exported, not auto's int8 flavour
        self.animators = {mode: megaportraits.Animator(bundle, provider=provider, motion=mode, crop=False,
                                                       paste_back=False, background=background,
                                                       precision=precision, enhance=False)
                          for mode in ("relative", "absolute")}
        self.image_size = self.animators["relative"].image_size

    def reenact(self, source: torch.Tensor, driver: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        animator = self.animators["absolute" if reference is None else "relative"]
        outputs = []
        for n in range(source.shape[0]):
            avatar = animator.prepare(to_uint8(source[n]))
            frame = animator.animate_frame(avatar, to_uint8(driver[n]),
                                           reference_frame=None if reference is None else to_uint8(reference[n]))
            outputs.append(torch.from_numpy(frame.astype(np.float32) / 255.0).permute(2, 0, 1))
        return torch.stack(outputs)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) RGB uint8, as an image file would hold it."""
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
