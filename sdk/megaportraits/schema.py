"""The bundle's vocabulary, defined once: graph roles, their tensor names, the custom op's identity.

Every other part of the project (the SDK, the exporter, the benchmarks, the evaluation) imports
these names instead of spelling them; the C++ op library keeps its own copy of the op identity,
and a test checks that it matches this module. This module imports nothing else from the SDK,
so anything may import it.
"""
from __future__ import annotations

from typing import NamedTuple


class GraphIO(NamedTuple):
    """The tensor names of one graph role: required inputs and outputs, and the optional ones a
    graph of that role may declare besides (a bundle's manifest says which it has)."""

    inputs: tuple
    outputs: tuple
    optional_outputs: tuple = ()
    optional_inputs: tuple = ()


# The person's matte (N, 1, S, S) in [0, 1]: an optional second output of a generator whose
# model renders only the person (docs/design.md, "Mattes and compositing").
MATTE_OUTPUT = "matte"

SOURCE, DRIVER, GENERATOR = "source", "driver", "generator"

# The manifest's ``provenance.data.kind`` of a model trained only on the project's synthetic
# rendered heads (the bundled demo model): the SDK says so when such a model animates a photo.
SYNTHETIC_DATA = "synthetic"

# The tensors between the graphs. Images are float32 RGB (N, 3, S, S) in [0, 1]; the avatar is
# the canonical volume (N, C, D, H, W) and global descriptor (N, Cd, h, w); motion is the head
# pose (N, 3, 4) and expression code (N, Z).
SOURCE_IMAGE, DRIVER_IMAGE, IMAGE_OUTPUT = "source_image", "driver_image", "image"
CANONICAL_VOLUME, GLOBAL_DESCRIPTOR, POSE, EXPRESSION = "canonical_volume", "global_descriptor", "pose", "expression"
AVATAR = (CANONICAL_VOLUME, GLOBAL_DESCRIPTOR)
MOTION = (POSE, EXPRESSION)
# The avatar's own head pose (N, 3, 4) and expression code (N, Z), read by the generator of a
# model with the source-pixel path (ModelConfig.warped_source) beside the source crop itself:
# the source's motion, never the frame's (relative, smoothed) motion.
SOURCE_POSE, SOURCE_EXPRESSION = "source_pose", "source_expression"

# Optional generator inputs that come from the avatar, never from the frame's motion: name -> the
# source graph's tensor the SDK feeds it (the crop it fed the source graph, or one of its outputs).
# A generator graph declares those its model reads; the SDK feeds whichever it declares. One line
# here (and the model) adds one.
AVATAR_GENERATOR_INPUTS = {
    SOURCE_IMAGE: SOURCE_IMAGE,
    SOURCE_POSE: POSE,
    SOURCE_EXPRESSION: EXPRESSION,
}
# What the source graph may output beyond AVATAR + MOTION: what those generator inputs read (none
# yet: the source crop is the SDK's own, the pose and expression are outputs anyway).
SOURCE_OPTIONAL_OUTPUTS = tuple(dict.fromkeys(
    t for t in AVATAR_GENERATOR_INPUTS.values() if t not in (SOURCE_IMAGE,) + AVATAR + MOTION))

GRAPH_IO = {
    SOURCE: GraphIO((SOURCE_IMAGE,), AVATAR + MOTION, optional_outputs=SOURCE_OPTIONAL_OUTPUTS),
    DRIVER: GraphIO((DRIVER_IMAGE,), MOTION),
    GENERATOR: GraphIO(AVATAR + MOTION, (IMAGE_OUTPUT,), optional_outputs=(MATTE_OUTPUT,),
                       optional_inputs=tuple(AVATAR_GENERATOR_INPUTS)),
}
# Tensors whose last two axes are the image side (the manifest's image_size).
IMAGE_TENSORS = (SOURCE_IMAGE, DRIVER_IMAGE, IMAGE_OUTPUT, MATTE_OUTPUT)
ROLES = tuple(GRAPH_IO)  # the roles this SDK runs
BASE_ROLES = (SOURCE, DRIVER, GENERATOR)  # every bundle has these
# The optional high-resolution enhancer (G_enh): the generator's rendering at the base size
# (the manifest's model.image_size) in, the same at the high size (model.enhanced_size) out. A
# matte model's enhancer also takes the base matte and returns the matte at the high size.
ENHANCER = "enhancer"
BASE_IMAGE, BASE_MATTE = "base_image", "base_matte"
ENHANCER_IO = GraphIO((BASE_IMAGE,), (IMAGE_OUTPUT,), optional_outputs=(MATTE_OUTPUT,))
# Roles a manifest may name beyond the base ones (the enhancer, which the Animator runs when a
# bundle has it; a distilled student, which this SDK accepts and hashes but does not run yet).
LATER_ROLES = (ENHANCER, "student")


class CustomOp(NamedTuple):
    """Identity of an ONNX Runtime custom op of the native library (cpp_ext)."""

    domain: str
    name: str
    version: int


GRID_SAMPLE_3D = CustomOp(domain="com.megaportraits", name="GridSample3D", version=1)
# InstanceNormalization(DequantizeLinear(X)) of a uint8 X in one threaded kernel: int8 graphs
# only; their portable twins spell it as those two standard ops (cpp_ext/dequantize_instance_norm.h)
DEQUANTIZE_INSTANCE_NORM = CustomOp(domain=GRID_SAMPLE_3D.domain, name="DequantizeInstanceNormalization", version=1)
# every op the library provides, one domain
LIBRARY_OPS = (GRID_SAMPLE_3D, DEQUANTIZE_INSTANCE_NORM)


# ---- the distilled real-time student ----------------------------------------------------------
# A student bundle has one graph: the driver image and, per sample, which of the student's
# avatars to render (``avatar_index`` (N,) int64, a position in the manifest's student.avatars)
# -> the image, and the matte where its teacher renders one. Its avatars are fixed at distillation.
STUDENT = "student"
AVATAR_INDEX = "avatar_index"
STUDENT_IO = GraphIO((DRIVER_IMAGE, AVATAR_INDEX), (IMAGE_OUTPUT,), optional_outputs=(MATTE_OUTPUT,))
STUDENT_ROLES = (STUDENT,)  # what a student bundle has instead of BASE_ROLES


# ---- model families --------------------------------------------------------------------------
# A bundle's family says which networks made it and so how the SDK composes motion between the
# driver and generator graphs: one motion module per representation (docs/design.md, "Families").
MEGAPORTRAITS, LIVEPORTRAIT = "megaportraits", "liveportrait"
FAMILIES = (MEGAPORTRAITS, LIVEPORTRAIT)
MOTION_REPRESENTATIONS = {
    MEGAPORTRAITS: "pose_expression",      # 3x4 head pose + expression code (megaportraits.motion)
    LIVEPORTRAIT: "implicit_keypoints",    # binned angles, t, scale, deltas, canonical keypoints
}                                          # (megaportraits.motion_liveportrait)

# LivePortrait's motion extractor, as its source and driver graphs return it: head pose as
# 66-bin logits (N, 66) each, translation (N, 3), expression deltas (N, K, 3), scale (N, 1),
# canonical keypoints (N, K, 3).
LIVEPORTRAIT_MOTION = ("pitch", "yaw", "roll", "translation", "expression", "scale", "canonical_keypoints")
LIVEPORTRAIT_GRAPH_IO = {
    SOURCE: GraphIO(("source_image",), ("feature_volume",) + LIVEPORTRAIT_MOTION),
    DRIVER: GraphIO(("driver_image",), LIVEPORTRAIT_MOTION),
    # keypoints (N, K, 3) composed by the SDK; the graph stitches, warps and decodes
    GENERATOR: GraphIO(("feature_volume", "source_keypoints", "driving_keypoints"), ("image",)),
}
FAMILY_GRAPH_IO = {MEGAPORTRAITS: GRAPH_IO, LIVEPORTRAIT: LIVEPORTRAIT_GRAPH_IO}
