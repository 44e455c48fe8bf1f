"""Every key of their checkpoint -> ours, with the weight folds; anything unknown is an error.

Their stage-1 state dict (``NNN_model.pth``) names modules by network (``local_encoder_nw``,
``xy_generator_nw``, ...); the head-pose regressor is a torchvision ResNet-18 state dict in its
own file. Keys are grouped by module; a module's leaves say how it was reparameterised:
``weight_orig/weight_u/weight_v`` -> spectral norm; a conv ``weight`` without them -> weight
standardisation (their WS convs are fresh convs, always with a bias); everything else (norms,
the un-normalised ``pose_unsqueeze_nw`` linear, learned tensors) is copied. Training-only
entries are dropped by name (:data:`DROPPED`), as are the constant buffers our networks recompute
(:data:`RECOMPUTED`). A key that matches nothing stops the conversion with its name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .folds import fold_batch_norm, fold_spectral_norm, fold_weight_standardisation

S, D, G = "source_branch.", "source_branch.driver_branch.", "generator."

# their module-path prefixes that only training uses
DROPPED = {
    "discriminator_ds.": "the discriminator",
    "discriminator2_ds.": "the second discriminator",
    "stylegan_discriminator_ds.": "the StyleGAN discriminator",
    "affine_match_loss.": "a loss network",
    "bn.": "an unused BatchNorm1d of training",
}
# constant buffers of theirs that our networks compute from the config instead
RECOMPUTED = (
    r"expression_embedder_nw\.identity_grid(_512)?",
    r"expression_embedder_nw\.aligned_keypoints",
    r"expression_embedder_nw\.net_face\.(mean|std)",
    r"idt_embedder_nw\.(mean|std)",
    r"(xy|uv)_generator_nw\.identity_grid",
)

_RESBLOCK = {"block_feats.0": "norm1", "block_feats.2": "conv1", "block_feats.3": "norm2",
             "block.0": "conv2", "skip.0": "skip"}


def _resblock(inner: str) -> str | None:
    return _RESBLOCK.get(inner)


def _warp(theirs: str, ours: str) -> list:
    return [
        (rf"{theirs}\.first_conv", lambda m: ours + "to_volume"),
        (rf"{theirs}\.blocks_3d\.(\d+)\.(.+)", lambda m: _join(ours + f"blocks.{m[1]}.", _resblock(m[2]))),
        (rf"{theirs}\.pre_head\.0", lambda m: ours + "head_norm"),
        (rf"{theirs}\.head\.0\.0", lambda m: ours + "head"),
    ]


def _join(prefix: str, inner: str | None) -> str | None:
    return None if inner is None else prefix + inner


# (their module path regex, our module path or paths)
MODULE_RULES = [
    (r"local_encoder_nw\.from_rgb_\d+px", lambda m: S + "appearance_encoder.stem"),
    (r"local_encoder_nw\.enc_(\d+)_block=\d+px\.(.+)",
     lambda m: _join(S + f"appearance_encoder.blocks_2d.{m[1]}.", _resblock(m[2]))),
    (r"local_encoder_nw\.finale_layers\.0", lambda m: S + "appearance_encoder.to_volume_norm"),
    (r"local_encoder_nw\.finale_layers\.2", lambda m: S + "appearance_encoder.to_volume"),
    (r"volume_source_nw\.net\.net\.(\d+)\.(.+)",
     lambda m: _join(S + f"appearance_encoder.blocks_3d.{m[1]}.", _resblock(m[2]))),
    (r"idt_embedder_nw\.net\.fc", lambda m: S + "global_descriptor.to_descriptor"),
    (r"idt_embedder_nw\.net\.(.+)", lambda m: S + f"global_descriptor.trunk.{m[1]}"),
    (r"expression_embedder_nw\.net_face\.net\.fc", lambda m: D + "expression_encoder.to_features"),
    (r"expression_embedder_nw\.net_face\.net\.(.+)", lambda m: D + f"expression_encoder.trunk.{m[1]}"),
    (r"expression_embedder_nw\.net_face\.pose_head", lambda m: D + "expression_encoder.to_expression"),
    # one embedding shared by both warping generators: each of ours carries a copy
    (r"pose_unsqueeze_nw", lambda m: [S + "source_warp.embedding.expression_to_map",
                                      G + "driver_warp.embedding.expression_to_map"]),
    (r"warp_embed_head_orig_nw", lambda m: [S + "source_warp.embedding.mix", G + "driver_warp.embedding.mix"]),
    *_warp("xy_generator_nw", S + "source_warp."),
    *_warp("uv_generator_nw", G + "driver_warp."),
    (r"volume_process_nw\.blocks_3d_down\.(\d+)\.(.+)",
     lambda m: _join(S + f"canonical_generator.down.{m[1]}.", _resblock(m[2]))),
    (r"volume_process_nw\.blocks_3d_up\.(\d+)\.(.+)",
     lambda m: _join(S + f"canonical_generator.up.{m[1]}.", _resblock(m[2]))),
    (r"volume_process_nw\.skip_blocks_3d_up\.(\d+)\.(.+)",
     lambda m: _join(S + f"canonical_generator.skips.{m[1]}.", _resblock(m[2]))),
    (r"volume_process_nw\.head\.0", lambda m: S + "canonical_generator.head_norm"),
    (r"volume_process_nw\.head\.2", lambda m: S + "canonical_generator.head"),
    (r"decoder_nw\.res_decoder\.0", lambda m: G + "image_generator.projection"),
    (r"decoder_nw\.res_decoder\.(\d+)\.(.+)",
     lambda m: _join(G + f"image_generator.blocks.{int(m[1]) - 1}.", _resblock(m[2]))),
    (r"decoder_nw\.img_decoder\.dec_img_blocks\.(\d+)\.(.+)",
     lambda m: _join(G + f"image_generator.up_stages.{int(m[1]) // 2}.{int(m[1]) % 2}.", _resblock(m[2]))),
    (r"decoder_nw\.img_decoder\.dec_img_head\.0", lambda m: G + "image_generator.to_rgb_norm"),
    (r"decoder_nw\.img_decoder\.dec_img_head\.2", lambda m: G + "image_generator.to_rgb"),
]

# parameters held directly by a network rather than by one of its layers
PARAMETER_RULES = [
    (r"volume_process_nw\.input_tensor", lambda m: [S + "canonical_generator.bottom"]),
    (r"(xy|uv)_generator_nw\.projector\.(u|v)\.(\d+)",
     lambda m: [(S + "source_warp." if m[1] == "xy" else G + "driver_warp.")
                + f"blocks.{int(m[3]) // 2}.norm{int(m[3]) % 2 + 1}."
                + ("channel_projection" if m[2] == "u" else "spatial_projection")]),
]

HEAD_POSE_PREFIX = D + "head_pose."


class ConversionError(ValueError):
    """Their checkpoint does not have the layout this converter knows."""


@dataclass
class Conversion:
    """Our state dict and how every key of theirs was used."""

    state_dict: dict = field(default_factory=dict)
    folded: dict = field(default_factory=lambda: {"spectral_norm": 0, "weight_standardisation": 0, "batch_norm": 0})
    used: int = 0
    dropped: dict = field(default_factory=dict)        # reason -> count
    recomputed: int = 0


def _targets(module_path: str) -> list | None:
    for pattern, target in MODULE_RULES:
        m = re.fullmatch(pattern, module_path)
        if m:
            result = target(m)
            if result is None:
                return None
            return result if isinstance(result, list) else [result]
    return None


def _group(state: dict) -> dict:
    groups: dict = {}
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".")
        groups.setdefault(module, {})[leaf] = tensor
    return groups


def map_model_state(theirs: dict, conversion: Conversion | None = None) -> Conversion:
    """Their stage-1 state dict -> ``conversion.state_dict`` (our keys, folded weights)."""
    conversion = conversion or Conversion()
    unknown = []
    remaining = {}
    for key, tensor in theirs.items():
        reason = next((why for prefix, why in DROPPED.items() if key.startswith(prefix)), None)
        if reason is not None:
            conversion.dropped[reason] = conversion.dropped.get(reason, 0) + 1
            continue
        if any(re.fullmatch(pattern, key) for pattern in RECOMPUTED):
            conversion.recomputed += 1
            continue
        rule = next(((p, t) for p, t in PARAMETER_RULES if re.fullmatch(p, key)), None)
        if rule is not None:
            for ours in rule[1](re.fullmatch(rule[0], key)):
                conversion.state_dict[ours] = tensor.detach().float().clone()
            conversion.used += 1
            continue
        remaining[key] = tensor
    for module, leaves in _group(remaining).items():
        targets = _targets(module)
        if targets is None:
            unknown += [f"{module}.{leaf}" for leaf in leaves]
            continue
        for leaf_name, tensor in _folded(module, leaves, conversion).items():
            for ours in targets:
                conversion.state_dict[f"{ours}.{leaf_name}"] = tensor
        conversion.used += len(leaves)
    if unknown:
        shown = ", ".join(sorted(unknown)[:5])
        raise ConversionError(f"{len(unknown)} key(s) of the checkpoint match no EMOPortraits network this converter "
                              f"knows (e.g. {shown}); is it a stage-1 base model (models/stage_1/volumetric_avatar)?")
    return conversion


def _folded(module: str, leaves: dict, conversion: Conversion) -> dict:
    """One of their layers' tensors -> ours (weight folded where it was reparameterised)."""
    leaves = {name: t.detach().float() for name, t in leaves.items()}
    if "weight_orig" in leaves:
        missing = {"weight_u", "weight_v"} - set(leaves)
        if missing:
            raise ConversionError(f"{module}: spectral norm without {', '.join(sorted(missing))}")
        out = {"weight": fold_spectral_norm(leaves.pop("weight_orig"), leaves.pop("weight_u"), leaves.pop("weight_v"))}
        conversion.folded["spectral_norm"] += 1
    elif "weight" in leaves and leaves["weight"].dim() >= 3:
        if "bias" not in leaves:
            raise ConversionError(f"{module}: a conv without spectral norm and without a bias; their weight-"
                                  "standardised convs always have one")
        out = {"weight": fold_weight_standardisation(leaves.pop("weight"))}
        conversion.folded["weight_standardisation"] += 1
    else:
        out = {}
    unexpected = set(leaves) - {"weight", "bias"}
    if unexpected:
        raise ConversionError(f"{module}: unexpected entries {', '.join(sorted(unexpected))}")
    out.update({name: t.clone() for name, t in leaves.items()})
    return out


_POSE_CONV_NORM = (("conv1", "bn1"), ("conv2", "bn2"), ("downsample.0", "downsample.1"))


def map_head_pose_state(theirs: dict, conversion: Conversion | None = None) -> Conversion:
    """Their head_pose_regressor.pth (torchvision ResNet-18, BatchNorm, fc 512 -> 9) -> ours."""
    conversion = conversion or Conversion()
    groups = _group({k: v for k, v in theirs.items() if not k.endswith("num_batches_tracked")})
    conversion.dropped["BatchNorm step counters"] = sum(k.endswith("num_batches_tracked") for k in theirs)
    for module, leaves in groups.items():
        if module == "fc":
            for leaf, tensor in leaves.items():
                conversion.state_dict[f"{HEAD_POSE_PREFIX}fc.{leaf}"] = tensor.detach().float().clone()
            conversion.used += len(leaves)
            continue
        norm = next((module[: -len(c)] + n for c, n in _POSE_CONV_NORM if module.endswith(c)
                     and (module == c or module.endswith("." + c))), None)
        if norm is None:
            if module.endswith(("bn1", "bn2", "downsample.1")):
                continue          # folded into the conv before it
            raise ConversionError(f"head-pose file: {module} is not a layer of a torchvision ResNet-18")
        bn = groups.get(norm)
        if bn is None or set(bn) < {"weight", "bias", "running_mean", "running_var"}:
            raise ConversionError(f"head-pose file: {module} has no BatchNorm {norm} with running statistics")
        weight, bias = fold_batch_norm(leaves["weight"].float(), leaves.get("bias"), bn["weight"].float(),
                                       bn["bias"].float(), bn["running_mean"].float(), bn["running_var"].float())
        conversion.state_dict[f"{HEAD_POSE_PREFIX}trunk.{module}.weight"] = weight
        conversion.state_dict[f"{HEAD_POSE_PREFIX}trunk.{module}.bias"] = bias
        conversion.folded["batch_norm"] += 1
        conversion.used += len(leaves) + len(bn)
    return conversion


def load_into(model: torch.nn.Module, conversion: Conversion) -> None:
    """Load the mapped weights, requiring every tensor of ``model`` to be filled with its shape."""
    own = model.state_dict()
    missing = sorted(set(own) - set(conversion.state_dict))
    extra = sorted(set(conversion.state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(conversion.state_dict) if own[k].shape != conversion.state_dict[k].shape)
    if missing or extra or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} of our tensors not filled (e.g. {missing[0]})")
        if extra:
            details.append(f"{len(extra)} mapped tensors with no place (e.g. {extra[0]})")
        if wrong:
            k = wrong[0]
            details.append(f"{len(wrong)} shape mismatches (e.g. {k}: ours {tuple(own[k].shape)}, "
                           f"theirs {tuple(conversion.state_dict[k].shape)})")
        raise ConversionError("the checkpoint does not fit the emoportraits preset: " + "; ".join(details)
                              + " (trained with other arguments than the released model?)")
    model.load_state_dict(conversion.state_dict, strict=True)
