"""Training data: the synthetic talking-head renderer (no download), datasets over real
talking-head videos, and the paper's augmentations."""
from megaportraits_export.data import synthetic
from megaportraits_export.data.augment import ColourJitter, PairAugmentation
from megaportraits_export.data.synthetic import *  # noqa: F403 - the renderer's public names, listed in its __all__
from megaportraits_export.data.video_dataset import Clip, TalkingHeadVideos, find_clips, read_frames

__all__ = [
    "Clip",
    "ColourJitter",
    "PairAugmentation",
    "TalkingHeadVideos",
    "find_clips",
    "read_frames",
    *synthetic.__all__,
]
