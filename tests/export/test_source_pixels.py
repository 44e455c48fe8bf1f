"""The source-pixel path (networks/source_pixels.py): the source image warped to the driver by the
poses' rigid motion and the anchored expression field, checked against motions whose answer is
known by hand."""
import math

import pytest
import torch

from megaportraits_export.checkpoint import initialise_from_checkpoint, save_checkpoint
from megaportraits_export.model import build_model
from megaportraits_export.networks.image_generator import INITIAL_BLEND_LOGIT
from megaportraits_export.networks.source_pixels import SourcePixelWarp
from megaportraits_export.warp import identity_grid, pose_matrix

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random(*shape, seed):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def config():
    return build_model("tiny_ws").config


def _path(config, seed=0, unmoved_candidate=False):
    torch.manual_seed(seed)
    path = SourcePixelWarp(config).eval()
    with torch.no_grad():   # a field far from its small initial scale, and a pose in its code, so the tests see them
        path.expression_motion.head.weight.mul_(100.0)
        path.pose_to_code.weight.normal_(0.0, 0.5)
        if not unmoved_candidate:   # the last candidate, the unmoved pixel, off
            path.surface.bias[-1] = -100.0
    return path


def _inputs(config, n, seed):
    d, s = config.volume_depth, config.volume_size
    return (_random(n, config.volume_channels, d, s, s, seed=seed),
            _random(n, config.descriptor_channels, config.descriptor_size, config.descriptor_size, seed=seed + 1),
            _random(n, 3, config.image_size, config.image_size, seed=seed + 2))


def _identity_pose(n):
    return torch.cat((torch.eye(3), torch.zeros(3, 1)), dim=1).expand(n, 3, 4)


def test_a_translated_driver_pose_shifts_the_source_image_by_the_same_pixels(config):
    # theta_s = identity, theta_d p = p + t, the same expression: each output pixel shows the
    # source pixel t away, whatever depth is seen
    path = _path(config)
    with torch.no_grad():
        path.pose_to_code.weight.zero_()   # the rigid motion alone
    volume, descriptor, image = _inputs(config, 1, seed=1)
    size = config.image_size
    pixels = (3, -2)
    driver_pose = _identity_pose(1).clone()
    driver_pose[0, :, 3] = torch.tensor([2 * pixels[0] / size, 2 * pixels[1] / size, 0.1])
    z = _random(1, config.expression_dim, seed=4)
    with torch.no_grad():
        warped, flow = path(volume, driver_pose, z, _identity_pose(1), z, descriptor, image)
    expected = torch.roll(image, shifts=(-pixels[1], -pixels[0]), dims=(2, 3))
    inner = (slice(None), slice(None), slice(8, size - 8), slice(8, size - 8))
    assert torch.allclose(warped[inner], expected[inner], atol=1e-5)
    # the flow it hands back (for the source_flow loss): each pixel's centre, t further
    centres = identity_grid(1, size, size)[0, ..., :2].permute(2, 0, 1)[None]
    shift = torch.tensor([2 * pixels[0] / size, 2 * pixels[1] / size]).view(1, 2, 1, 1)
    assert torch.allclose(flow[inner], (centres + shift)[inner], atol=1e-5)


def test_what_is_pulled_from_beyond_the_edge_is_the_edge_pixel_not_black(config):
    # a driver moved two image widths to the side: every pixel shows a point right of the source
    # image, which is its row's last pixel (border padding); with zero padding a head moved up
    # left a black band below its torso, 23.68 dB on `evaluate` against 24.25 (session 10)
    path = _path(config)
    with torch.no_grad():
        path.pose_to_code.weight.zero_()
    volume, descriptor, image = _inputs(config, 1, seed=11)
    driver_pose = _identity_pose(1).clone()
    driver_pose[0, 0, 3] = 4.0
    z = _random(1, config.expression_dim, seed=12)
    with torch.no_grad():
        warped, _ = path(volume, driver_pose, z, _identity_pose(1), z, descriptor, image)
    size = config.image_size
    rows = slice(8, size - 8)   # where the upsampled flow is exact
    assert torch.allclose(warped[:, :, rows], image[:, :, rows, -1:].expand(-1, -1, -1, size), atol=1e-5)


@pytest.mark.parametrize("camera_distance", [0.0, 4.0])   # orthographic, and through a pinhole camera
@pytest.mark.parametrize("unmoved_candidate", [False, True])
def test_the_source_driven_by_its_own_pose_and_expression_is_unmoved(config, unmoved_candidate, camera_distance):
    if camera_distance:
        config = config.replace(name="tiny_ws_perspective", camera_distance=camera_distance)
    path = _path(config, unmoved_candidate=unmoved_candidate)
    volume, descriptor, image = _inputs(config, 2, seed=5)
    g = torch.Generator().manual_seed(6)
    pose = pose_matrix(1 + 0.1 * torch.rand(2, 3, generator=g), 0.4 * torch.rand(2, 3, generator=g) - 0.2,
                       0.1 * torch.rand(2, 3, generator=g))
    z = _random(2, config.expression_dim, seed=7)
    with torch.no_grad():
        warped, _ = path(volume, pose, z, pose, z, descriptor, image)
    size = config.image_size
    inner = (slice(None), slice(None), slice(8, size - 8), slice(8, size - 8))
    assert torch.allclose(warped[inner], image[inner], atol=1e-5)


def test_only_the_change_of_motion_moves_the_points(config):
    # identity poses: q is the voxel grid itself, where the field is read without resampling, so
    # the points are p + M(m_d)(p) - M(m_s)(p), the fields straight from the generator, with the
    # codes m = z + W theta + b by hand
    path = _path(config)
    volume, descriptor, _ = _inputs(config, 2, seed=8)
    z_d, z_s = _random(2, config.expression_dim, seed=9), _random(2, config.expression_dim, seed=10)
    pose = _identity_pose(2)
    with torch.no_grad():
        points = path.source_points(pose, z_d, pose, z_s, descriptor)
        code = lambda z: z + pose.flatten(1) @ path.pose_to_code.weight.T + path.pose_to_code.bias  # noqa: E731
        change = path.expression_motion(code(z_d), descriptor) - path.expression_motion(code(z_s), descriptor)
    grid = identity_grid(config.volume_depth, config.volume_size, config.volume_size)
    assert change.abs().max() > 1e-3
    assert torch.allclose(points, grid + change, atol=1e-5)


def test_the_candidate_seen_decides_which_point_of_the_source_a_pixel_shows(config):
    path = _path(config, unmoved_candidate=True)
    d, s = config.volume_depth, config.volume_size
    points = _random(1, d, s, s, 3, seed=11) * 2 - 1
    volume = torch.zeros(1, config.volume_channels, d, s, s)
    volume[:, 0, 1] = 1.0                       # channel 0 at depth 1 marks the surface
    folded = 0 * d + 1                          # (channel 0, depth 1), depth folded into the channels: c * D + d
    unmoved = identity_grid(1, s, s)[0, ..., :2].permute(2, 0, 1)[None]
    with torch.no_grad():
        path.surface.weight.zero_()
        path.surface.bias.zero_()
        path.surface.weight[1, folded] = 50.0   # candidate 1 (depth 1) where the mark is
        front = path.flow(volume, points)
        path.surface.weight.zero_()
        path.surface.bias[-1] = 50.0            # the unmoved pixel everywhere
        still = path.flow(volume, points)
        path.surface.bias.zero_()               # nothing learnt: the mean of the D + 1 candidates
        mean = path.flow(volume, points)
    assert torch.allclose(front, points[:, 1, ..., :2].permute(0, 3, 1, 2), atol=1e-5)
    assert torch.allclose(still, unmoved, atol=1e-6)
    expected = (points[..., :2].sum(dim=1).permute(0, 3, 1, 2) + unmoved) / (d + 1)
    assert torch.allclose(mean, expected, atol=1e-6)


def test_a_model_with_the_path_starts_as_the_model_without_it_blended_by_the_initial_mask(tmp_path):
    torch.manual_seed(0)
    without = build_model("tiny_matte").eval()
    checkpoint = tmp_path / "tiny_matte.pt"
    save_checkpoint(checkpoint, without, without.config, "tiny_matte", {})
    torch.manual_seed(1)
    with_path = build_model("tiny_ws").eval()
    report = initialise_from_checkpoint(with_path, checkpoint)
    assert sorted(report["kept"]) == sorted(name for name in with_path.state_dict() if
                                            "source_pixels" in name or "source_inputs" in name or "source_blend" in name)
    size = without.config.image_size
    source, driver = _random(2, 3, size, size, seed=12), _random(2, 3, size, size, seed=13)
    with torch.no_grad():
        old = without(source, driver)
        new = with_path(source, driver)
    m = 1 / (1 + math.exp(-INITIAL_BLEND_LOGIT))
    assert torch.allclose(new["image"], (1 - m) * old["image"] + m * new["warped_source"], atol=1e-5)
    assert torch.equal(new["matte"], old["matte"])


def test_the_generator_of_a_model_with_the_path_refuses_to_render_without_the_source_pixels():
    model = build_model("tiny_ws").eval()
    size = model.config.image_size
    with torch.no_grad():
        avatar = model.source_branch(_random(1, 3, size, size, seed=14))
        motion = model.driver_branch(_random(1, 3, size, size, seed=15))
        with pytest.raises(ValueError, match="source_image, source_pose and source_expression"):
            model.generator(*avatar[:2], *motion)


def test_a_perspective_camera_moves_points_as_a_pinhole_sees_a_rigid_motion(config):
    # camera_distance d: a driver voxel (x, y, z) is the camera point (x, y) (z + d) / d at z,
    # moved rigidly (theta_s^-1 theta_d, the expression unchanged) and seen again through the
    # pinhole; by hand with numpy, voxel by voxel
    import numpy as np

    distance = 6.0
    path = _path(config.replace(name="tiny_ws_perspective", camera_distance=distance))
    with torch.no_grad():
        path.pose_to_code.weight.zero_()
    _, descriptor, _ = _inputs(config, 1, seed=11)
    g = torch.Generator().manual_seed(12)
    driver_pose = pose_matrix(1 + 0.1 * torch.rand(1, 3, generator=g), 0.6 * torch.rand(1, 3, generator=g) - 0.3,
                              0.1 * torch.rand(1, 3, generator=g))
    source_pose = pose_matrix(torch.ones(1, 3), 0.6 * torch.rand(1, 3, generator=g) - 0.3, torch.zeros(1, 3))
    z = _random(1, config.expression_dim, seed=13)
    with torch.no_grad():
        points = path.source_points(driver_pose, z, source_pose, z, descriptor)[0].double().numpy()
    grid = identity_grid(config.volume_depth, config.volume_size, config.volume_size).double().numpy()
    a_d, b_d = driver_pose[0, :, :3].double().numpy(), driver_pose[0, :, 3].double().numpy()
    a_s, b_s = source_pose[0, :, :3].double().numpy(), source_pose[0, :, 3].double().numpy()
    for index in [(0, 0, 0), (1, 3, 5), (config.volume_depth - 1, config.volume_size - 1, 2)]:
        x, y, depth = grid[index]
        camera = np.array([x * (depth + distance) / distance, y * (depth + distance) / distance, depth])
        moved = np.linalg.solve(a_s, a_d @ camera + b_d - b_s)
        seen = np.array([moved[0] * distance / (moved[2] + distance), moved[1] * distance / (moved[2] + distance),
                         moved[2]])
        np.testing.assert_allclose(points[index], seen, atol=1e-5)
    orthographic = _path(config)
    with torch.no_grad():
        orthographic.pose_to_code.weight.zero_()
        flat = orthographic.source_points(driver_pose, z, source_pose, z, descriptor)[0].double().numpy()
    assert np.abs(flat - points).max() > 1e-2


def test_a_camera_needs_the_path_and_a_distance_beyond_the_volume(config):
    with pytest.raises(ValueError, match="camera_distance"):
        config.replace(name="bad", camera_distance=0.5)
    with pytest.raises(ValueError, match="camera_distance"):
        build_model("tiny").config.replace(name="bad", camera_distance=6.0)


def test_the_source_field_cost_probe_times_a_path_and_refuses_a_model_without_one(repo_script, tmp_path, capsys):
    probe = repo_script("tools/probe_source_field_cost.py")
    with_path, without = build_model("tiny_ws"), build_model("tiny_matte")
    save_checkpoint(tmp_path / "ws.pt", with_path, with_path.config, "tiny_ws", {})
    save_checkpoint(tmp_path / "plain.pt", without, without.config, "tiny_matte", {})
    assert probe.main([str(tmp_path / "ws.pt"), "--threads", "1", "--runs", "2"]) == 0
    assert "M(m_s), the avatar's own field:" in capsys.readouterr().out
    for path, what in (("plain.pt", "no source-pixel path"), ("missing.pt", "no checkpoint")):
        assert probe.main([str(tmp_path / path), "--runs", "1"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and what in err[0]
