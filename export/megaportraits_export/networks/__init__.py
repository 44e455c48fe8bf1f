"""The networks of the MegaPortraits base model, one module per network of the paper."""
from .appearance_encoder import AppearanceEncoder
from .blocks import (AdaptiveGroupNorm, AdaptiveResBlock3d, ResBlock, ResBlock2d, ResBlock3d, WSConv2d, WSConv3d,
                     fold_weight_standardisation, standardised_weight)
from .canonical_generator import CanonicalGenerator
from .expression_encoder import ExpressionEncoder
from .global_descriptor import GlobalDescriptorEncoder
from .head_pose import HeadPoseRegressor
from .image_generator import ImageGenerator, VolumeProjection
from .resnet import ResNetTrunk, build_trunk, load_torchvision_weights
from .warping_generator import WarpEmbedding, WarpingGenerator

__all__ = [
    "AdaptiveGroupNorm", "AdaptiveResBlock3d", "AppearanceEncoder", "CanonicalGenerator", "ExpressionEncoder",
    "GlobalDescriptorEncoder", "HeadPoseRegressor", "ImageGenerator", "ResBlock", "ResBlock2d", "ResBlock3d",
    "ResNetTrunk", "VolumeProjection", "WSConv2d", "WSConv3d", "WarpEmbedding", "WarpingGenerator",
    "build_trunk", "fold_weight_standardisation", "load_torchvision_weights", "standardised_weight",
]
