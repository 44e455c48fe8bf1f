"""The true-poses oracle ([train] true_poses, expression-eval --true-poses): a model driven by the
synthetic heads' own poses instead of its regressor's, to measure what an exact motion gives."""
import numpy as np
import pytest
import torch

from megaportraits_export.data import synthetic
from megaportraits_export.model import build_model
from megaportraits_export.training.objectives import ReenactmentPass
from megaportraits_export.warp import pose_from_parameters, pose_matrix

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pose_parameters_make_the_theta_of_the_synthetic_convention():
    # theta X = s R (X + t): a head-frame point placed by the renderer (camera = s_r HEAD_UNIT R_r P + t_r,
    # orthographically) comes back to its frontal, unit-scale place HEAD_UNIT * P
    from megaportraits_export.data.synthetic.camera import HEAD_UNIT

    pose = synthetic.Pose(scale=1.1, yaw=0.3, pitch=-0.2, roll=0.1, tx=0.05, ty=-0.03)
    theta = pose_from_parameters(torch.from_numpy(pose.model_parameters())[None].double())[0].numpy()
    point = np.array([0.1, -0.2, -0.3])
    camera = pose.scale * HEAD_UNIT * pose.rotation() @ point + np.array([pose.tx, pose.ty, pose.tz])
    np.testing.assert_allclose(theta[:, :3] @ camera + theta[:, 3], HEAD_UNIT * point, atol=1e-6)


def test_given_poses_replace_the_regressors_everywhere():
    torch.manual_seed(0)
    model = build_model("tiny_ws").eval()
    source, driver = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    g = torch.Generator().manual_seed(1)
    poses = [pose_matrix(1 + 0.1 * torch.rand(2, 3, generator=g), 0.4 * torch.rand(2, 3, generator=g) - 0.2,
                         0.1 * torch.rand(2, 3, generator=g)) for _ in range(2)]
    with torch.no_grad():
        given = model(source, driver, *poses)
        regressed = model(source, driver)
    assert torch.equal(given["avatar"].pose, poses[0]) and torch.equal(given["motion"].pose, poses[1])
    assert not torch.allclose(given["image"], regressed["image"])
    # the expression encoder reads the driver aligned by the given pose
    with torch.no_grad():
        want = model.driver_branch.expression_encoder(driver, poses[1])
    assert torch.equal(given["motion"].expression, want)


def test_the_training_pass_reads_the_batchs_true_poses():
    from megaportraits_export.data.expression_pairs import ExpressionPairHeads

    torch.manual_seed(0)
    model = build_model("tiny_ws").eval()
    heads = ExpressionPairHeads(num_identities=4, size=64, seed=1, length=4)
    batch = torch.utils.data.default_collate([heads[0], heads[1]])
    with torch.no_grad():
        out = ReenactmentPass(model, cycle=False, true_poses=True)(batch)
        want = model(batch["source"], batch["driver"], pose_from_parameters(batch["source_pose_params"]),
                     pose_from_parameters(batch["driver_pose_params"]))
        regressed = ReenactmentPass(model, cycle=False)(batch)
    assert torch.equal(out["prediction"], want["image"])
    assert not torch.allclose(out["prediction"], regressed["prediction"])


def test_the_oracle_is_refused_where_there_are_no_true_poses(tmp_path):
    from megaportraits_export.training.config import ConfigError, config_from_dict

    assert config_from_dict({"train": {"true_poses": True}, "losses": {"cycle": False}}).train.true_poses
    with pytest.raises(ConfigError, match="true_poses"):
        config_from_dict({"data": {"kind": "video", "root": str(tmp_path)}, "train": {"true_poses": True},
                          "losses": {"cycle": False}})
    with pytest.raises(ConfigError, match="true_poses"):
        config_from_dict({"train": {"true_poses": True}, "losses": {"cycle": True}})


def test_the_expression_evaluation_with_true_poses_drives_the_model_by_them():
    from megaportraits_export.evaluation import relative_motion
    from megaportraits_export.expression_eval import CheckpointExpressionReenactor, expression_pairs

    torch.manual_seed(0)
    model = build_model("tiny_ws").eval()
    pairs = expression_pairs(2, 64, identities=2)
    oracle = CheckpointExpressionReenactor(model, background="generated", true_poses=True)
    got = oracle.reenact_codes(pairs.source, pairs.driver, pairs.reference, poses=pairs.poses)
    theta_s, theta_d = (pose_from_parameters(torch.from_numpy(np.stack([p[k].model_parameters() for p in pairs.poses])))
                        for k in (0, 1))
    with torch.no_grad():
        avatar = model.source_branch.encode(pairs.source, theta_s)[0]
        pose, expression = relative_motion((avatar.pose, avatar.expression), tuple(model.driver_branch(pairs.driver, theta_d)),
                                           tuple(model.driver_branch(pairs.reference, theta_s)))
        torch.testing.assert_close(pose, theta_d, atol=1e-5, rtol=0)    # the reference is in the source's pose
        want = model.generator(avatar.canonical_volume, avatar.global_descriptor, pose, expression,
                               *avatar.source_pixels)[:, :3].clamp(0, 1)
    torch.testing.assert_close(got["driver_code"], want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="poses"):
        oracle.reenact_codes(pairs.source, pairs.driver, pairs.reference)


def test_the_oracle_scores_checkpoints_only(capsys):
    from megaportraits_export.expression_eval import main

    with pytest.raises(SystemExit) as stop:
        main(["--bundle", "somewhere", "--true-poses"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--true-poses" in err[0]
