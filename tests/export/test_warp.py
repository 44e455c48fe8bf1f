"""The warps (megaportraits_export.warp) against references derived by hand or from torch."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megaportraits_export import warp


def _random_pose(n, generator):
    scale = torch.exp(0.2 * torch.randn(n, 3, generator=generator, dtype=torch.float64))
    rotation = 0.5 * torch.randn(n, 3, generator=generator, dtype=torch.float64)
    translation = 0.3 * torch.randn(n, 3, generator=generator, dtype=torch.float64)
    return scale, rotation, translation


def _identity_pose(n=1):
    return warp.pose_matrix(torch.ones(n, 3), torch.zeros(n, 3), torch.zeros(n, 3))


def _yaw_pose(angle):
    return warp.pose_matrix(torch.ones(1, 3), torch.tensor([[angle, 0.0, 0.0]]), torch.zeros(1, 3))


def test_identity_grid_matches_affine_grid_of_the_identity():
    reference = F.affine_grid(torch.eye(3, 4)[None], (1, 1, 3, 5, 7), align_corners=False)[0]
    assert torch.allclose(warp.identity_grid(3, 5, 7), reference, atol=1e-7)


def test_pose_matrix_is_scale_times_rotation_times_translation():
    generator = torch.Generator().manual_seed(0)
    scale, rotation, translation = _random_pose(4, generator)
    pose = warp.pose_matrix(scale, rotation, translation)
    for k in range(4):
        yaw, pitch, roll = rotation[k].tolist()
        # right-handed single-axis rotations, written out by hand
        r_yaw = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
        r_pitch = np.array([[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]])
        r_roll = np.array([[math.cos(roll), -math.sin(roll), 0], [math.sin(roll), math.cos(roll), 0], [0, 0, 1]])
        s, r, t = np.eye(4), np.eye(4), np.eye(4)
        s[:3, :3] = np.diag(scale[k].numpy())
        r[:3, :3] = r_roll @ r_pitch @ r_yaw
        t[:3, 3] = translation[k].numpy()
        np.testing.assert_allclose(pose[k].numpy(), (s @ r @ t)[:3], atol=1e-12)


def test_zero_pose_is_the_identity_transform():
    assert torch.equal(_identity_pose(2), torch.eye(3, 4).expand(2, 3, 4))


def test_invert_pose_matches_the_inverse_of_the_homogeneous_matrix():
    generator = torch.Generator().manual_seed(1)
    pose = warp.pose_matrix(*_random_pose(5, generator))
    # any invertible affine map, not only S R T
    pose[:, :, :3] += 0.2 * torch.randn(5, 3, 3, generator=generator, dtype=torch.float64)
    homogeneous = torch.cat((pose, torch.tensor([[[0, 0, 0, 1.0]]], dtype=torch.float64).expand(5, 1, 4)), dim=1)
    assert torch.allclose(warp.invert_pose(pose), torch.linalg.inv(homogeneous)[:, :3], atol=1e-10)


def test_inverse_of_s_r_t_is_r_transposed_over_s_then_minus_t():
    generator = torch.Generator().manual_seed(2)
    scale, rotation, translation = _random_pose(3, generator)
    inverse = warp.invert_pose(warp.pose_matrix(scale, rotation, translation))
    r = warp.rotation_matrix(rotation)
    assert torch.allclose(inverse[:, :, :3], r.transpose(1, 2) / scale[:, None, :], atol=1e-10)
    assert torch.allclose(inverse[:, :, 3], -translation, atol=1e-10)


def test_pose_matrix_is_differentiable():
    generator = torch.Generator().manual_seed(3)
    inputs = tuple(x.requires_grad_() for x in _random_pose(2, generator))
    assert torch.autograd.gradcheck(warp.pose_matrix, inputs)
    assert torch.autograd.gradcheck(lambda *a: warp.invert_pose(warp.pose_matrix(*a)), inputs)


@pytest.mark.parametrize("make_grid", [warp.source_grid, warp.driver_grid])
def test_zero_pose_and_zero_deformation_give_the_identity_warp(make_grid):
    volume = torch.randn(2, 5, 4, 6, 8, generator=torch.Generator().manual_seed(4))
    grid = make_grid(_identity_pose(2), torch.zeros(2, 4, 6, 8, 3))
    assert torch.allclose(warp.sample_volume(volume, grid), volume, atol=1e-6)


def test_source_grid_without_deformation_matches_affine_grid_of_the_inverse_pose():
    generator = torch.Generator().manual_seed(5)
    pose = warp.pose_matrix(*_random_pose(2, generator)).float()
    homogeneous = torch.cat((pose, torch.tensor([[[0, 0, 0, 1.0]]]).expand(2, 1, 4)), dim=1)
    reference = F.affine_grid(torch.linalg.inv(homogeneous)[:, :3], (2, 1, 4, 6, 8), align_corners=False)
    assert torch.allclose(warp.source_grid(pose, torch.zeros(2, 4, 6, 8, 3)), reference, atol=1e-5)


def test_source_grid_adds_the_deformation_before_the_inverse_pose():
    generator = torch.Generator().manual_seed(6)
    deformation = 0.1 * torch.randn(1, 4, 6, 8, 3, generator=generator)
    # identity pose: the grid is p + D(p) exactly
    grid = warp.source_grid(_identity_pose(), deformation)
    assert torch.allclose(grid, warp.identity_grid(4, 6, 8) + deformation, atol=1e-7)
    # pure translation t: theta^-1 x = x - t
    pose = warp.pose_matrix(torch.ones(1, 3), torch.zeros(1, 3), torch.tensor([[0.1, -0.2, 0.3]]))
    grid = warp.source_grid(pose, deformation)
    expected = warp.identity_grid(4, 6, 8) + deformation - torch.tensor([0.1, -0.2, 0.3])
    assert torch.allclose(grid, expected, atol=1e-6)


def test_a_90_degree_yaw_moves_a_bright_voxel_where_the_hand_calculation_says():
    n = 8
    volume = torch.zeros(1, 1, n, n, n)
    z0, y0, x0 = 1, 2, 6
    volume[0, 0, z0, y0, x0] = 1.0
    # theta = R_yaw(90): (x, y, z) -> (z, y, -x); the canonical voxel p reads the source at
    # R^T p = (-z, y, x); on a centred grid -c is index n-1-i, so the voxel lands at
    # (z, y, x) = (n-1-x0, y0, z0)
    moved = warp.sample_volume(volume, warp.source_grid(_yaw_pose(math.pi / 2), torch.zeros(1, n, n, n, 3)))
    expected = torch.zeros_like(volume)
    expected[0, 0, n - 1 - x0, y0, z0] = 1.0
    assert torch.allclose(moved, expected, atol=1e-5)


def test_a_90_degree_yaw_rotates_a_ramp_volume_like_a_permuted_array():
    n = 6
    generator = torch.Generator().manual_seed(7)
    volume = torch.arange(n ** 3, dtype=torch.float32).reshape(1, 1, n, n, n) + torch.rand(1, 2, n, n, n, generator=generator)
    moved = warp.sample_volume(volume, warp.source_grid(_yaw_pose(math.pi / 2), torch.zeros(1, n, n, n, 3)))
    # out[z=k, y=j, x=i] = in[z=i, y=j, x=n-1-k]
    expected = volume.permute(0, 1, 4, 3, 2).flip(2)
    assert torch.allclose(moved, expected, atol=1e-3)
    # the driver warp with the same pose turns it back
    back = warp.sample_volume(moved, warp.driver_grid(_yaw_pose(math.pi / 2), torch.zeros(1, n, n, n, 3)))
    assert torch.allclose(back, volume, atol=1e-3)


def test_a_translation_by_two_voxels_shifts_the_volume_and_pads_with_zeros():
    n = 8
    volume = torch.randn(1, 3, 4, 4, n, generator=torch.Generator().manual_seed(8))
    shift = 2 * 2 / n
    pose = warp.pose_matrix(torch.ones(1, 3), torch.zeros(1, 3), torch.tensor([[shift, 0.0, 0.0]]))
    moved = warp.sample_volume(volume, warp.source_grid(pose, torch.zeros(1, 4, 4, n, 3)))
    expected = torch.zeros_like(volume)
    expected[..., 2:] = volume[..., :-2]
    assert torch.allclose(moved, expected, atol=1e-5)


def test_driver_grid_samples_the_field_at_the_posed_point():
    # a linear field D(x) = A x + c is reproduced exactly by trilinear interpolation between
    # voxel centres, so g_d(p) = q + A q + c wherever q stays inside the centres' box
    d = h = w = 8
    generator = torch.Generator().manual_seed(9)
    a = 0.1 * torch.randn(3, 3, generator=generator)
    c = 0.05 * torch.randn(3, generator=generator)
    deformation = (warp.identity_grid(d, h, w) @ a.T + c)[None]
    pose = warp.pose_matrix(torch.full((1, 3), 0.9), torch.tensor([[0.1, -0.05, 0.08]]), torch.tensor([[0.02, 0.0, -0.03]]))
    grid = warp.driver_grid(pose, deformation)
    q = warp.identity_grid(d, h, w) @ pose[0, :, :3].T + pose[0, :, 3]
    expected = q + q @ a.T + c
    inside = (q.abs() <= 1 - 1 / 8).all(dim=-1)
    assert inside.sum() > 100
    assert torch.allclose(grid[0][inside], expected[inside], atol=1e-5)


def test_driver_grid_with_identity_pose_reads_the_field_without_resampling():
    deformation = 0.1 * torch.randn(2, 4, 6, 8, 3, generator=torch.Generator().manual_seed(10))
    grid = warp.driver_grid(_identity_pose(2), deformation)
    assert torch.allclose(grid, warp.identity_grid(4, 6, 8) + deformation, atol=1e-6)


def test_use_volume_sampler_routes_sample_volume_and_restores_the_default():
    calls = []

    def recording_sampler(volume, grid):
        calls.append((volume.shape, grid.shape))
        return warp.torch_volume_sampler(volume, grid) * 2

    volume = torch.randn(1, 2, 3, 4, 5)
    grid = warp.identity_grid(3, 4, 5)[None]
    with warp.use_volume_sampler(recording_sampler):
        doubled = warp.sample_volume(volume, grid)
    assert calls == [(volume.shape, grid.shape)]
    assert torch.allclose(doubled, 2 * volume, atol=1e-6)
    with pytest.raises(RuntimeError):
        with warp.use_volume_sampler(recording_sampler):
            raise RuntimeError("inside")
    assert warp.current_volume_sampler() is warp.torch_volume_sampler
    assert torch.allclose(warp.sample_volume(volume, grid), volume, atol=1e-6)
