"""The ``expression_labels`` term: the expression codes' first entries against the synthetic
heads' expression parameters, checked against a smooth L1 written out by hand."""
import numpy as np
import pytest
import torch

from megaportraits_export import losses
from megaportraits_export.model import build_model
from megaportraits_export.training.objectives import LossComputer, ReenactmentPass

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _smooth_l1(a: np.ndarray, b: np.ndarray, beta: float) -> float:
    d = np.abs(a - b)
    return float(np.mean(np.where(d < beta, 0.5 * d ** 2 / beta, d - 0.5 * beta)))


def test_label_loss_is_the_smooth_l1_of_the_codes_first_entries():
    rng = np.random.default_rng(8)
    code, params = rng.normal(0, 0.3, (5, 16)), rng.uniform(-0.5, 1.0, (5, 6))
    value = losses.expression_label_loss(torch.from_numpy(code), torch.from_numpy(params))
    # both sides of beta occur: errors below 0.1 and well above it
    assert (np.abs(code[:, :6] - params) < 0.1).any() and (np.abs(code[:, :6] - params) > 0.5).any()
    assert float(value) == pytest.approx(_smooth_l1(code[:, :6], params, 0.1), rel=1e-12)
    with pytest.raises(ValueError, match="fewer than the 6"):
        losses.expression_label_loss(torch.zeros(5, 4), torch.from_numpy(params))
    assert losses.LossWeights().expression_labels == 0.0            # off unless a recipe asks for it


def test_the_term_weighs_source_and_driver_codes_alike():
    rng = np.random.default_rng(9)
    z_s, z_d = (torch.from_numpy(rng.normal(0, 0.5, (3, 8))) for _ in range(2))
    p_s, p_d = (torch.from_numpy(rng.uniform(0, 1, (3, 6)).astype(np.float32)) for _ in range(2))
    images = torch.from_numpy(rng.random((3, 3, 8, 8)))
    computer = LossComputer({"l1": 0.0, "perceptual": 0.0, "adversarial": 0.0, "feature_matching": 0.0,
                             "expression_labels": 3.0}, torch.device("cpu"))
    outputs = {"prediction": images, "matte": None, "source_expression": z_s, "driver_expression": z_d}
    batch = {"driver": images, "source_expression_params": p_s, "driver_expression_params": p_d}
    total, logged = computer.generator(outputs, batch, None)
    expected = 3.0 * 0.5 * (_smooth_l1(z_s.numpy()[:, :6], p_s.numpy(), 0.1)
                            + _smooth_l1(z_d.numpy()[:, :6], p_d.numpy(), 0.1))
    assert float(total) == pytest.approx(expected, rel=1e-6) and logged["expression_labels"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="expression parameters"):
        computer.generator(outputs, {"driver": images}, None)


def test_the_reenactment_pass_hands_the_loss_the_codes_the_model_reads():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    source, driver = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = ReenactmentPass(model, cycle=False)({"source": source, "driver": driver})
        assert torch.equal(out["source_expression"], model.driver_branch(source).expression)
        assert torch.equal(out["driver_expression"], model.driver_branch(driver).expression)


def _trainer(tmp_path, labels: float, kind: str = "synthetic", train_regressor: bool = True):
    from megaportraits_export.training.config import config_from_dict
    from megaportraits_export.training.distributed import DistributedContext
    from megaportraits_export.training.trainer import Trainer

    cfg = config_from_dict({
        "model": {"preset": "tiny"}, "data": {"kind": kind, "train_identities": 3, "augment": False},
        "losses": {"cycle": False, "weights": {"perceptual": 0.0, "adversarial": 0.0, "feature_matching": 0.0,
                                               "cycle": 0.0, "l1": 1.0}},
        "pose_pretrain": {"steps": 2, "batch_size": 2, "expression_labels": labels, "train_regressor": train_regressor},
        "train": {"steps": 1, "batch_size": 1, "device": "cpu", "threads": 1},
        "log": {"out_dir": str(tmp_path / f"run{labels}{train_regressor}"), "progress": False}})
    return Trainer(cfg, DistributedContext())


def test_pose_pretraining_teaches_the_encoder_the_labels_only_when_asked(tmp_path):
    for labels in (0.0, 2.0):
        trainer = _trainer(tmp_path, labels)
        encoder = trainer.model.driver_branch.expression_encoder
        before = [p.detach().clone() for p in encoder.parameters()]
        scalars = trainer.pose_pretrain_step()
        moved = any(not torch.equal(a, p) for a, p in zip(before, encoder.parameters()))
        assert moved == bool(labels) and ("expression_labels" in scalars) == bool(labels)
        if labels:
            assert scalars["expression_labels"] > 0


def test_a_frozen_regressor_keeps_its_poses_while_the_encoder_learns_the_labels(tmp_path):
    trainer = _trainer(tmp_path, 2.0, train_regressor=False)
    regressor = trainer.model.driver_branch.head_pose
    encoder = trainer.model.driver_branch.expression_encoder
    before = {n: p.detach().clone() for n, p in regressor.state_dict().items()}
    encoder_before = [p.detach().clone() for p in encoder.parameters()]
    trainer.pose_pretrain_step()
    assert all(torch.equal(before[n], p) for n, p in regressor.state_dict().items())
    assert any(not torch.equal(a, p) for a, p in zip(encoder_before, encoder.parameters()))


def test_the_labels_are_refused_without_synthetic_heads(tmp_path):
    from megaportraits_export.training.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="expression_labels"):
        config_from_dict({"data": {"kind": "video", "root": str(tmp_path)},
                          "pose_pretrain": {"steps": 1, "expression_labels": 1.0}})
    with pytest.raises(ConfigError, match="expression_labels"):
        config_from_dict({"pose_pretrain": {"steps": 1, "expression_labels": -1.0}})
    with pytest.raises(ConfigError, match="nothing to train"):
        config_from_dict({"pose_pretrain": {"steps": 1, "train_regressor": False}})


def test_the_code_probe_scores_a_code_that_holds_the_parameters_and_one_that_holds_nothing(repo_script):
    probe = repo_script("tools/probe_expression_code.py")
    rng = np.random.default_rng(12)
    parameters = rng.uniform(-0.5, 1.0, (400, 6))
    mixing = rng.normal(0, 1, (6, 16))
    holds = parameters @ mixing + rng.normal(0, 0.01, (400, 16))        # a linear image of the parameters
    r2 = probe.ridge_r2(holds, parameters, 300)
    assert r2.shape == (6,) and (r2 > 0.99).all()
    nothing = rng.normal(0, 1, (400, 16))
    assert (probe.ridge_r2(nothing, parameters, 300) < 0.1).all()
    # one parameter held, the others not: R^2 by hand, 1 - residual / spread with an exact fit
    half = np.c_[parameters[:, :1] * 3.0, rng.normal(0, 1, (400, 3))]
    r2 = probe.ridge_r2(half, parameters, 300)
    assert r2[0] > 0.999 and (r2[1:] < 0.1).all()


def test_the_pose_stage_learns_on_random_heads_when_the_training_pairs_are_expression_pairs():
    from megaportraits_export.data import SyntheticTalkingHeads
    from megaportraits_export.training.config import config_from_dict
    from megaportraits_export.training.objectives import build_pose_dataset, build_training_dataset

    def sets(labels):
        cfg = config_from_dict({"data": {"train_identities": 4, "augment": False, "expression_regions": True},
                                "losses": {"cycle": False},
                                "pose_pretrain": {"steps": 5, "expression_labels": labels}})
        training = build_training_dataset(cfg, 32)
        return training, build_pose_dataset(cfg, 32, training)

    for labels in (0.0, 1.0):   # the regressor alone, or with the expression encoder's labels
        training, pose = sets(labels)
        assert isinstance(pose, SyntheticTalkingHeads) and pose is not training
    item = pose[0]
    assert item["source_expression_params"].shape == (6,) and item["source_pose_params"].shape == (7,)
