"""Reenactment quality on held-out synthetic heads: the pairs, the reenactors, the scores.

Protocol (deterministic for a given ``--seed``). For each pair k, two different held-out
identities A and B (identity seeds never used in training) and two random motions m_s, m_d:

- source:                A performing m_s
- self-reenactment:      driver A performing m_d
- cross-reenactment:     driver B performing m_d
- target (both tasks):   A performing m_d, rendered exactly by the synthetic renderer

Motion transfer is *relative* by default, as the SDK does it for videos: the driver's
reference frame d0 is the driver identity performing the source's motion m_s (for self-
reenactment that is the source image itself), and the generator receives
theta = theta_d theta_d0^-1 theta_s, z = z_s + (z_d - z_d0). This is the correct protocol for
cross-reenactment: the pose and expression encoders see B's face, and whatever part of their
output is specific to B's face (rather than to the motion) cancels in the difference to d0,
while the ground truth is A with B's motion *parameters*. With ``--motion absolute`` the
generator gets (theta_d, z_d) as they are; for self-reenactment both modes coincide up to
rounding, so the difference between them on cross-reenactment measures identity leakage
through the motion code.

The trivial baseline "output the source unchanged" is scored on the same targets; since the
two tasks share their targets, its numbers are the same for both.

Every metric is reported twice, as the paper does: on the whole image ("raw") and on the
foreground only ("masked": prediction and target multiplied by the target's person mask,
which the synthetic renderer gives exactly). A model with a matte is scored on what a user sees:
its rendering composited over the source's inpainted backdrop
(:mod:`megaportraits.compositing`, the same code the SDK runs); ``--background generated``
scores the raw rendering instead.

Inputs: a training checkpoint (``--checkpoint``, run in PyTorch) or an exported bundle
(``--bundle``, run through the SDK's Animator on already-cropped frames: no face crop, no
paste-back). LPIPS is not reported: its pretrained weights are not available here.

Modules: :mod:`.pairs` (the held-out pairs), :mod:`.reenactors` (a checkpoint in PyTorch, a
bundle through the SDK), :mod:`.scoring` (metrics, the table); the command is
``megaportraits_export.evaluate``.
"""
from megaportraits_export.evaluation.pairs import DEFAULT_HELDOUT_IDENTITIES, PairSet, heldout_pairs
from megaportraits_export.evaluation.reenactors import BundleReenactor, CheckpointReenactor, relative_motion
from megaportraits_export.evaluation.scoring import TASKS, evaluate, format_table, run_evaluation

__all__ = [
    "DEFAULT_HELDOUT_IDENTITIES",
    "TASKS",
    "BundleReenactor",
    "CheckpointReenactor",
    "PairSet",
    "evaluate",
    "format_table",
    "heldout_pairs",
    "relative_motion",
    "run_evaluation",
]
