"""The expression edit (networks/expression_edit.py, presets ``tiny_wse`` / ``demo128_wse``): the
source redrawn with the driver's expression before the source-pixel path moves it. Checked against
what holds by construction (the gate, the zero start), a hand-written loss, the renderer's own
edit targets, and the exported bundle against PyTorch."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from megaportraits_export import onnx_export
from megaportraits_export.config import get_config
from megaportraits_export.data import synthetic
from megaportraits_export.data.expression_pairs import ExpressionPairHeads, expression_region
from megaportraits_export.model import build_model, split_matte
from megaportraits_export.networks.expression_edit import GATE_SCALE, ExpressionEdit
from megaportraits_export.training.objectives import LossComputer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randomised(module: torch.nn.Module, seed: int, scale: float = 0.3) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(scale * torch.randn(parameter.shape, generator=g))
    return module.eval()


def test_a_new_edit_leaves_the_source_as_it_is():
    torch.manual_seed(0)
    edit = ExpressionEdit(get_config("tiny_wse")).eval()
    image, change = torch.rand(2, 3, 64, 64), torch.randn(2, 16)
    assert torch.equal(edit(image, change), image)


def test_equal_codes_leave_the_source_unedited_whatever_the_weights():
    edit = _randomised(ExpressionEdit(get_config("tiny_wse")), seed=1)
    image = torch.rand(3, 3, 64, 64)
    change = torch.randn(3, 16)
    change[1] = 0.0                                      # the source's own expression
    with torch.no_grad():
        edited = edit(image, change)
    assert torch.equal(edited[1], image[1])
    assert (edited[0] - image[0]).abs().mean() > 1e-3 and (edited[2] - image[2]).abs().mean() > 1e-3


def test_the_gate_is_tanh_of_the_squared_change_over_tau_squared():
    edit = ExpressionEdit(get_config("tiny_wse"))
    change = torch.tensor([[0.0] * 16, [0.1] + [0.0] * 15, [0.03, 0.04] + [0.0] * 14], dtype=torch.float64)
    want = np.tanh(np.array([0.0, 0.01, 0.0025]) / GATE_SCALE ** 2)
    np.testing.assert_allclose(edit.gate(change).flatten().numpy(), want, rtol=1e-12)
    assert want[1] == pytest.approx(np.tanh(1.0))


def test_the_generator_moves_the_edited_source_and_the_self_driven_source_is_unchanged():
    torch.manual_seed(2)
    model = build_model("tiny_wse").eval()
    _randomised(model.generator.expression_edit, seed=3)
    source, driver = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model(source, driver)
        avatar, motion = out["avatar"], out["motion"]
        want = model.generator.expression_edit(source, motion.expression - avatar.expression)
        assert torch.equal(out["edited_source"], want)
        rendered = model.generator.render(avatar.canonical_volume, avatar.global_descriptor, *motion,
                                          *avatar.source_pixels)
        assert torch.equal(rendered[3], want)              # the generator hands back what it moved
        self_driven = model(source, source)
        assert torch.equal(self_driven["edited_source"], source)
    with pytest.raises(ValueError, match="warped_source"):
        get_config("tiny").replace(name="bad", expression_edit_channels=(4, 8))


def test_the_edit_term_is_the_pyramid_l1_plus_the_region_l1():
    rng = np.random.default_rng(4)
    edited, target, prediction = (torch.from_numpy(rng.random((2, 3, 16, 16))) for _ in range(3))
    region = torch.from_numpy((rng.random((2, 1, 16, 16)) < 0.1).astype(np.float64))
    computer = LossComputer({"l1": 0.0, "perceptual": 0.0, "adversarial": 0.0, "feature_matching": 0.0,
                             "expression_edit": 2.0}, torch.device("cpu"), l1_scales=2)
    batch = {"driver": prediction, "source_edit_target": target, "source_edit_region": region}
    total, logged = computer.generator({"prediction": prediction, "matte": None, "edited_source": edited}, batch, None)

    def pool(x):
        return x.reshape(*x.shape[:2], x.shape[2] // 2, 2, x.shape[3] // 2, 2).mean(axis=(3, 5))

    def in_region(p, t, r):
        w = np.broadcast_to(r, p.shape)
        return np.sum(np.abs(p - t) * w) / max(np.sum(w), 1.0)

    e, t, r = edited.numpy(), target.numpy(), region.numpy()
    pyramid = 0.5 * (np.abs(e - t).mean() + np.abs(pool(e) - pool(t)).mean())
    regional = 0.5 * (in_region(e, t, r) + in_region(pool(e), pool(t), pool(r)))
    assert float(total) == pytest.approx(2.0 * (pyramid + regional), rel=1e-9)
    assert logged["expression_edit"] == pytest.approx(2.0 * (pyramid + regional))
    with pytest.raises(ValueError, match="expression edit"):
        computer.generator({"prediction": prediction, "matte": None}, batch, None)


def test_the_pairs_edit_target_is_the_source_drawn_with_the_drivers_expression():
    heads = ExpressionPairHeads(num_identities=5, size=64, seed=6, length=10, strong_fraction=1.0)
    item = heads[3]
    identity = synthetic.Identity.sample(int(item["identity"]))
    source_pose = synthetic.Pose.from_model_parameters(item["source_pose_params"].tolist())
    driver_expression = synthetic.Expression(*item["driver_expression_params"].tolist())
    want = synthetic.render(identity, source_pose, driver_expression, 64)
    got = (item["source_edit_target"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    source = (item["source"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    region = expression_region(want, source)
    assert region.any() and np.array_equal(item["source_edit_region"][0].numpy() > 0, region)


@pytest.mark.parametrize("preset", ["tiny_wse", "tiny_wsep"])   # the latter through a pinhole camera
def test_a_bundle_with_the_edit_renders_what_pytorch_renders(tmp_path, preset):
    from megaportraits.animator import Animator

    model, config = onnx_export.random_model(preset, 0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():   # the path and the edit weigh on the rendering, so a mis-wired edit shows
        for name, parameter in model.named_parameters():
            if any(part in name for part in ("source_pixels.", "source_inputs.", "source_blend.", "expression_edit.")):
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=g))
    exported = onnx_export.export_graphs(model, config, preset, {"weights": "random-init", "seed": 0})
    bundle = onnx_export.write_bundle(exported, tmp_path / "bundle", verify_against=model)
    rng = np.random.default_rng(7)
    source, driver = (np.clip(cv2.resize(rng.uniform(0, 255, (8, 8, 3)), (64, 64), interpolation=cv2.INTER_CUBIC),
                              0, 255).astype(np.uint8) for _ in range(2))
    with Animator(bundle, provider="cpu", threads=1, crop=False, paste_back=False, motion="absolute",
                  background="generated") as animator:
        avatar = animator.prepare(source)
        performance = animator.performance(avatar)
        motion = performance._driver_motion(driver)
        got = performance._generate(motion)

    def t(x):
        return torch.from_numpy(np.asarray(x, np.float32))

    with torch.no_grad():
        inputs = [t(avatar.generator_inputs[n]) for n in ("source_image", "source_pose", "source_expression")]
        want = split_matte(model.generator(t(avatar.canonical_volume), t(avatar.global_descriptor),
                                           t(motion.pose), t(motion.expression), *inputs))[0].numpy()
        unedited = split_matte(model.generator(t(avatar.canonical_volume), t(avatar.global_descriptor),
                                               t(motion.pose), t(motion.expression), inputs[0], inputs[1],
                                               t(motion.expression)))[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(want - unedited).max() > 1e-2        # the edit is in the graph and matters


def test_edit_pretraining_moves_the_edit_alone_and_never_overwrites_its_start(tmp_path, capsys, repo_script):
    from megaportraits_export.checkpoint import load_model_from_checkpoint, save_checkpoint

    torch.manual_seed(8)
    start = build_model("tiny_ws")
    init = save_checkpoint(tmp_path / "init.pt", start, start.config, "tiny_ws", {"weights": "random-init"})
    tool = repo_script("tools/pretrain_expression_edit.py")
    assert tool.main([str(init), "-o", str(init), "--preset", "tiny_wse"]) == 1
    assert "overwrite" in capsys.readouterr().err
    assert tool.main([str(init), "-o", str(tmp_path / "bad.pt"), "--preset", "tiny_ws"]) == 1
    assert "no expression edit" in capsys.readouterr().err
    out = tmp_path / "edit.pt"
    assert tool.main([str(init), "-o", str(out), "--preset", "tiny_wse", "--steps", "3", "--batch-size", "2",
                      "--no-progress"]) == 0
    model, config, _ = load_model_from_checkpoint(out)
    assert config.expression_edit_channels == (4, 8)
    trained, started = model.state_dict(), start.state_dict()
    for name, value in trained.items():
        if name.startswith("generator.expression_edit."):
            continue
        assert torch.equal(value, started[name]), name             # everything but the edit as it was
    assert trained["generator.expression_edit.to_residual.weight"].abs().max() > 0   # the edit learned
    assert not (tmp_path / "edit.pt.partial").exists()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_checkpoint_keeps_the_edits_widths(tmp_path, suffix):
    from megaportraits_export.checkpoint import load_model_from_checkpoint, save_checkpoint

    model, config = onnx_export.random_model("tiny_wse", 3)
    path = save_checkpoint(tmp_path / f"edit{suffix}", model, config, "tiny_wse", {"weights": "random-init"})
    loaded, loaded_config, _ = load_model_from_checkpoint(path)
    assert loaded_config == config and loaded_config.expression_edit_channels == (4, 8)
    assert torch.equal(loaded.generator.expression_edit.stem.weight, model.generator.expression_edit.stem.weight)
