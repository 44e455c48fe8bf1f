"""G_enh: the network's shapes and structure, and what ``describe --enhancer`` reports."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from megaportraits_export import describe
from megaportraits_export.networks.blocks import ResBlock2d
from megaportraits_export.networks.enhancer import PRESETS, EnhancerConfig, build_enhancer, get_enhancer_config


def _randomised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The model with every parameter random (the last conv starts at zero otherwise)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("preset", ["tiny", "tiny_matte"])
def test_forward_doubles_the_side_in_range(preset):
    config = get_enhancer_config(preset)
    model = _randomised(build_enhancer(config), seed=1)
    image = torch.rand(2, config.channels, config.base_size, config.base_size, generator=torch.Generator().manual_seed(2))
    out = model(image)
    assert out.shape == (2, config.channels, 2 * config.base_size, 2 * config.base_size)
    assert float(out.detach().min()) >= 0.0 and float(out.detach().max()) <= 1.0
    # random weights do change the image: the residual branch is live
    bicubic = torch.nn.functional.interpolate(image, scale_factor=2, mode="bicubic", align_corners=False)
    assert float((out - bicubic).detach().abs().mean()) > 1e-3
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_untrained_enhancer_is_bicubic_upsampling():
    """Against OpenCV's bicubic resize (half-pixel centres, a = -0.75), an independent implementation."""
    config = get_enhancer_config("tiny")
    model = build_enhancer(config).eval()
    rng = np.random.default_rng(3)
    image = rng.random((config.base_size, config.base_size, 3), dtype=np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(image).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    side = config.output_size
    expected = np.clip(cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC), 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_structure_is_the_papers():
    """Encoder conv + 2 residual blocks; 8 decoder blocks; 2 upsampling stages; 3 at the high side."""
    model = build_enhancer("paper512")
    assert isinstance(model.encoder[0], torch.nn.Conv2d)
    assert [type(m) for m in model.encoder[1:]] == [ResBlock2d, ResBlock2d]
    assert len(model.decoder) == 8 and len(model.up_stages) == 2 and len(model.high) == 3
    assert PRESETS["paper512"].output_size == 1024 and PRESETS["demo128"].output_size == 256


def test_config_round_trip_and_refusals():
    config = PRESETS["demo128"]
    assert EnhancerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="channels must be 3"):
        config.replace(channels=2)
    with pytest.raises(ValueError, match="unknown enhancer preset"):
        get_enhancer_config("huge")


def test_describe_counts_macs_like_torchs_flop_counter():
    """MACs from describe's meta run == half the FLOPs torch's own counter sees on a real forward."""
    report = describe.describe_enhancer("tiny", batch=2)
    config = get_enhancer_config("tiny")
    model = build_enhancer(config).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(2, 3, config.base_size, config.base_size))
    conv_flops = sum(n for op, n in counter.get_flop_counts()["Global"].items() if "convolution" in str(op))
    assert report["macs_per_sample"] == conv_flops // 2 // 2
    assert report["parameters"] == sum(p.numel() for p in model.parameters())
    assert report["output_shape"] == [2, 3, 128, 128]


def test_describe_peak_memory_is_bounded_by_the_tensors_of_the_forward():
    """At least the input and output held together plus the widest activation's twin; at most every
    tensor the forward creates."""
    config = get_enhancer_config("tiny")
    report = describe.describe_enhancer("tiny")
    side, channels = config.output_size, config.up_channels[-1]
    output = 4 * config.channels * side * side
    widest = 4 * channels * side * side  # a high-side activation: a residual block holds two of them
    assert report["peak_activation_bytes"] >= output + 2 * widest

    class Everything(describe._LiveTensorBytes):
        def _free(self, size):  # never freed: the total of all creations
            pass

    model = build_enhancer(config).eval()
    counter = Everything()
    with torch.device("meta"), torch.no_grad(), counter:
        model.to("meta")(torch.empty(1, 3, config.base_size, config.base_size))
    assert report["peak_activation_bytes"] < counter.peak


def test_describe_cli_enhancer_json(capsys):
    assert describe.main(["--enhancer", "paper512", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input_shape"] == [1, 3, 512, 512] and report["output_shape"] == [1, 3, 1024, 1024]
    assert report["peak_memory_bytes"] > report["fp32_weight_bytes"] > 0
    assert report["macs_per_sample"] == sum(part["macs_per_sample"] for part in report["parts"])


def test_enhancement_scores_against_bicubic_on_heldout_identities(one_torch_thread):
    """An untrained enhancer is bicubic upsampling: its super-resolution scores must equal the
    bicubic baseline's and those of OpenCV's bicubic resize of the area-downsampled truth."""
    from megaportraits_export.evaluation.enhancement import enhancement_scores
    from megaportraits_export.evaluation.pairs import heldout_pairs
    from megaportraits_export.metrics import psnr
    from megaportraits_export.model import build_model

    torch.manual_seed(0)
    base, enhancer = build_model("tiny"), build_enhancer("tiny")
    scores = enhancement_scores(base, enhancer, pairs=3, identities=4, batch_size=2)
    truth = heldout_pairs(3, 128, 0, 4).target
    ours = []
    for image in truth.permute(0, 2, 3, 1).numpy():
        low = cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA)
        ours.append(cv2.resize(low, (128, 128), interpolation=cv2.INTER_CUBIC))
    expected = psnr(torch.from_numpy(np.stack(ours)).permute(0, 3, 1, 2).clamp(0, 1), truth).mean()
    assert scores["super_resolution"]["enhanced"]["psnr"] == pytest.approx(float(expected), abs=1e-3)
    assert scores["super_resolution"]["bicubic"]["psnr"] == pytest.approx(float(expected), abs=1e-3)
    for task in ("self_reenactment", "super_resolution"):
        assert set(scores[task]) == {"enhanced", "bicubic"}
        assert all(np.isfinite(v) for m in scores[task].values() for v in m.values())


def test_enhancement_scores_of_a_matte_model_composite_at_2x(one_torch_thread):
    from megaportraits_export.evaluation.enhancement import enhancement_scores
    from megaportraits_export.model import build_model

    torch.manual_seed(0)
    scores = enhancement_scores(build_model("tiny_matte"), build_enhancer("tiny_matte"), pairs=2, identities=2)
    assert all(np.isfinite(v) for t in scores.values() for m in t.values() for v in m.values())


def test_by_channel_scores_say_whether_the_colours_or_the_matte_differ_from_bicubic(one_torch_thread):
    """An enhancer whose residual touches only the colours: its ``colours`` scores are its own and
    its ``matte`` scores bicubic's, on both tasks (and the reverse for a matte-only residual)."""
    from megaportraits_export.evaluation.enhancement import enhancement_scores
    from megaportraits_export.model import build_model

    torch.manual_seed(0)
    base = build_model("tiny_matte")
    for changed, same in (("colours", "matte"), ("matte", "colours")):
        enhancer = build_enhancer("tiny_matte")
        with torch.no_grad():
            rows = slice(0, 3) if changed == "colours" else slice(3, 4)
            enhancer.to_residual[-1].weight[rows].normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
        scores = enhancement_scores(base, enhancer, pairs=2, identities=2, by_channel=True)
        for task in ("self_reenactment", "super_resolution"):  # the linear path is bicubic up to float rounding
            assert scores[task][changed] == pytest.approx(scores[task]["enhanced"], abs=1e-6)
            assert scores[task][same] == pytest.approx(scores[task]["bicubic"], abs=1e-6)
        assert scores["self_reenactment"]["enhanced"]["psnr"] != pytest.approx(
            scores["self_reenactment"]["bicubic"]["psnr"], abs=1e-6)
    with pytest.raises(ValueError, match="has no matte"):
        enhancement_scores(build_model("tiny"), build_enhancer("tiny"), pairs=1, identities=2, by_channel=True)


def test_evaluate_enhancer_command_stores_its_scores_for_the_manifest(tmp_path, capsys, one_torch_thread):
    """The command prints the table and, with --write-provenance, leaves the same scores in the
    enhancer checkpoint, which still loads (and keeps its weights)."""
    from megaportraits_export import checkpoint
    from megaportraits_export.config import get_config
    from megaportraits_export.evaluation import enhancement
    from megaportraits_export.model import build_model
    from megaportraits_export.training.enhancement import load_enhancer_checkpoint

    torch.manual_seed(0)
    base = checkpoint.save_checkpoint(tmp_path / "base.pt", build_model("tiny"), get_config("tiny"), "tiny", {})
    model = _randomised(build_enhancer("tiny"), seed=4)
    path = checkpoint.save_checkpoint(tmp_path / "enh.pt", model, model.config, "tiny", {"kind": "enhancer"})
    argv = ["--base", str(base), "--enhancer", str(path), "--pairs", "2", "--identities", "2", "--json"]
    assert enhancement.main(argv + ["--write-provenance"]) == 0
    printed = json.loads(capsys.readouterr().out.split("\nscores stored")[0])
    reloaded, _, provenance = load_enhancer_checkpoint(path)
    stored = provenance["metrics"]["evaluation"]
    assert stored["enhancement"] == printed and stored["pairs"] == 2 and provenance["kind"] == "enhancer"
    assert printed["super_resolution"]["enhanced"]["psnr"] != printed["super_resolution"]["bicubic"]["psnr"]
    for k, v in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[k], v)


@pytest.mark.parametrize("taps", [6, 8])
def test_linear_path_starts_as_bicubic_upsampling(taps):
    """The linear path's initial taps are bicubic's, borders included: against OpenCV's bicubic
    resize (half-pixel centres, a = -0.75, replicated borders), an independent implementation."""
    config = get_enhancer_config("tiny_matte").replace(linear_taps=taps)
    model = build_enhancer(config)
    rng = np.random.default_rng(taps)
    image = rng.random((config.base_size, config.base_size, 3), dtype=np.float32)
    with torch.no_grad():
        out = model.linear_upsampling(torch.from_numpy(image).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    side = config.output_size
    np.testing.assert_allclose(out, cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC), atol=1e-5)


def test_contrast_gate_keeps_flat_regions_bicubic():
    """With random weights everywhere, the colours of a flat region (5 x 5 grey variance zero
    in the bicubic image) are bicubic's exactly; where the image varies they are not."""
    config = get_enhancer_config("tiny_matte")
    model = _randomised(build_enhancer(config), seed=4)
    g = torch.Generator().manual_seed(5)
    image = torch.rand(1, 4, config.base_size, config.base_size, generator=g)
    half = config.base_size // 2
    image[:, :3, :, :half] = torch.tensor([0.3, 0.5, 0.7]).view(1, 3, 1, 1)   # flat left half
    with torch.no_grad():
        out = model(image)
    bicubic = torch.nn.functional.interpolate(image, scale_factor=2, mode="bicubic", align_corners=False)
    flat = (slice(None), slice(0, 3), slice(None), slice(0, 2 * half - 8))  # clear of the edge's window
    assert torch.equal(out[flat], bicubic[flat].clamp(0, 1))
    textured = (slice(None), slice(0, 3), slice(None), slice(2 * half + 8, None))
    assert float((out[textured] - bicubic[textured].clamp(0, 1)).abs().mean()) > 1e-3
    assert float((out[:, 3:] - bicubic[:, 3:].clamp(0, 1)).abs().mean()) > 1e-3  # the matte is not gated


def test_config_refuses_bad_linear_taps_and_gate():
    with pytest.raises(ValueError, match="linear_taps"):
        PRESETS["demo128"].replace(linear_taps=4)
    with pytest.raises(ValueError, match="contrast_gate"):
        PRESETS["demo128"].replace(contrast_gate=-1.0)
    # a config saved before these fields loads as the plain layout
    old = {k: v for k, v in PRESETS["demo128"].to_dict().items() if k not in ("skips", "linear_taps", "contrast_gate")}
    assert EnhancerConfig.from_dict(old) == PRESETS["demo128"].replace(skips=False, linear_taps=0, contrast_gate=0.0)
