"""The sizes of LivePortrait's networks (their ``src/config/models.yaml``, human model).

Every width is a field, so tests can build the same graph at a fraction of the size; the
defaults are those of the published weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Published file names inside the weights directory, per network (relative to --weights DIR).
WEIGHT_FILES = {
    "appearance_feature_extractor": "base_models/appearance_feature_extractor.pth",
    "motion_extractor": "base_models/motion_extractor.pth",
    "warping_module": "base_models/warping_module.pth",
    "spade_generator": "base_models/spade_generator.pth",
    "stitching_retargeting_module": "retargeting_models/stitching_retargeting_module.pth",
}
# The stitching file holds three state dicts under these names.
RETARGETING_ENTRIES = {"stitching": "retarget_shoulder", "lip": "retarget_mouth", "eye": "retarget_eye"}


@dataclass(frozen=True)
class MLPSize:
    input_size: int
    hidden_sizes: tuple
    output_size: int


@dataclass(frozen=True)
class LivePortraitConfig:
    """Every size of the five networks. Defaults: the published human model."""

    image_size: int = 256              # F and M read 256x256 crops
    output_size: int = 512             # G renders 2x the feature resolution (pixel shuffle)
    num_kp: int = 21
    num_bins: int = 66                 # head-pose angle bins (3 degrees each)
    # appearance feature extractor F
    app_block_expansion: int = 64
    app_num_down_blocks: int = 2
    app_max_features: int = 512
    reshape_channel: int = 32          # feature volume channels
    reshape_depth: int = 16            # feature volume depth
    app_num_resblocks: int = 6
    # motion extractor M: ConvNeXt-V2 tiny
    convnext_depths: tuple = (3, 3, 9, 3)
    convnext_dims: tuple = (96, 192, 384, 768)
    # warping module W
    warp_block_expansion: int = 64
    warp_max_features: int = 512
    warp_num_down_blocks: int = 2
    dense_block_expansion: int = 32
    dense_max_features: int = 1024
    dense_num_blocks: int = 5
    dense_compress: int = 4
    # SPADE decoder G
    spade_block_expansion: int = 64
    spade_max_features: int = 512
    spade_num_down_blocks: int = 2
    spade_label_hidden: int = 128      # SPADE's shared MLP width
    spade_out_channels: int = 64       # channels before the pixel-shuffle head
    # stitching and retargeting MLPs
    stitching: MLPSize = field(default_factory=lambda: MLPSize(126, (128, 128, 64), 65))
    lip: MLPSize = field(default_factory=lambda: MLPSize(65, (128, 128, 64), 63))
    eye: MLPSize = field(default_factory=lambda: MLPSize(66, (256, 256, 128, 128, 64), 63))

    @property
    def feature_size(self) -> int:
        """H = W of the feature volume (the image after F's down blocks)."""
        return self.image_size // (2 ** self.app_num_down_blocks)

    @property
    def warp_channels(self) -> int:
        """Channels W hands to G (256 in the published model)."""
        return self.warp_block_expansion * (2 ** self.warp_num_down_blocks)


def tiny_config() -> LivePortraitConfig:
    """A LivePortrait of the same structure at test size (seconds on two cores)."""
    return LivePortraitConfig(
        image_size=64, output_size=128, num_kp=5, num_bins=66,
        app_block_expansion=8, app_max_features=32, reshape_channel=4, reshape_depth=8,
        app_num_resblocks=2, convnext_depths=(1, 1, 2, 1), convnext_dims=(8, 16, 24, 32),
        warp_block_expansion=8, warp_max_features=32, dense_block_expansion=4, dense_max_features=32,
        dense_num_blocks=3, dense_compress=2, spade_block_expansion=8, spade_max_features=32,
        spade_label_hidden=8, spade_out_channels=8,
        stitching=MLPSize(30, (16, 8), 17), lip=MLPSize(17, (8,), 15), eye=MLPSize(18, (8, 8), 15))
