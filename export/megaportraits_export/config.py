"""Every width and size of the MegaPortraits base model, and the named presets.

One frozen dataclass holds the whole architecture, so a checkpoint, an exported bundle and the
``describe`` command can name a model by its preset and be sure they mean the same networks.
The presets:

- ``paper512``: the paper's tensor sizes (v_s 96x16x64x64, e_s 512x4x4, z 512, warp fields
  16x64x64x3, 512x512 output) and widths that reproduce the official code's parameter counts.
- ``small256``: 256x256 output, CPU-friendly; the largest size the bundled demo model may take
  (fp32 bundle <= 25 MB with the pose and expression encoders in both the source and the driver
  graph).
- ``demo128``: 128x128 output, about 1.1M parameters and 1.7 GMAC per training sample: the
  bundled demo model (trained on two CPU cores in about two and a half hours, see
  ``configs/demo128_*.toml``).
- ``tiny``: 64x64 output, tiny widths; forward and backward in a fraction of a second on CPU,
  for tests (``tiny_matte``: the same with a matte output).

``demo128`` predicts a matte (``matte``): the paper computes its losses on the foreground and
composites the background afterwards; the matte lets the runtime do that compositing.

paper512 against the official code's counts (``python -m megaportraits_export describe --preset
paper512`` prints them): E_app 11.61M (11.6M: 10.12M 2D + 1.49M 3D); e_s network 24.56M
(ResNet-50 trunk 23.51M + the 1x1 conv 2048->512); head pose 11.18M and expression encoder
11.44M (ResNet-18 trunks 11.18M + their linear heads); G3D 57.89M (57.8M). Where they differ:

- each warping generator is 13.48M = 9.01M generator (9.0M) + 4.47M for its (z, e_s) embedding
  (linear 512 -> 512x4x4 and the 1x1 conv), which the official count keeps outside it;
- P + G2D is 36.88M (35.8M): 6 residual blocks at 64x64 like the official code (the paper's 8
  would add 9.4M), then stages narrowing by ~1.5 (336, 224, 144: multiples of 16 for GroupNorm);
- G3D's learned bottom tensor is 512x2x8x8 (official 512x8x8x8): our U-Net halves depth with
  height and width instead of first growing the depth to 32.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneConfig:
    """A ResNet-style trunk (GroupNorm + weight standardisation instead of BatchNorm).

    ``block`` is ``"basic"`` (ResNet-18/34 family) or ``"bottleneck"`` (ResNet-50 family, output
    width ``4 * width * 8``). ``layers`` counts the blocks of each of the four stages.
    """

    block: str
    layers: tuple
    width: int

    @property
    def out_channels(self) -> int:
        expansion = 4 if self.block == "bottleneck" else 1
        return self.width * 8 * expansion

    @property
    def torchvision_arch(self) -> str:
        """The torchvision model whose pretrained weights have this trunk's layout."""
        return "resnet50" if self.block == "bottleneck" else "resnet18"


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of one MegaPortraits base model (see module docstring for the presets)."""

    name: str
    image_size: int
    # volumetric features v_s (C x D x H x W), produced by the appearance encoder E_app
    volume_channels: int
    volume_depth: int
    volume_size: int
    appearance_stem_channels: int
    appearance_channels: tuple          # one stride-2 2D residual block per entry
    appearance_3d_blocks: int
    # global descriptor e_s (Cd x S x S)
    descriptor_backbone: BackboneConfig
    descriptor_input_size: int
    descriptor_channels: int
    descriptor_size: int
    # head pose regressor and expression encoder (both read the driver image)
    pose_backbone: BackboneConfig
    pose_input_size: int
    expression_backbone: BackboneConfig
    expression_input_size: int
    expression_dim: int
    expression_crop_zoom: float
    # warping generators W_s-> and W_->d: start at descriptor_size**3 with warp_channels[0],
    # then one 2x upsampling block per later entry
    warp_channels: tuple
    # canonical generator G3D: one U-Net level per entry
    canonical_channels: tuple
    # projection P and image generator G2D
    image_channels: int
    image_blocks: int
    image_up_channels: tuple            # one upsampling stage (2 residual blocks) per entry
    # optional ImageNet initialisation of the ResNet trunks (offline-safe, see networks.resnet)
    pretrained_backbones: bool = False
    # G2D also predicts the person's matte (a 4th output channel): the paper trains on the
    # foreground only and composites the background afterwards; with a matte the runtime can do
    # that compositing itself (sdk/megaportraits/compositing.py). Needs foreground masks in the
    # training data (the synthetic heads have them).
    matte: bool = False
    # G2D also reads the source image, warped to the driver by the poses and an anchored
    # expression field (networks/source_pixels.py): the face's features as the source's own
    # pixels, where a coarse volume loses them. The generator then also reads the avatar's image
    # and its own pose and expression.
    warped_source: bool = False
    # With warped_source: a small U-Net of these widths (one stride-2 level per entry after the
    # first) redraws the source image with the driver's expression before the source-pixel path
    # moves it (networks/expression_edit.py); () for none.
    expression_edit_channels: tuple = ()
    # With warped_source: the distance of the pinhole camera through which the source-pixel path
    # moves pixels, in the volume's normalised units (the volume's z in [-1, 1]); 0 for an
    # orthographic camera (the volume's x and y are the image's). The synthetic heads are drawn
    # through one at data.synthetic.camera.CAMERA_DISTANCE (6): with poses exact, moving their
    # pixels orthographically scores 4 dB under the true correspondence on the expression region
    # (tools/probe_pose_precision.py).
    camera_distance: float = 0.0
    # Which network layout the widths above describe. "megaportraits": this project's networks.
    # "emoportraits": the layout of the official EMOPortraits stage-1 model in its inference form
    # (spectral norm, weight standardisation and BatchNorm folded into plain convs), so that its
    # released weights load one to one (megaportraits_export.convert.emoportraits); it is built for
    # conversion and export, not for training here.
    architecture: str = "megaportraits"

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"{self.name}: architecture {self.architecture!r} is not one of {', '.join(ARCHITECTURES)}")
        _check_power_of_two_ratio(
            self.image_size, self.volume_size, len(self.appearance_channels),
            "image_size / volume_size", "appearance_channels")
        _check_power_of_two_ratio(
            self.image_size, self.volume_size, len(self.image_up_channels),
            "image_size / volume_size", "image_up_channels")
        _check_power_of_two_ratio(
            self.volume_size, self.descriptor_size, len(self.warp_channels) - 1,
            "volume_size / descriptor_size", "warp_channels (minus the start width)")
        if self.volume_depth < self.descriptor_size or self.volume_depth & (self.volume_depth - 1):
            raise ValueError(f"{self.name}: volume_depth {self.volume_depth} must be a power of 2 and at least "
                             f"descriptor_size {self.descriptor_size} (the warping generators start at that depth)")
        levels = len(self.canonical_channels)
        if self.volume_depth % 2 ** levels or self.volume_size % 2 ** levels:
            raise ValueError(
                f"{self.name}: volume depth {self.volume_depth} and size {self.volume_size} must be "
                f"divisible by 2**{levels} for a {levels}-level canonical U-Net; change canonical_channels")
        if self.volume_depth > self.volume_size:
            raise ValueError(f"{self.name}: volume_depth {self.volume_depth} must not exceed volume_size "
                             f"{self.volume_size}")
        if self.expression_edit_channels and not self.warped_source:
            raise ValueError(f"{self.name}: expression_edit_channels edits what the source-pixel path moves; "
                             "it needs warped_source = true")
        if self.camera_distance and (not self.warped_source or self.camera_distance <= 1.0):
            raise ValueError(f"{self.name}: camera_distance {self.camera_distance} is the source-pixel path's camera: "
                             "it needs warped_source = true and a distance beyond the volume (> 1), or 0")
        if self.expression_edit_channels and self.image_size % 2 ** (len(self.expression_edit_channels) - 1):
            raise ValueError(f"{self.name}: image_size {self.image_size} must be divisible by "
                             f"2**{len(self.expression_edit_channels) - 1} for the expression edit's levels")
        for field, size in (("descriptor_input_size", self.descriptor_input_size),
                            ("pose_input_size", self.pose_input_size)):
            if self.image_size % size:
                raise ValueError(f"{self.name}: image_size {self.image_size} must be a multiple of {field} {size}")
        trunk_size = self.descriptor_input_size // 32
        if trunk_size % self.descriptor_size:
            raise ValueError(f"{self.name}: the descriptor trunk ends at {trunk_size}x{trunk_size}, which "
                             f"descriptor_size {self.descriptor_size} must divide; change descriptor_input_size")
        for field, backbone in (("descriptor_backbone", self.descriptor_backbone),
                                ("pose_backbone", self.pose_backbone),
                                ("expression_backbone", self.expression_backbone)):
            if backbone.block not in ("basic", "bottleneck") or len(backbone.layers) != 4:
                raise ValueError(f"{self.name}: {field} must have block 'basic' or 'bottleneck' and 4 stages")

    @property
    def volume_shape(self) -> tuple:
        """(C, D, H, W) of v_s, the canonical volume and the driver volume."""
        return (self.volume_channels, self.volume_depth, self.volume_size, self.volume_size)

    @property
    def warp_field_shape(self) -> tuple:
        """(D, H, W, 3) of the deformation fields and sampling grids."""
        return (self.volume_depth, self.volume_size, self.volume_size, 3)

    @property
    def descriptor_shape(self) -> tuple:
        return (self.descriptor_channels, self.descriptor_size, self.descriptor_size)

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Inverse of :meth:`to_dict` (e.g. for a config stored in a checkpoint)."""
        d = dict(d)
        for key in ("descriptor_backbone", "pose_backbone", "expression_backbone"):
            b = d[key]
            d[key] = b if isinstance(b, BackboneConfig) else BackboneConfig(b["block"], tuple(b["layers"]), b["width"])
        for key in ("appearance_channels", "warp_channels", "canonical_channels", "image_up_channels"):
            d[key] = tuple(d[key])
        if "expression_edit_channels" in d:     # absent from checkpoints written before it existed
            d["expression_edit_channels"] = tuple(d["expression_edit_channels"])
        return cls(**d)


def _check_power_of_two_ratio(big: int, small: int, steps: int, what: str, field: str) -> None:
    if small * 2 ** steps != big:
        raise ValueError(f"{what} = {big}/{small} must equal 2**len({field}) = {2 ** steps}; "
                         f"give {field} one entry per factor of 2")


ARCHITECTURES = ("megaportraits", "emoportraits")

RESNET18 = BackboneConfig("basic", (2, 2, 2, 2), 64)
RESNET50 = BackboneConfig("bottleneck", (3, 4, 6, 3), 64)

PRESETS: dict[str, ModelConfig] = {
    "paper512": ModelConfig(
        name="paper512",
        image_size=512,
        volume_channels=96,
        volume_depth=16,
        volume_size=64,
        appearance_stem_channels=128,
        appearance_channels=(256, 512, 512),
        appearance_3d_blocks=3,
        descriptor_backbone=RESNET50,
        descriptor_input_size=256,
        descriptor_channels=512,
        descriptor_size=4,
        pose_backbone=RESNET18,
        pose_input_size=128,
        expression_backbone=RESNET18,
        expression_input_size=128,
        expression_dim=512,
        expression_crop_zoom=2.0,
        warp_channels=(512, 256, 128, 64, 32),
        canonical_channels=(192, 384, 512),
        image_channels=512,
        image_blocks=6,
        image_up_channels=(336, 224, 144),
    ),
    "small256": ModelConfig(
        name="small256",
        image_size=256,
        volume_channels=32,
        volume_depth=8,
        volume_size=32,
        appearance_stem_channels=32,
        appearance_channels=(64, 96, 128),
        appearance_3d_blocks=2,
        descriptor_backbone=BackboneConfig("bottleneck", (1, 1, 1, 1), 12),
        descriptor_input_size=128,
        descriptor_channels=128,
        descriptor_size=4,
        pose_backbone=BackboneConfig("basic", (1, 1, 1, 1), 16),
        pose_input_size=64,
        expression_backbone=BackboneConfig("basic", (1, 1, 1, 1), 16),
        expression_input_size=64,
        expression_dim=64,
        expression_crop_zoom=2.0,
        warp_channels=(96, 48, 24, 16),
        canonical_channels=(32, 48, 64),
        image_channels=96,
        image_blocks=2,
        image_up_channels=(64, 32, 16),
    ),
    "demo128": ModelConfig(
        name="demo128",
        image_size=128,
        volume_channels=16,
        volume_depth=8,
        volume_size=32,
        appearance_stem_channels=16,
        appearance_channels=(32, 64),
        appearance_3d_blocks=1,
        descriptor_backbone=BackboneConfig("bottleneck", (1, 1, 1, 1), 8),
        descriptor_input_size=128,
        descriptor_channels=64,
        descriptor_size=4,
        pose_backbone=BackboneConfig("basic", (1, 1, 1, 1), 8),
        pose_input_size=64,
        expression_backbone=BackboneConfig("basic", (1, 1, 1, 1), 8),
        expression_input_size=64,
        expression_dim=64,
        expression_crop_zoom=2.0,
        warp_channels=(64, 32, 16, 8),
        canonical_channels=(16, 32),
        image_channels=64,
        image_blocks=1,
        image_up_channels=(32, 16),
        matte=True,
    ),
    "tiny": ModelConfig(
        name="tiny",
        image_size=64,
        volume_channels=8,
        volume_depth=4,
        volume_size=16,
        appearance_stem_channels=8,
        appearance_channels=(16, 16),
        appearance_3d_blocks=1,
        descriptor_backbone=BackboneConfig("bottleneck", (1, 1, 1, 1), 4),
        descriptor_input_size=64,
        descriptor_channels=16,
        descriptor_size=2,
        pose_backbone=BackboneConfig("basic", (1, 1, 1, 1), 4),
        pose_input_size=64,
        expression_backbone=BackboneConfig("basic", (1, 1, 1, 1), 4),
        expression_input_size=64,
        expression_dim=16,
        expression_crop_zoom=2.0,
        warp_channels=(16, 8, 8, 8),
        canonical_channels=(8, 16),
        image_channels=16,
        image_blocks=1,
        image_up_channels=(16, 8),
    ),
}


# demo128 with the source-pixel path (issue 13: a 32x32 volume renders no eyes or mouth); it
# fine-tunes from demo128's weights, the new parts starting at nothing
PRESETS["demo128_ws"] = PRESETS["demo128"].replace(name="demo128_ws", warped_source=True)
# and with the expression edit (the source redrawn with the driver's expression before it moves)
PRESETS["demo128_wse"] = PRESETS["demo128_ws"].replace(name="demo128_wse", expression_edit_channels=(8, 16, 32, 64))
# and the pixels moved through the synthetic heads' own pinhole camera (data.synthetic.camera)
PRESETS["demo128_wsep"] = PRESETS["demo128_wse"].replace(name="demo128_wsep", camera_distance=6.0)
# and a head-pose regressor twice as wide on the whole image: the pixel path needs sub-degree
# motion (tools/probe_pose_precision.py), demo128's regressor (16 wide, 64 px) stays near 2 degrees
PRESETS["demo128_wsepr"] = PRESETS["demo128_wsep"].replace(
    name="demo128_wsepr", pose_backbone=BackboneConfig("basic", (1, 1, 1, 1), 32), pose_input_size=128)

# tiny with a matte output: what tests of matte models (training, export, SDK compositing) use
PRESETS["tiny_matte"] = PRESETS["tiny"].replace(name="tiny_matte", matte=True)
# tiny_matte with the source-pixel path, for the tests of that path (training, export, SDK)
PRESETS["tiny_ws"] = PRESETS["tiny_matte"].replace(name="tiny_ws", warped_source=True)
PRESETS["tiny_wse"] = PRESETS["tiny_ws"].replace(name="tiny_wse", expression_edit_channels=(4, 8))
PRESETS["tiny_wsep"] = PRESETS["tiny_wse"].replace(name="tiny_wsep", camera_distance=6.0)

# The official EMOPortraits stage-1 base model (neeek2303/EMOPortraits, released checkpoint's
# arguments): z of 128, G2D up widths 320/192/128 (512 / 1.5 rounded down to multiples of 32),
# a ResNet-50 e_s on 256x256, ResNet-18 pose and expression networks on 128x128. Its structure
# (where blocks pool, adaptive GroupNorm with a base affine, depth schedules, two-step warps on
# linspace grids) is that of megaportraits_export.convert.emoportraits.networks. Parameter counts
# (describe --preset emoportraits) equal those of the official networks built from their code
# (tests/export/fixtures/emoportraits_keys.json): local_encoder_nw 10,119,680 + volume_source_nw
# 1,494,144 (E_app), idt_embedder_nw 24,575,488, expression_embedder_nw 11,506,112,
# pose_unsqueeze_nw 1,048,576 + warp_embed_head_orig_nw 262,144 (one shared embedding; each of
# our warping generators carries a copy), xy/uv_generator_nw 9,016,451 each, volume_process_nw
# 57,843,104, decoder_nw 35,822,211: 160,704,361 in all; their head-pose ResNet-18 (own file)
# 11,181,129, 11,176,329 once its BatchNorms are folded into conv biases.
PRESETS["emoportraits"] = PRESETS["paper512"].replace(
    name="emoportraits", expression_dim=128, image_up_channels=(320, 192, 128), architecture="emoportraits")


def get_config(name: str) -> ModelConfig:
    """The preset called ``name``; raises ValueError naming the known presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
