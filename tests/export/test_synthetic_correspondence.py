"""The true correspondence of two synthetic renderings (data/synthetic/correspondence.py), checked
against the renderer itself: its camera's projection, and its images."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megaportraits_export.data import synthetic
from megaportraits_export.data.synthetic.camera import _SHIFT_SCALE, _Camera
from megaportraits_export.data.synthetic.correspondence import pixel_centres, skull_correspondence, skull_points
from megaportraits_export.warp import pose_from_parameters

SIZE = 96


def _camera_pixels(pose, head_points):
    """The renderer's own projection of head-frame points, in normalised image coordinates."""
    camera = _Camera(pose, 2 * SIZE)
    canvas = camera.head(head_points.reshape(-1, 3)) / _SHIFT_SCALE
    return ((2.0 * canvas + 1.0) / (2 * SIZE) - 1.0).reshape(*head_points.shape[:-1], 2)


@pytest.mark.parametrize("seed", [3, 17])
def test_rays_land_where_the_renderers_camera_projects(seed):
    rng = np.random.default_rng(seed)
    identity = synthetic.Identity.sample(seed)
    source_pose, driver_pose = synthetic.Pose.random(rng), synthetic.Pose.random(rng)
    head_points, _, hit = skull_points(identity, driver_pose, SIZE)
    radii = np.array([identity.head_width, identity.head_height, identity.head_depth])
    assert hit.mean() > 0.1
    np.testing.assert_allclose(((head_points[hit] / radii) ** 2).sum(-1), 1.0, atol=1e-9)
    x, y = pixel_centres(SIZE)
    back = _camera_pixels(driver_pose, head_points[hit])
    # the camera rounds to 1/16 of a supersampled pixel
    np.testing.assert_allclose(back, np.stack([x, y], -1)[hit], atol=1.0 / (16 * SIZE))
    points, seen = skull_correspondence(identity, source_pose, driver_pose, SIZE)
    assert seen.sum() > 0.5 * hit.sum() and not (seen & ~hit).any()
    np.testing.assert_allclose(points[seen], _camera_pixels(source_pose, head_points[seen]), atol=2.0 / (16 * SIZE))
    np.testing.assert_array_equal(points[~seen], np.stack([x, y], -1)[~seen].astype(np.float32))


def test_the_same_pose_is_the_identity():
    identity = synthetic.Identity.sample(5)
    pose = synthetic.Pose(yaw=0.3, pitch=-0.1, roll=0.05, tx=0.04)
    points, seen = skull_correspondence(identity, pose, pose, SIZE)
    x, y = pixel_centres(SIZE)
    assert seen.mean() > 0.1
    np.testing.assert_allclose(points, np.stack([x, y], -1), atol=1e-6)


def _psnr(a, b, where):
    return float(-10 * torch.log10(((a - b) ** 2 * where).sum() / (where.sum() * a.shape[1])))


def test_the_source_warped_by_it_draws_the_drivers_features():
    """A head turned and moved: the source rendering warped by the correspondence matches the
    driver's rendering on the eyes, brows and mouth far better than the unwarped source."""
    identity = synthetic.Identity.sample(11)
    source_pose = synthetic.Pose(yaw=-0.25, pitch=0.1, roll=-0.08, tx=-0.03, ty=0.02)
    driver_pose = synthetic.Pose(scale=1.06, yaw=0.3, pitch=-0.12, roll=0.1, tx=0.04, ty=-0.03)
    expression = synthetic.Expression(mouth_open=0.6)
    image = lambda pose, features=True: torch.from_numpy(  # noqa: E731
        synthetic.render(identity, pose, expression, SIZE, face_features=features)).permute(2, 0, 1)[None].float() / 255
    source, driver = image(source_pose), image(driver_pose)
    points, seen = skull_correspondence(identity, source_pose, driver_pose, SIZE)
    warped = F.grid_sample(source, torch.from_numpy(points)[None], mode="bilinear", align_corners=False)
    # the features: where the driver's rendering differs from its bare head, on the skull seen by
    # both (the nose among them: it stands out of the skull, and keeps the score near 20 dB)
    features = (driver - image(driver_pose, False)).abs().amax(1, keepdim=True) > 0.1
    where = (features & torch.from_numpy(seen)[None, None]).float()
    assert where.sum() > 100
    warped_psnr, unwarped_psnr = _psnr(warped, driver, where), _psnr(source, driver, where)
    assert warped_psnr > unwarped_psnr + 6.0
    assert warped_psnr > 18.0


def test_the_pose_probes_rigid_motion_with_true_poses_is_the_true_correspondence(repo_script):
    """tools/probe_pose_precision.py moves pixels with the model's theta (Pose.model_parameters,
    warp.pose_matrix) and the renderer's perspective; with the true poses that must be the
    correspondence cast through the renderer's camera, and the orthographic camera must not."""
    probe = repo_script("tools/probe_pose_precision.py")
    from megaportraits_export.expression_eval import expression_pairs

    pairs = expression_pairs(4, 64, identities=4)
    motion = probe.PixelMotion(pairs)
    params = [torch.from_numpy(np.stack([poses[k].model_parameters() for poses in pairs.poses])) for k in (0, 1)]
    theta_s, theta_d = pose_from_parameters(params[0]), pose_from_parameters(params[1])
    truth = torch.from_numpy(np.stack([
        skull_correspondence(synthetic.Identity.sample(person), source_pose, driver_pose, 64)[0]
        for (person, _), (source_pose, driver_pose) in zip(pairs.identities, pairs.poses)]))
    seen = torch.from_numpy(np.stack([
        skull_correspondence(synthetic.Identity.sample(person), source_pose, driver_pose, 64)[1]
        for (person, _), (source_pose, driver_pose) in zip(pairs.identities, pairs.poses)]))
    assert seen.float().mean() > 0.05
    perspective = motion.grid(theta_d, theta_s, perspective=True)
    torch.testing.assert_close(perspective[seen], truth[seen], atol=1e-4, rtol=0)
    orthographic = motion.grid(theta_d, theta_s, perspective=False)
    assert (orthographic[seen] - truth[seen]).abs().max() > 5e-3
    # the relative motion of a driver whose reference has the source's pose is the driver's pose
    relative = probe._compose_relative(theta_s, theta_d, theta_s)
    torch.testing.assert_close(relative, theta_d, atol=1e-5, rtol=0)
    # and the probe's ceiling: a perfect edit moved by the true motion beats the source moved so
    figures = probe.ceiling(pairs, perspective)
    assert figures["edit"] > figures["source"] + 2.0


def test_the_pose_probe_scores_regressor_errors_by_hand(repo_script):
    probe = repo_script("tools/probe_pose_precision.py")
    truth = torch.tensor([[1.0, 0.1, -0.2, 0.05, 0.01, -0.02, 0.0]])
    predicted = torch.tensor([[math.exp(0.03), 0.0, 0.0, 0.1 + math.radians(2), -0.2, 0.05 - math.radians(1), 0.03, -0.02, 0.0]])
    errors = probe.regressor_errors(predicted, truth)
    assert errors["yaw_deg"] == pytest.approx(2.0, abs=0.01) and errors["pitch_deg"] == pytest.approx(0.0, abs=0.01)
    assert errors["roll_deg"] == pytest.approx(1.0, abs=0.01)
    assert errors["translation"] == pytest.approx(0.01, abs=1e-4) and errors["log_scale"] == pytest.approx(0.03, abs=1e-4)


def test_the_expression_pairs_carry_the_correspondence_of_their_poses():
    from megaportraits_export.data.expression_pairs import ExpressionPairHeads

    heads = ExpressionPairHeads(num_identities=5, size=48, seed=2, length=6)
    item = heads[4]
    identity = synthetic.Identity.sample(int(item["identity"]))
    poses = [synthetic.Pose.from_model_parameters(item[f"{k}_pose_params"].tolist()) for k in ("source", "driver")]
    points, seen = skull_correspondence(identity, poses[0], poses[1], 48)
    assert item["driver_correspondence"].shape == (2, 48, 48) and item["driver_correspondence_seen"].shape == (1, 48, 48)
    assert seen.any() and np.array_equal(item["driver_correspondence_seen"][0].numpy() > 0, seen)
    np.testing.assert_allclose(item["driver_correspondence"].permute(1, 2, 0).numpy(), points, atol=1e-5)


def test_the_source_flow_term_is_the_mean_distance_on_the_seen_pixels():
    from megaportraits_export.training.objectives import LossComputer

    rng = np.random.default_rng(9)
    flow, truth = (torch.from_numpy(rng.uniform(-1, 1, (2, 2, 16, 16))) for _ in range(2))
    seen = torch.from_numpy((rng.random((2, 1, 16, 16)) < 0.3).astype(np.float64))
    computer = LossComputer({"l1": 0.0, "perceptual": 0.0, "adversarial": 0.0, "feature_matching": 0.0,
                             "source_flow": 3.0}, torch.device("cpu"))
    prediction = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    batch = {"driver": prediction, "driver_correspondence": truth, "driver_correspondence_seen": seen}
    total, logged = computer.generator({"prediction": prediction, "matte": None, "source_flow": flow}, batch, None)
    mask = seen.numpy()[:, 0].astype(bool)
    by_hand = np.abs(flow.numpy() - truth.numpy()).transpose(0, 2, 3, 1)[mask].mean()
    assert float(total) == pytest.approx(3.0 * by_hand, rel=1e-9)
    assert logged["source_flow"] == pytest.approx(3.0 * by_hand)
    with pytest.raises(ValueError, match="source-pixel path"):
        computer.generator({"prediction": prediction, "matte": None}, batch, None)
    with pytest.raises(ValueError, match="correspondence"):
        computer.generator({"prediction": prediction, "matte": None, "source_flow": flow}, {"driver": prediction}, None)


def test_the_pose_probe_says_what_is_wrong_in_one_line(repo_script, capsys, tmp_path):
    probe = repo_script("tools/probe_pose_precision.py")
    assert probe.main([str(tmp_path / "missing.pt"), "--pairs", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.pt" in err[0]
    with pytest.raises(SystemExit) as stop:
        probe.main(["--json", str(tmp_path / "no" / "such" / "x.json")])
    assert stop.value.code == 2 and "folder" in capsys.readouterr().err
