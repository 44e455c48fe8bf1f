"""Synthetic talking heads: a procedural 3-D head drawn with OpenCV, needing no download.

Why: real talking-head data (VoxCeleb2) cannot be fetched here, and even where it can, it has no
ground truth for cross-reenactment (person A with the motion of person B never happened). This
renderer gives both, for as many identities as wanted, deterministically by seed:

- an :class:`Identity` (skin, face shape, hair colour and style, eyes, brows, lips, ears, glasses,
  clothing, background) drawn from ``Identity.sample(seed)``;
- a :class:`Pose` (scale, yaw, pitch, roll, translation) and an :class:`Expression` (mouth
  opening, smile, eye closure, brow raise, gaze) that the renderer obeys exactly, so they are the
  ground truth for a head-pose regressor and for evaluation;
- ``render(identity, pose, expression, size)`` -> ``(size, size, 3)`` uint8 RGB.

The head is a real 3-D model: an ellipsoid skull, a jaw, ears, a hair cap and features lying on
the skull's surface, a nose that sticks out of it. Every point is rotated, scaled, translated and
projected with a mild perspective camera, so yaw and pitch produce parallax (the nose tip moves
more than the face outline), foreshortening and occlusion (features facing away are not drawn;
near/far parts are drawn back to front). Drawing uses anti-aliased filled polygons at twice the
output size, then an area downsample.

Coordinates (shared with the model's normalised volume coordinates): x to the right, y down, z
away from the camera, the image spanning [-1, 1] in x and y. A head-frame point ``P`` lands at
``X = scale * HEAD_UNIT * R(yaw, pitch, roll) @ P + (tx, ty, tz)`` before projection, with
``R = Ry(yaw) @ Rx(pitch) @ Rz(roll)`` built from the standard right-handed axis rotations
(:func:`rotation_matrix`). So positive yaw turns the face toward image left, positive pitch tilts
the face down, positive roll turns the top of the head toward image right.

The model's pose theta goes the other way, camera -> canonical (``warp.pose_matrix``:
``theta X = s * R_roll R_pitch R_yaw (X + t)``). Taking the canonical frame to be the camera frame
of the frontal, centred, unit-scale head, theta is the inverse of the transform above (up to the
mild perspective), and its parameters are :meth:`Pose.model_parameters`: ``(1 / scale, -yaw,
-pitch, -roll, -tx, -ty, -tz)``. The datasets' ``*_pose_params`` are these.

Held-out identities: training uses identity seeds below :data:`EVAL_IDENTITY_SEED_OFFSET`,
evaluation uses seeds at or above it, so evaluation never sees a training identity.

Modules: :mod:`.parameters` (identity, pose, expression), :mod:`.geometry` (the head model),
:mod:`.camera` (projection and drawing primitives), :mod:`.rendering` (``render``),
:mod:`.motion` (motion tracks), :mod:`.dataset` (the torch dataset).
"""
from megaportraits_export.data.synthetic.camera import CAMERA_DISTANCE, HEAD_UNIT
from megaportraits_export.data.synthetic.dataset import SyntheticTalkingHeads, identity_seeds
from megaportraits_export.data.synthetic.motion import random_motion_track
from megaportraits_export.data.synthetic.parameters import (
    BACKGROUND_TEXTURES,
    EVAL_IDENTITY_SEED_OFFSET,
    EXPRESSION_PARAMETER_NAMES,
    HAIR_STYLES,
    POSE_PARAMETER_NAMES,
    Colour,
    Expression,
    HeadMotion,
    Identity,
    Pose,
    rotation_matrix,
)
from megaportraits_export.data.synthetic.rendering import cross_reenactment_ground_truth, render, render_clip

__all__ = [
    "BACKGROUND_TEXTURES",
    "CAMERA_DISTANCE",
    "EVAL_IDENTITY_SEED_OFFSET",
    "EXPRESSION_PARAMETER_NAMES",
    "HAIR_STYLES",
    "HEAD_UNIT",
    "POSE_PARAMETER_NAMES",
    "Colour",
    "Expression",
    "HeadMotion",
    "Identity",
    "Pose",
    "SyntheticTalkingHeads",
    "cross_reenactment_ground_truth",
    "identity_seeds",
    "random_motion_track",
    "render",
    "render_clip",
    "rotation_matrix",
]
