"""The expression path: regions where an expression shows, the pairs that carry them, the
region loss, the expression evaluation (against numpy and against reenactors whose answers are
known), and a fine-tuning run that resumes without the checkpoint it started from."""
from pathlib import Path

import numpy as np
import pytest
import torch

from megaportraits_export import expression_eval
from megaportraits_export.data import synthetic
from megaportraits_export.data.expression_pairs import (REGION_THRESHOLD, STRONG_EXPRESSIONS, ExpressionPairHeads,
                                                         expression_region, strong_expression)
from megaportraits_export.losses import region_l1

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_expression_region_is_where_a_channel_differs_beyond_the_threshold_grown_by_a_pixel():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    other = image.copy()
    other[40, 50, 1] = np.uint8((int(image[40, 50, 1]) + REGION_THRESHOLD + 1) % 256)  # one channel, beyond
    other[90, 20] = np.where(image[90, 20] <= 255 - REGION_THRESHOLD, image[90, 20] + REGION_THRESHOLD,
                             image[90, 20] - REGION_THRESHOLD)                             # at the threshold: no
    assert (np.abs(other[90, 20].astype(int) - image[90, 20].astype(int)) == REGION_THRESHOLD).all()
    region = expression_region(image, other)
    expected = np.zeros((128, 128), bool)
    for dy in (-1, 0, 1):            # the 3x3 ellipse is a cross: the corners stay out
        expected[40 + dy, 50] = True
    for dx in (-1, 1):
        expected[40, 50 + dx] = True
    np.testing.assert_array_equal(region, expected)
    with pytest.raises(ValueError, match="one shape"):
        expression_region(image, image[:64])


def test_region_psnr_and_l1_equal_numpy_over_the_region_pixels():
    rng = np.random.default_rng(1)
    prediction, target = rng.random((3, 3, 16, 16)), rng.random((3, 3, 16, 16))
    region = rng.random((3, 1, 16, 16)) < 0.2
    region[2] = False
    psnr = expression_eval.region_psnr(torch.from_numpy(prediction), torch.from_numpy(target), torch.from_numpy(region))
    l1 = expression_eval.region_l1(torch.from_numpy(prediction), torch.from_numpy(target), torch.from_numpy(region))
    for n in range(2):
        pixels = np.broadcast_to(region[n], (3, 16, 16))
        difference = prediction[n][pixels] - target[n][pixels]
        assert float(psnr[n]) == pytest.approx(-10 * np.log10(np.mean(difference ** 2)), rel=1e-9)
        assert float(l1[n]) == pytest.approx(np.mean(np.abs(difference)), rel=1e-9)
    assert torch.isnan(psnr[2]) and torch.isnan(l1[2])   # an empty region has no score


@pytest.fixture(scope="module")
def pairs():
    return expression_eval.expression_pairs(8, 64, seed=3, identities=5)


def test_expression_pairs_are_held_out_cross_pairs_whose_expression_shows(pairs):
    assert pairs.kinds == list(STRONG_EXPRESSIONS) * 2
    for a, b in pairs.identities:
        assert a != b and min(a, b) >= synthetic.EVAL_IDENTITY_SEED_OFFSET
    area = pairs.region.flatten(1).mean(1)
    assert (area > 0.002).all(), area          # every strong expression changes some pixels
    assert (area < 0.2).all(), area            # and only the face's features
    # the region is where the two truths differ, nowhere else (up to the one-pixel growth)
    differs = (pairs.target - pairs.own_expression_target).abs().amax(1, keepdim=True) > (REGION_THRESHOLD + 0.5) / 255
    assert bool((pairs.region[differs] == 1).all())
    assert not torch.equal(pairs.target, pairs.own_expression_target)


class Forced:
    """A reenactor whose renderings are chosen ground truths."""

    def __init__(self, pairs, driver_code, source_code):
        self.answer = {"driver_code": getattr(pairs, driver_code), "source_code": getattr(pairs, source_code)}

    def reenact_codes(self, source, driver, reference):
        return self.answer


def _numpy_region_psnr(prediction, pairs):
    values = []
    for n in range(len(pairs.kinds)):
        pixels = np.broadcast_to(pairs.region[n].numpy() > 0, (3, *pairs.region.shape[-2:]))
        mse = np.mean((prediction[n].numpy().astype(np.float64)[pixels] - pairs.target[n].numpy()[pixels]) ** 2)
        values.append(expression_eval.MAX_PSNR if mse == 0 else -10 * np.log10(mse))
    return float(np.mean(values))


def test_a_reenactor_that_renders_the_right_truth_gains_what_the_truths_differ_by(pairs):
    right = expression_eval.score(Forced(pairs, "target", "own_expression_target").reenact_codes(None, None, None), pairs)
    own_psnr = _numpy_region_psnr(pairs.own_expression_target, pairs)
    assert right["expression_region"]["driver_code"]["psnr"] == pytest.approx(expression_eval.MAX_PSNR)
    assert right["expression_region"]["source_code"]["psnr"] == pytest.approx(own_psnr, rel=1e-6)
    assert right["expression_region"]["own_expression_truth"]["psnr"] == pytest.approx(own_psnr, rel=1e-6)
    assert right["expression_gain_db"] == pytest.approx(expression_eval.MAX_PSNR - own_psnr, rel=1e-6)
    assert right["whole_image"]["driver_code"]["l1"] == 0.0
    assert right["expression_region"]["source_unchanged"]["psnr"] == pytest.approx(
        _numpy_region_psnr(pairs.source, pairs), rel=1e-6)

    wrong = expression_eval.score(Forced(pairs, "own_expression_target", "target").reenact_codes(None, None, None), pairs)
    assert wrong["expression_gain_db"] == pytest.approx(-right["expression_gain_db"], rel=1e-6)
    ignores = expression_eval.score(Forced(pairs, "source", "source").reenact_codes(None, None, None), pairs)
    assert ignores["expression_gain_db"] == 0.0
    assert "expression gain" in expression_eval.format_report(right, "forced")


def test_checkpoint_reenactor_renders_the_two_codes_and_they_agree_when_the_driver_does_not_move(pairs):
    from megaportraits_export.config import get_config
    from megaportraits_export.model import build_model

    torch.manual_seed(0)
    reenactor = expression_eval.CheckpointExpressionReenactor(build_model(get_config("tiny_matte")), batch_size=3)
    moved = reenactor.reenact_codes(pairs.source, pairs.driver, pairs.reference)
    assert moved["driver_code"].shape == pairs.source.shape
    assert not torch.allclose(moved["driver_code"], moved["source_code"])
    # reference == driver: z_s + (z_d - z_d0) = z_s, so the two renderings are the same image
    still = reenactor.reenact_codes(pairs.source, pairs.driver, pairs.driver)
    assert torch.allclose(still["driver_code"], still["source_code"], atol=1e-5)
    results = expression_eval.run_expression_evaluation(reenactor, pairs=4, seed=3, identities=5)
    assert np.isfinite(results["expression_gain_db"]) and set(results["per_kind_region_psnr"]) == set(STRONG_EXPRESSIONS)


def test_region_l1_loss_is_the_mean_error_on_the_region_over_two_scales():
    rng = np.random.default_rng(2)
    prediction, target = rng.random((2, 3, 8, 8)), rng.random((2, 3, 8, 8))
    region = (rng.random((2, 1, 8, 8)) < 0.5).astype(np.float64)

    def level(p, t, r):
        w = np.broadcast_to(r, p.shape)
        return np.sum(np.abs(p - t) * w) / max(np.sum(w), 1.0)

    def pool(x):
        return x.reshape(*x.shape[:2], x.shape[2] // 2, 2, x.shape[3] // 2, 2).mean(axis=(3, 5))

    expected = 0.5 * (level(prediction, target, region) + level(pool(prediction), pool(target), pool(region)))
    value = region_l1(*(torch.from_numpy(x) for x in (prediction, target, region)))
    assert float(value) == pytest.approx(expected, rel=1e-9)
    assert float(region_l1(*(torch.from_numpy(x) for x in (prediction, target, 0 * region)))) == 0.0


def test_expression_pair_heads_mark_where_the_drivers_expression_differs_from_the_sources():
    heads = ExpressionPairHeads(num_identities=6, size=64, seed=5, length=12, strong_fraction=1.0)
    item = heads[3]
    assert torch.equal(item["driver_expression_region"], heads[3]["driver_expression_region"])   # deterministic
    identity = synthetic.Identity.sample(int(item["identity"]))
    pose = synthetic.Pose.from_model_parameters(item["driver_pose_params"].tolist())
    driver = synthetic.render(identity, pose, synthetic.Expression(*item["driver_expression_params"].tolist()), 64)
    rest = synthetic.render(identity, pose, synthetic.Expression(*item["source_expression_params"].tolist()), 64)
    np.testing.assert_allclose(item["driver"].numpy(), driver.transpose(2, 0, 1) / 255.0, atol=1 / 255)
    expected = expression_region(driver, rest)
    agreement = (item["driver_expression_region"][0].numpy() > 0) == expected
    assert agreement.mean() > 0.99 and expected.any()
    assert float(item["source_expression_params"][0]) == 0.0     # strong pairs: the source's mouth is closed
    with pytest.raises(ValueError, match="unknown expression kind"):
        strong_expression(np.random.default_rng(0), "wink")


def test_same_pose_pairs_keep_the_sources_pose_and_leave_other_runs_pairs_unchanged():
    plain = ExpressionPairHeads(num_identities=6, size=64, seed=5, length=12, strong_fraction=1.0)
    none = ExpressionPairHeads(num_identities=6, size=64, seed=5, length=12, strong_fraction=1.0,
                               same_pose_fraction=0.0)
    every = ExpressionPairHeads(num_identities=6, size=64, seed=5, length=12, strong_fraction=1.0,
                                same_pose_fraction=1.0)
    for index in (0, 7):
        assert torch.equal(plain[index]["driver"], none[index]["driver"])
        item = every[index]
        assert torch.equal(item["driver_pose_params"], item["source_pose_params"])
        assert not torch.equal(plain[index]["driver_pose_params"], plain[index]["source_pose_params"])
        # the driver is the source's person in the source's pose with the driver's expression
        identity = synthetic.Identity.sample(int(item["identity"]))
        pose = synthetic.Pose.from_model_parameters(item["source_pose_params"].tolist())
        driver = synthetic.render(identity, pose, synthetic.Expression(*item["driver_expression_params"].tolist()), 64)
        np.testing.assert_allclose(item["driver"].numpy(), driver.transpose(2, 0, 1) / 255.0, atol=1 / 255)
    with pytest.raises(ValueError, match="same_pose_fraction"):
        ExpressionPairHeads(num_identities=6, size=64, same_pose_fraction=1.5)


def test_expression_fine_tuning_resumes_without_the_checkpoint_it_started_from(tmp_path):
    from megaportraits_export import train
    from megaportraits_export.checkpoint import save_checkpoint
    from megaportraits_export.config import get_config
    from megaportraits_export.model import build_model
    from megaportraits_export.training.config import ConfigError, config_from_dict

    start = tmp_path / "start.pt"
    save_checkpoint(start, build_model(get_config("tiny_matte")), get_config("tiny_matte"), "tiny_matte", {"note": "x"})
    config = tmp_path / "expression.toml"
    config.write_text(f"""
[model]
preset = "tiny_matte"
init_from = "{start}"
[data]
train_identities = 4
augment = false
expression_regions = true
[losses]
cycle = false
[losses.weights]
perceptual = 0.0
adversarial = 0.0
feature_matching = 0.0
cycle = 0.0
l1 = 1.0
expression = 2.0
[train]
steps = 2
batch_size = 2
device = "cpu"
threads = 1
[log]
out_dir = "{tmp_path / 'run'}"
checkpoint_every = 1
progress = false
""")
    straight = tmp_path / "straight"
    assert train.main(["--config", str(config), "--out-dir", str(straight)]) == 0      # 2 steps in one go
    from megaportraits_export.training.config import load_config
    from megaportraits_export.training.distributed import DistributedContext
    from megaportraits_export.training.trainer import Trainer

    interrupted = Trainer(load_config(config), DistributedContext(), config_path=str(config))
    interrupted.train_step()                                                           # 1 step, stop ...
    interrupted.save()
    start.unlink()
    assert train.main(["--config", str(config), "--resume", "auto"]) == 0             # ... resume to 2
    state = torch.load(tmp_path / "run" / "state_last.pt", weights_only=True)
    assert state["training"]["step"] == 2
    reference = torch.load(straight / "state_last.pt", weights_only=True)
    for name, value in reference["model"].items():     # the resumed run is the uninterrupted one
        assert torch.equal(value, state["model"][name]), name
    assert state["provenance"]["initialised_from"]["checkpoint"] == "start.pt"
    assert state["provenance"]["data"]["expression_regions"] is True
    assert state["provenance"]["final_losses"]["train/expression"] > 0
    with pytest.raises(ConfigError, match="expression_regions"):
        config_from_dict({"data": {"expression_regions": True}, "losses": {"cycle": True}})
