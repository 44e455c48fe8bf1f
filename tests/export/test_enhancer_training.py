"""Enhancer training with the base model frozen: the loss falls on a fixed batch, the base's
weights do not move, a resumed run continues exactly, the command writes an exportable checkpoint."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from megaportraits_export import checkpoint
from megaportraits_export.config import get_config
from megaportraits_export.model import build_model
from megaportraits_export.training.config import ConfigError, config_from_dict, load_config
from megaportraits_export.training.distributed import setup
from megaportraits_export.training.enhancement import (EnhancerTrainer, cycle_loss, load_enhancer_checkpoint,
                                                      reenacted_loss)

CONFIG = Path(__file__).parents[2] / "configs" / "enhancer_tiny_test.toml"


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory, one_torch_thread) -> Path:
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("base") / "model_last.pt"
    return checkpoint.save_checkpoint(path, build_model("tiny"), get_config("tiny"), "tiny", {"weights": "random-init"})


def tiny_config(base: Path, out_dir: Path, **train):
    cfg = load_config(CONFIG)
    cfg = cfg.replace("enhancer", base_checkpoint=str(base)).replace("log", out_dir=str(out_dir))
    return cfg.replace("train", **train) if train else cfg


def test_a_step_lowers_the_loss_on_a_fixed_batch_with_the_base_frozen(base_checkpoint, tmp_path):
    cfg = tiny_config(base_checkpoint, tmp_path / "run", steps=20, grad_accum=1)
    cfg = cfg.replace("losses", gan_start_step=100)  # L1 + SSIM + cycle + reenacted (+ SSIM): a loss that must fall
    trainer = EnhancerTrainer(cfg, setup("cpu"))
    # start away from the bicubic initialisation (already close to this batch's optimum under L1,
    # where progress is slow): a random residual the steps must undo
    with torch.no_grad():
        trainer.model.to_residual[-1].weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    fixed = trainer.stream.next()
    trainer.stream.next = lambda: fixed
    base_before = {k: v.clone() for k, v in trainer.base.state_dict().items()}
    enhancer_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with torch.no_grad():
        before = float(trainer.losses(fixed, gan=False)[0])
    for _ in range(8):
        trainer.train_step()
    with torch.no_grad():
        after = float(trainer.losses(fixed, gan=False)[0])
    assert after < 0.8 * before, (before, after)
    assert all(torch.equal(v, base_before[k]) for k, v in trainer.base.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in trainer.base.parameters())
    assert any(not torch.equal(v, enhancer_before[k]) for k, v in trainer.model.state_dict().items())


def test_gan_step_runs_and_resume_continues_exactly(base_checkpoint, tmp_path):
    ctx = setup("cpu")
    straight = EnhancerTrainer(tiny_config(base_checkpoint, tmp_path / "a"), ctx)
    straight.run(progress=False)
    assert {"enhancer/adversarial", "enhancer/feature_matching", "enhancer/cycle", "enhancer/reenacted",
            "enhancer/ssim", "enhancer/reenacted_ssim", "enhancer/discriminator"} <= set(straight.history)
    first = EnhancerTrainer(tiny_config(base_checkpoint, tmp_path / "b"), ctx)  # interrupted after 2 steps
    first.train_step()
    first.train_step()
    first.save()
    resumed = EnhancerTrainer(tiny_config(base_checkpoint, tmp_path / "b"), ctx)
    resumed.load(tmp_path / "b" / "state_last.pt")
    assert resumed.step == 2
    resumed.run(progress=False)
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0)
    model, config, provenance = load_enhancer_checkpoint(tmp_path / "b" / "model_last.pt")
    assert config.name == "tiny" and provenance["steps"]["main"] == 4
    assert provenance["base_model"]["checkpoint"]["file"] == "model_last.pt"


def test_train_command_writes_the_enhancer_checkpoint(base_checkpoint, tmp_path, capsys):
    from megaportraits_export import train

    config = tmp_path / "enhancer.toml"
    config.write_text(CONFIG.read_text().replace('"runs/tiny_test/model_last.pt"', repr(str(base_checkpoint)))
                      .replace("steps = 4", "steps = 1"))
    assert train.main(["--config", str(config), "--out-dir", str(tmp_path / "out")]) == 0
    assert "1 main steps" in capsys.readouterr().out
    model, config, _ = load_enhancer_checkpoint(tmp_path / "out" / "model_last.pt")
    assert config.output_size == 128


def test_cycle_loss_compares_the_same_scale():
    """down4 of the base frame and down8 of a 2x frame both land at 1/4 of the base side."""
    x_c = torch.rand(2, 3, 32, 32)
    exact = torch.nn.functional.interpolate(x_c, scale_factor=2, mode="nearest")
    assert float(cycle_loss(x_c, exact)) < 1e-6
    assert float(cycle_loss(x_c, exact.flip(-1))) > 1e-2


def test_reenacted_loss_counts_colours_on_the_person_and_the_matte():
    """By hand: a matte model's colours off the true mask are never shown, so they cost nothing."""
    g = torch.Generator().manual_seed(3)
    truth = torch.rand(2, 4, 16, 16, generator=g)
    truth[:, 3:] = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
    mask = truth[:, 3:]
    lifted = torch.rand(2, 4, 16, 16, generator=g)
    colour, matte = (lifted[:, :3] - truth[:, :3]) * mask, lifted[:, 3:] - mask
    torch.testing.assert_close(reenacted_loss(lifted, truth, "l1"), colour.abs().mean() + matte.abs().mean())
    torch.testing.assert_close(reenacted_loss(lifted, truth), colour.square().mean() + matte.square().mean())
    off_person = lifted.clone()
    off_person[:, :3] += (1 - mask) * torch.rand(2, 3, 16, 16, generator=g)
    for kind in ("mse", "l1"):
        torch.testing.assert_close(reenacted_loss(off_person, truth, kind), reenacted_loss(lifted, truth, kind))
    rgb = torch.rand(2, 3, 16, 16, generator=g)
    torch.testing.assert_close(reenacted_loss(rgb, truth[:, :3], "l1"), (rgb - truth[:, :3]).abs().mean())


def test_synthetic_pairs_give_the_truth_of_the_base_rendering():
    """The driver performs the motion of ``high``: a self-driven driver is the person as in ``low``
    (the renderer at the base size vs the box downsample of its 2x drawing: close, not equal)."""
    from megaportraits_export.data.enhancement import SyntheticEnhancementPairs

    pairs = SyntheticEnhancementPairs(6, 32, with_mask=True)
    gaps = []
    for i in range(12):
        item = pairs[i]
        assert torch.equal(item["cross_target"], item["high"]) and item["cross_target"].shape == (4, 64, 64)
        off_person = item["high"][3:] == 0   # the rendering there is its backdrop alone
        assert off_person.float().mean() > 0.2
        assert (item["backdrop"] - item["high"][:3]).abs()[off_person.expand(3, -1, -1)].max() <= 1 / 255 + 1e-6
        gaps.append(float((item["cross_driver"] - item["low"][:3]).abs().mean()))
    assert min(gaps) < 0.02 and max(gaps) > 0.05, gaps  # both self- and cross-driven items


def test_config_refusals():
    with pytest.raises(ConfigError, match="reenacted needs"):
        config_from_dict({"enhancer": {"preset": "tiny", "cross_driving": False, "reenacted": 1.0}})
    with pytest.raises(ConfigError, match="reenacted_ssim needs"):
        config_from_dict({"enhancer": {"preset": "tiny", "cross_driving": False, "reenacted_ssim": 1.0}})
    with pytest.raises(ConfigError, match="must not be negative"):
        config_from_dict({"enhancer": {"preset": "tiny", "base_checkpoint": "b.pt", "ssim": -1.0}})
    with pytest.raises(ConfigError, match="reenacted_loss"):
        config_from_dict({"enhancer": {"preset": "tiny", "base_checkpoint": "b.pt", "reenacted_loss": "l2"}})
    with pytest.raises(ConfigError, match="needs base_checkpoint"):
        config_from_dict({"enhancer": {"preset": "tiny"}})
    with pytest.raises(ConfigError, match="needs root"):
        config_from_dict({"enhancer": {"preset": "tiny", "cross_driving": False}, "data": {"kind": "portraits"}})
    with pytest.raises(ConfigError, match="trains an enhancer"):
        config_from_dict({"data": {"kind": "portraits", "root": "x"}})


def test_mismatched_base_is_refused(tmp_path, one_torch_thread):
    path = checkpoint.save_checkpoint(tmp_path / "m.pt", build_model("tiny_matte"), get_config("tiny_matte"),
                                      "tiny_matte", {})
    with pytest.raises(ValueError, match="has matte but the tiny enhancer has 3 channels"):
        EnhancerTrainer(tiny_config(path, tmp_path / "r"), setup("cpu"))


def _linear_pairs(teacher, count: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    size = teacher.config.base_size
    for _ in range(count):
        low = torch.rand(2, 3, size, size, generator=g)
        with torch.no_grad():
            yield low, teacher.linear_upsampling(low)


def test_least_squares_linear_path_recovers_a_linear_upsampler():
    """Pairs made by a known random linear filter (taps and bias): the fit returns that filter."""
    from megaportraits_export.networks.enhancer import build_enhancer
    from megaportraits_export.training.enhancement import least_squares_linear_path

    teacher = build_enhancer("tiny_matte")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        teacher.linear_path.weight.copy_(torch.randn(teacher.linear_path.weight.shape, generator=g) * 0.2)
        teacher.linear_path.bias.copy_(torch.randn(4, generator=g) * 0.1)
    student = build_enhancer("tiny_matte")
    fitted = least_squares_linear_path(student, _linear_pairs(teacher, 3, seed=4), ridge=0.0)
    assert fitted == 3 * 2 * 3 * teacher.config.base_size ** 2
    torch.testing.assert_close(student.linear_path.weight, teacher.linear_path.weight, atol=2e-5, rtol=0)
    torch.testing.assert_close(student.linear_path.bias, teacher.linear_path.bias, atol=2e-5, rtol=0)


def test_least_squares_linear_path_is_numpys_least_squares():
    """On pairs no linear filter makes (random high images), the normal-equation solve equals
    numpy's lstsq of the same windows, built here independently by slicing."""
    import numpy as np

    from megaportraits_export.networks.enhancer import build_enhancer
    from megaportraits_export.training.enhancement import least_squares_linear_path

    model = build_enhancer(__import__("megaportraits_export.networks.enhancer", fromlist=["x"])
                           .get_enhancer_config("tiny_matte").replace(base_size=12))
    g = torch.Generator().manual_seed(6)
    low, high = torch.rand(2, 3, 12, 12, generator=g), torch.rand(2, 3, 24, 24, generator=g)
    least_squares_linear_path(model, [(low, high)], ridge=0.0)
    taps = model.config.linear_taps
    padded = np.pad(low.numpy().astype(np.float64), ((0, 0), (0, 0), (taps // 2, taps // 2 - 1),
                                                     (taps // 2, taps // 2 - 1)), mode="edge")
    rows, truth = [], {p: [] for p in range(4)}
    for n in range(2):
        for c in range(3):
            for i in range(12):
                for j in range(12):
                    rows.append(np.append(padded[n, c, i:i + taps, j:j + taps].ravel(), 1.0))
                    for a in range(2):
                        for b in range(2):
                            truth[2 * a + b].append(float(high[n, c, 2 * i + a, 2 * j + b]))
    design = np.array(rows)
    for phase in range(4):
        expected = np.linalg.lstsq(design, np.array(truth[phase]), rcond=None)[0]
        np.testing.assert_allclose(model.linear_path.weight[phase, 0].detach().numpy().ravel(), expected[:-1], atol=1e-5)
        np.testing.assert_allclose(float(model.linear_path.bias[phase].detach()), expected[-1], atol=1e-5)


def test_warmup_ramps_into_the_cosine():
    """lr(t) = lr * min(1, (t + 1) / warmup) * cosine(t), by hand at a few steps."""
    import math

    from megaportraits_export.training.optim import cosine_schedule

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1e-3)
    schedule = cosine_schedule(optimizer, 100, 1e-3, 1e-5, warmup_steps=10)
    seen = []
    for _ in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()

    def expected(t):
        floor = 1e-2
        return 1e-3 * min(1.0, (t + 1) / 10) * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t / 100)))

    assert seen == pytest.approx([expected(t) for t in range(12)], rel=1e-9)


def test_fitted_linear_path_held_while_the_rest_trains(tmp_path, one_torch_thread):
    """[enhancer] linear_fit_items + train_linear_path = false, on a matte base: the trainer's
    linear path is the least-squares fit of the dataset's first items, and training steps
    (squared error on the SR pairs) move the other weights but not it."""
    from megaportraits_export.networks.enhancer import build_enhancer
    from megaportraits_export.training.enhancement import least_squares_linear_path

    torch.manual_seed(8)
    base = checkpoint.save_checkpoint(tmp_path / "base.pt", build_model("tiny_matte"), get_config("tiny_matte"),
                                      "tiny_matte", {"weights": "random-init"})
    cfg = tiny_config(base, tmp_path / "run", steps=2).replace(
        "enhancer", preset="tiny_matte", linear_fit_items=10, train_linear_path=False, sr_loss="mse")
    trainer = EnhancerTrainer(cfg, setup("cpu"))
    expected = build_enhancer("tiny_matte")
    items = [trainer.dataset[i] for i in range(10)]
    least_squares_linear_path(expected, [(torch.stack([it["low"][:3] for it in items]),
                                          torch.stack([it["high"][:3] for it in items]))])
    torch.testing.assert_close(trainer.model.linear_path.weight, expected.linear_path.weight, atol=1e-6, rtol=0)
    bicubic_taps = build_enhancer("tiny_matte").linear_path.weight
    assert float((trainer.model.linear_path.weight - bicubic_taps).detach().abs().max()) > 1e-3  # the fit moved it
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    scalars = trainer.train_step()
    trainer.train_step()
    assert "sr_mse" in scalars and "l1" not in scalars
    after = trainer.model.state_dict()
    assert torch.equal(after["linear_path.weight"], before["linear_path.weight"])
    assert torch.equal(after["linear_path.bias"], before["linear_path.bias"])
    assert not torch.equal(after["to_residual.2.weight"], before["to_residual.2.weight"])


def test_init_from_adds_a_fitted_linear_path_to_a_trained_network(tmp_path, one_torch_thread):
    """[enhancer] init_from a network without a linear path (the shipped demo enhancer's route),
    0 steps: every weight it has is loaded, the added path is the least-squares fit, and the
    provenance names the start; a network of another layout is refused in one line."""
    from megaportraits_export.networks.enhancer import build_enhancer, get_enhancer_config
    from megaportraits_export.training.enhancement import least_squares_linear_path

    torch.manual_seed(9)
    base = checkpoint.save_checkpoint(tmp_path / "base.pt", build_model("tiny_matte"), get_config("tiny_matte"),
                                      "tiny_matte", {"weights": "random-init"})
    without = get_enhancer_config("tiny_matte").replace(linear_taps=0)
    start = build_enhancer(without)
    with torch.no_grad():
        for p in start.parameters():
            p.normal_(0, 0.05)
    start_path = checkpoint.save_checkpoint(tmp_path / "start.pt", start, without, "tiny_matte", {})
    cfg = tiny_config(base, tmp_path / "run", steps=0).replace(
        "enhancer", preset="tiny_matte", init_from=str(start_path), linear_fit_items=8, train_linear_path=False)
    trainer = EnhancerTrainer(cfg, setup("cpu"))
    loaded = trainer.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in start.state_dict().items())
    items = [trainer.dataset[i] for i in range(8)]
    expected = build_enhancer("tiny_matte")
    least_squares_linear_path(expected, [(torch.stack([it["low"][:3] for it in items]),
                                          torch.stack([it["high"][:3] for it in items]))])
    torch.testing.assert_close(loaded["linear_path.weight"], expected.linear_path.weight, atol=1e-6, rtol=0)
    trainer.run(progress=False)
    model, _, provenance = load_enhancer_checkpoint(tmp_path / "run" / "model_last.pt")
    assert provenance["initialised_from"]["added"] == ["linear_path.bias", "linear_path.weight"]
    assert provenance["steps"]["main"] == 0
    # a resumed run neither re-reads init_from nor refits: the state gives weights and the record
    resumed = EnhancerTrainer(cfg.replace("enhancer", linear_fit_items=10 ** 6), setup("cpu"), initialise=False)
    assert not torch.equal(resumed.model.linear_path.weight, loaded["linear_path.weight"])  # as built
    resumed.load(tmp_path / "run" / "state_last.pt")
    assert torch.equal(resumed.model.linear_path.weight, loaded["linear_path.weight"])
    assert resumed.initialised_from == provenance["initialised_from"]
    other = checkpoint.save_checkpoint(tmp_path / "other.pt", build_enhancer("tiny"), get_enhancer_config("tiny"),
                                       "tiny", {})
    with pytest.raises(ValueError, match="do not fit preset"):
        EnhancerTrainer(cfg.replace("enhancer", init_from=str(other)), setup("cpu"))
    with pytest.raises(ConfigError, match="steps must be at least 1"):
        config_from_dict({**cfg.to_dict(), "enhancer": {**cfg.to_dict()["enhancer"], "init_from": ""}})
