"""The face-feature region (eyes, brows, mouth, nose, glasses of one rendering) and the
``features`` loss term that weighs the reconstruction there."""
import numpy as np
import pytest
import torch

from megaportraits_export import losses
from megaportraits_export.data import synthetic
from megaportraits_export.data.expression_pairs import ExpressionPairHeads, face_feature_region
from megaportraits_export.training.objectives import LossComputer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _head(seed: int = 11):
    identity = synthetic.Identity.sample(seed)
    expression = synthetic.Expression(mouth_open=0.8, smile=0.0, eye_closure=0.0, brow_raise=0.5,
                                      gaze_x=0.0, gaze_y=0.0)
    return identity, synthetic.Pose(), expression


def test_a_head_drawn_without_features_keeps_everything_but_the_face():
    identity, pose, expression = _head()
    full, mask = synthetic.render(identity, pose, expression, 64, with_mask=True)
    bare, bare_mask = synthetic.render(identity, pose, expression, 64, with_mask=True, face_features=False)
    assert np.array_equal(mask, bare_mask)                           # same silhouette
    differs = np.abs(full.astype(int) - bare.astype(int)).max(-1) > 0
    assert differs.any() and not differs[mask == 0].any()            # only pixels of the person change
    assert 0.005 < differs.mean() < 0.15                             # a face's worth, not the head


def test_feature_region_holds_the_pupils_and_the_open_mouth_and_nothing_off_the_face():
    identity, pose, expression = _head()
    image, mask = synthetic.render(identity, pose, expression, 128, with_mask=True)
    region = face_feature_region(identity, pose, expression, 128)
    assert np.array_equal(region, face_feature_region(identity, pose, expression, 128, image))
    # the pupils (12, 10, 10) and the inside of the open mouth (60, 18, 22) are drawn only with the
    # features (a pupil is a few pixels at 128 px, anti-aliased into the iris)
    for colour, tolerance in (((12, 10, 10), 15), ((60, 18, 22), 6)):
        close = np.abs(image.astype(int) - np.array(colour)).max(-1) <= tolerance
        assert close.sum() >= 2 and region[close].all(), colour
    assert not region[mask == 0].any()
    skin = np.abs(image.astype(int) - np.array(identity.skin)).max(-1) <= 2
    assert skin.sum() > 100 and region[skin].mean() < 0.2             # bare skin is mostly outside


def test_pair_heads_carry_the_drivers_feature_region():
    heads = ExpressionPairHeads(num_identities=5, size=64, seed=4, length=10, strong_fraction=0.5)
    item = heads[7]
    identity = synthetic.Identity.sample(int(item["identity"]))
    pose = synthetic.Pose.from_model_parameters(item["driver_pose_params"].tolist())
    expression = synthetic.Expression(*item["driver_expression_params"].tolist())
    expected = face_feature_region(identity, pose, expression, 64)
    agreement = (item["driver_feature_region"][0].numpy() > 0) == expected
    assert expected.any() and agreement.mean() > 0.99


def test_features_term_is_the_region_l1_of_the_foreground_on_the_feature_region():
    rng = np.random.default_rng(3)
    prediction, target = (torch.from_numpy(rng.random((2, 3, 16, 16))) for _ in range(2))
    foreground = torch.from_numpy((rng.random((2, 1, 16, 16)) < 0.8).astype(np.float64))
    features = torch.from_numpy((rng.random((2, 1, 16, 16)) < 0.2).astype(np.float64))
    matte = torch.from_numpy(rng.random((2, 1, 16, 16)))
    batch = {"driver": target, "driver_mask": foreground, "driver_feature_region": features}
    computer = LossComputer({"l1": 0.0, "matte": 0.0, "features": 3.0, "perceptual": 0.0, "adversarial": 0.0,
                             "feature_matching": 0.0}, torch.device("cpu"))
    total, logged = computer.generator({"prediction": prediction, "matte": matte}, batch, None)

    def level(p, t, r):       # numpy, two scales, as region_l1's docstring says
        w = np.broadcast_to(r, p.shape)
        return np.sum(np.abs(p - t) * w) / max(np.sum(w), 1.0)

    def pool(x):
        return x.reshape(*x.shape[:2], x.shape[2] // 2, 2, x.shape[3] // 2, 2).mean(axis=(3, 5))

    p, t, f, m = (x.numpy() for x in (prediction, target, features, foreground))
    expected = 3.0 * 0.5 * (level(p * m, t * m, f) + level(pool(p * m), pool(t * m), pool(f)))
    assert float(total) == pytest.approx(expected, rel=1e-9) and logged["features"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="face-feature regions"):
        computer.generator({"prediction": prediction, "matte": matte}, {"driver": target, "driver_mask": foreground},
                           None)
    assert losses.LossWeights().features == 0.0                      # off unless a recipe asks for it


def test_expression_path_learns_at_its_own_rate_and_everything_else_at_the_base_rate(tmp_path):
    from megaportraits_export.training.config import ConfigError, config_from_dict
    from megaportraits_export.training.distributed import DistributedContext
    from megaportraits_export.training.trainer import Trainer

    def trainer(scale):
        cfg = config_from_dict({
            "model": {"preset": "tiny"}, "data": {"train_identities": 2, "augment": False},
            "optim": {"lr": 1e-3, "lr_min": 1e-5, "expression_path_lr_scale": scale},
            "losses": {"cycle": False, "weights": {"perceptual": 0.0, "adversarial": 0.0, "feature_matching": 0.0,
                                                   "cycle": 0.0, "l1": 1.0}},
            "pose_pretrain": {"steps": 1, "main_stage": "frozen"},
            "train": {"steps": 10, "batch_size": 1, "device": "cpu", "threads": 1},
            "log": {"out_dir": str(tmp_path / f"run{scale}"), "progress": False}})
        return Trainer(cfg, DistributedContext())

    fast = trainer(4.0)
    model = fast.model
    path = {id(p) for m in (model.driver_branch.expression_encoder, model.source_branch.source_warp,
                            model.generator.driver_warp) for p in m.parameters()}
    pose = {id(p) for p in model.driver_branch.head_pose.parameters()}
    groups = [({id(p) for p in g["params"]}, g["lr"]) for g in fast.optimizer.param_groups]
    assert sorted(lr for _, lr in groups) == pytest.approx([1e-3, 4e-3])
    assert [ids for ids, lr in groups if lr > 2e-3] == [path]
    rest = {id(p) for p in model.parameters()} - path - pose
    assert [ids for ids, lr in groups if lr < 2e-3] == [rest]          # the pose regressor stays frozen
    assert len(trainer(1.0).optimizer.param_groups) == 1
    with pytest.raises(ConfigError, match="expression_path_lr_scale"):
        trainer(0.0)


def test_autoencode_tool_scores_psnr_on_the_feature_pixels_and_refuses_a_missing_checkpoint(tmp_path, capsys,
                                                                                             repo_script):
    tool = repo_script("tools/expression_autoencode.py")
    rng = np.random.default_rng(8)
    target = rng.integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    prediction = rng.integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    region = rng.random((2, 8, 8)) < 0.3
    expected = np.mean([10 * np.log10(1 / np.mean(((prediction[i] / 255.0 - target[i] / 255.0)[region[i]]) ** 2))
                        for i in range(2)])
    assert tool.psnr_on(prediction, target, region) == pytest.approx(expected, rel=1e-9)
    images, regions = tool.held_out_heads(2, 64)
    assert images.shape == (2, 64, 64, 3) and regions.shape == (2, 64, 64) and 0 < regions.mean() < 0.2
    assert tool.main([str(tmp_path / "none.pt")]) == 1
    assert "no checkpoint" in capsys.readouterr().err


def test_autoencode_tool_runs_a_checkpoint_and_prints_its_line(tmp_path, capsys, repo_script):
    from megaportraits_export.checkpoint import save_checkpoint
    from megaportraits_export.config import get_config
    from megaportraits_export.model import build_model

    checkpoint = tmp_path / "tiny.pt"
    save_checkpoint(checkpoint, build_model(get_config("tiny_matte")), get_config("tiny_matte"), "tiny_matte", {})
    assert repo_script("tools/expression_autoencode.py").main([str(checkpoint), "--images", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and lines[-1].startswith(f"  {checkpoint}: ")
