"""Training data: the synthetic talking-head renderer (no download), datasets over real
talking-head videos, and the paper's augmentations."""
from megaportraits_export.data.augment import ColourJitter, PairAugmentation
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
from megaportraits_export.data.video_dataset import Clip, TalkingHeadVideos, find_clips, read_frames

__all__ = [
    "Clip",
    "ColourJitter",
    "PairAugmentation",
    "TalkingHeadVideos",
    "find_clips",
    "read_frames",
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
