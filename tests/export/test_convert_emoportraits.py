"""The EMOPortraits converter without their code: key layout, weight folds, parameter counts.

``fixtures/emoportraits_keys.json`` records, as facts, every key and shape of their stage-1 state
dict and of their head-pose file, generated once from their code by
``tools/parity_emoportraits.py --size full --write-fixture``. Values are made up here.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from megaportraits_export.config import get_config
from megaportraits_export.convert.emoportraits import folds
from megaportraits_export.convert.emoportraits.command import config_from_arguments, main, read_arguments
from megaportraits_export.convert.emoportraits.keymap import (RECOMPUTED, ConversionError, load_into,
                                                              map_head_pose_state, map_model_state)
from megaportraits_export.model import build_model

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "emoportraits_keys.json").read_text())
NOT_PARAMETERS = ("weight_u", "weight_v", "running_mean", "running_var", "num_batches_tracked")
# entries a real checkpoint also holds (their training-only networks, saved by train.py), made-up shapes
TRAINING_ONLY = {"discriminator_ds.nets.0.blocks.0.conv.weight_orig": [64, 3, 4, 4],
                 "affine_match_loss.net.fc.weight": [9, 512]}


def _meta_state(layout: dict) -> dict:
    return {key: torch.empty(shape, device="meta") for key, shape in layout.items()}


def test_the_key_map_covers_their_full_layout_and_fills_every_tensor_of_the_preset():
    theirs = _meta_state({**FIXTURE["model"], **TRAINING_ONLY})
    conversion = map_model_state(theirs)
    map_head_pose_state(_meta_state(FIXTURE["head_pose"]), conversion)
    dropped = sum(conversion.dropped.values())
    assert conversion.used + dropped + conversion.recomputed == len(theirs) + len(FIXTURE["head_pose"])
    assert conversion.dropped["the discriminator"] == 1 and conversion.dropped["a loss network"] == 1
    # the reparameterisations their Model applies to the released networks: 110 SN, 65 WS modules
    assert conversion.folded == {"spectral_norm": 110, "weight_standardisation": 65, "batch_norm": 20}
    with torch.device("meta"):
        model = build_model("emoportraits")
    load_into(model, conversion)    # raises unless every tensor of ours is filled with its shape


def test_an_unknown_key_stops_the_conversion_and_is_named():
    theirs = _meta_state({**FIXTURE["model"], "perceptual_loss.vgg.0.weight": [64, 3, 3, 3]})
    with pytest.raises(ConversionError, match="perceptual_loss.vgg.0.weight"):
        map_model_state(theirs)


def _their_parameter_count(layout: dict, prefixes: tuple) -> int:
    import math
    import re
    return sum(math.prod(shape) for key, shape in layout.items()
               if key.startswith(prefixes) and not key.endswith(NOT_PARAMETERS)
               and not any(re.fullmatch(p, key) for p in RECOMPUTED))


def test_the_preset_has_their_parameter_counts_network_by_network():
    with torch.device("meta"):
        model = build_model("emoportraits")
    count = lambda module: sum(p.numel() for p in module.parameters())
    theirs = FIXTURE["model"]
    sb, gen = model.source_branch, model.generator
    pairs = {
        ("local_encoder_nw.", "volume_source_nw."): count(sb.appearance_encoder),
        ("idt_embedder_nw.",): count(sb.global_descriptor),
        ("expression_embedder_nw.",): count(sb.driver_branch.expression_encoder),
        ("pose_unsqueeze_nw.", "warp_embed_head_orig_nw."): count(sb.source_warp.embedding),
        ("xy_generator_nw.",): count(sb.source_warp) - count(sb.source_warp.embedding),
        ("uv_generator_nw.",): count(gen.driver_warp) - count(gen.driver_warp.embedding),
        ("volume_process_nw.",): count(sb.canonical_generator),
        ("decoder_nw.",): count(gen.image_generator),
    }
    for prefixes, ours in pairs.items():
        assert ours == _their_parameter_count(theirs, prefixes), prefixes
    # head pose: their BatchNorms (weight + bias per channel) become one conv bias per channel
    bn_channels = sum(shape[0] for key, shape in FIXTURE["head_pose"].items()
                      if key.endswith(("bn1.weight", "bn2.weight", "downsample.1.weight")))
    assert count(sb.driver_branch.head_pose) == _their_parameter_count(FIXTURE["head_pose"], ("",)) - bn_channels


def test_the_preset_is_their_released_model():
    config = get_config("emoportraits")
    assert config.expression_dim == 128 and config.image_up_channels == (320, 192, 128)
    assert config.volume_shape == (96, 16, 64, 64) and config.descriptor_shape == (512, 4, 4)


def test_their_released_arguments_give_the_preset(tmp_path):
    released = dict(image_size=512, latent_volume_size=64, latent_volume_depth=16, latent_volume_channels=96,
                    gen_latent_texture_size=64, gen_latent_texture_depth=16, gen_latent_texture_channels=96,
                    warp_output_size=64, gen_num_channels=32, gen_max_channels=512, enc_channel_mult=4,
                    source_volume_num_blocks=3, idt_backbone="resnet50", idt_image_size=256, idt_output_channels=512,
                    idt_output_size=4, lpe_face_backbone="resnet18", exp_image_size=256,
                    lpe_output_channels_expression=128, gen_embed_size=4, warp_channel_mult=1.0,
                    gen_dummy_input_size=8, gen_max_channels_unet3d=512, dec_channel_mult=2, dec_max_channels=512,
                    dec_num_blocks=6, im_dec_ch_div_factor=1.5, im_dec_num_lrs_per_resolution=2,
                    norm_layer_type="gn")
    assert config_from_arguments(released) == get_config("emoportraits")
    # the same arguments as their train.py saves them (logs/<experiment>/args.txt: name: value lines)
    args_txt = tmp_path / "args.txt"
    args_txt.write_text("".join(f"{k}: {v}\n" for k, v in released.items()) + "experiment_name: x y\n")
    assert config_from_arguments(read_arguments(args_txt)) == get_config("emoportraits")
    args_txt.write_text("image_size 512\n")
    with pytest.raises(ConversionError, match="not a 'name: value' line"):
        read_arguments(args_txt)
    with pytest.raises(ConversionError, match="use_back"):
        config_from_arguments({**released, "use_back": True})


# ---- the folds against the unfolded computations --------------------------------------------------
def test_spectral_norm_fold_equals_torchs_spectral_norm_in_eval_mode():
    torch.manual_seed(0)
    conv = nn.utils.spectral_norm(nn.Conv2d(8, 16, 3, padding=1))
    x = torch.randn(2, 8, 10, 10)
    conv.train()
    for _ in range(3):
        conv(x)                                   # power iterations update u, v
    conv.eval()
    state = conv.state_dict()
    weight = folds.fold_spectral_norm(state["weight_orig"], state["weight_u"], state["weight_v"])
    torch.testing.assert_close(F.conv2d(x, weight, state["bias"], padding=1), conv(x), rtol=1e-5, atol=1e-6)


def test_weight_standardisation_fold_equals_standardising_at_every_call():
    torch.manual_seed(1)
    weight, bias, x = torch.randn(16, 8, 3, 3, 3) * 0.3 + 0.1, torch.randn(16), torch.randn(1, 8, 6, 6, 6)
    flat = weight.double().reshape(16, -1)
    n = flat.shape[1]
    mean = flat.sum(1, keepdim=True) / n
    std = (((flat - mean) ** 2).sum(1, keepdim=True) / (n - 1)).sqrt()       # unbiased, as theirs
    reference = F.conv3d(x.double(), ((flat - mean) / (std + 1e-5)).reshape_as(weight), bias.double(), padding=1)
    folded = F.conv3d(x, folds.fold_weight_standardisation(weight), bias, padding=1)
    torch.testing.assert_close(folded.double(), reference, rtol=1e-5, atol=1e-5)


def test_batch_norm_fold_equals_conv_then_eval_batch_norm():
    torch.manual_seed(2)
    conv, bn = nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    bn.eval()
    x = torch.randn(2, 4, 8, 8)
    weight, bias = folds.fold_batch_norm(conv.weight, None, bn.weight, bn.bias, bn.running_mean, bn.running_var)
    torch.testing.assert_close(F.conv2d(x, weight, bias, padding=1), bn(conv(x)), rtol=1e-5, atol=1e-5)


def test_the_command_refuses_a_file_that_is_not_a_state_dict(tmp_path, capsys):
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(bad), "--head-pose", str(bad), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("megaportraits_export: error: checkpoint") and "Traceback" not in "".join(err)
    assert not (tmp_path / "out").exists()


def test_green_key_recovers_the_matte_and_colours_of_a_person_composited_on_their_green():
    from megaportraits_export.convert.emoportraits.networks import green_key
    g = torch.Generator().manual_seed(3)
    alpha = torch.rand(1, 1, 16, 16, generator=g)
    red = 0.2 + 0.8 * torch.rand(1, 1, 16, 16, generator=g)
    # colours whose green equals their red (>= blue): the key is exact for them
    person = torch.cat((red, red, red * torch.rand(1, 1, 16, 16, generator=g)), dim=1)
    green = torch.tensor((0.0, 1.0, 0.0)).reshape(1, 3, 1, 1)
    rgba = green_key(alpha * person + (1 - alpha) * green)
    torch.testing.assert_close(rgba[:, 3:], alpha, atol=1e-5, rtol=0)
    visible = alpha > 0.05
    torch.testing.assert_close(rgba[:, :3][visible.expand(-1, 3, -1, -1)], person[visible.expand(-1, 3, -1, -1)],
                               atol=1e-3, rtol=0)
    # skin (green below red) on the backdrop: never more transparent than it is
    skin = torch.tensor((0.8, 0.55, 0.45)).reshape(1, 3, 1, 1)
    keyed = green_key(alpha * skin + (1 - alpha) * green)[:, 3:]
    assert bool((keyed >= alpha - 1e-6).all()) and bool((green_key(green)[:, 3:] == 0).all())
