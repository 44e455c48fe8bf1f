"""LivePortrait's inference networks (KwaiVGI/LivePortrait, MIT), written from their description.

LivePortrait is the other volumetric family our runtime serves: an appearance extractor F lifts
a 256x256 source crop to a 32x16x64x64 feature volume, a motion extractor M reads implicit
keypoints, head pose (66-bin angles), translation, scale and expression deltas from any crop, a
warping module W moves the volume from the source's keypoints to the driver's (a dense motion
network, two 5-D grid samples, an occlusion map), and a SPADE decoder G renders 512x512.
Small MLPs correct the driving keypoints (stitching) and retarget eyes and lips.

The modules keep the attribute names of the published checkpoints, so their ``.pth`` files
load by key (:mod:`.weights` folds spectral norm and says which keys it drops and why).
One module per network; :mod:`.blocks` holds the building blocks they share.
"""
from .appearance import AppearanceFeatureExtractor
from .config import LivePortraitConfig
from .dense_motion import DenseMotionNetwork
from .motion_extractor import MotionExtractor
from .spade_decoder import SPADEDecoder
from .stitching import StitchingRetargetingNetwork
from .warping import WarpingNetwork

__all__ = ["AppearanceFeatureExtractor", "DenseMotionNetwork", "LivePortraitConfig", "MotionExtractor",
           "SPADEDecoder", "StitchingRetargetingNetwork", "WarpingNetwork"]
