"""Training data: the synthetic talking-head renderer (no download), datasets over real
talking-head videos, and the paper's augmentations."""
from megaportraits_export.data.synthetic import (
    EVAL_IDENTITY_SEED_OFFSET,
    EXPRESSION_PARAMETER_NAMES,
    POSE_PARAMETER_NAMES,
    Expression,
    HeadMotion,
    Identity,
    Pose,
    SyntheticTalkingHeads,
    cross_reenactment_ground_truth,
    identity_seeds,
    random_motion_track,
    render,
    render_clip,
)

__all__ = [
    "EVAL_IDENTITY_SEED_OFFSET",
    "EXPRESSION_PARAMETER_NAMES",
    "POSE_PARAMETER_NAMES",
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
]
