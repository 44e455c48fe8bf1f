"""The source-pixel path (networks/source_pixels.py): the source image warped to the driver by the
composed warps, and G2D's use of it, checked against warps whose answer is known by hand."""
import math

import pytest
import torch

from megaportraits_export.checkpoint import initialise_from_checkpoint, save_checkpoint
from megaportraits_export.model import build_model
from megaportraits_export.networks.image_generator import INITIAL_BLEND_LOGIT
from megaportraits_export.networks.source_pixels import SourcePixelWarp
from megaportraits_export.warp import identity_grid

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random(*shape, seed):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_a_shifted_source_grid_shifts_the_source_image_by_the_same_pixels():
    # canonical voxel p read the source at p + (dx, dy); the driver reads the canonical volume at
    # its own voxel: every output pixel shows the source pixel (dx, dy) normalised units away
    config = build_model("tiny_ws").config
    path = SourcePixelWarp(config)
    d, s, size = config.volume_depth, config.volume_size, config.image_size
    pixels = (3, -2)   # shift in output pixels (x, y)
    shift = torch.tensor([2 * pixels[0] / size, 2 * pixels[1] / size, 0.0])
    grid = identity_grid(d, s, s)[None]
    source_grid = (grid + shift).permute(0, 4, 1, 2, 3)
    image = _random(1, 3, size, size, seed=1)
    volume = _random(1, config.volume_channels, d, s, s, seed=2)
    warped = path(volume, source_grid, grid, image)
    expected = torch.roll(image, shifts=(-pixels[1], -pixels[0]), dims=(2, 3))
    # away from the borders, where the upsampled flow is extrapolated flat and zero padding reads
    inner = (slice(None), slice(None), slice(8, size - 8), slice(8, size - 8))
    assert torch.allclose(warped[inner], expected[inner], atol=1e-5)


def test_the_visible_depth_decides_which_point_of_the_source_a_pixel_shows():
    # two depth layers that read different source points; a surface conv that sees only the
    # front layer's marker channel must return the front layer's point
    config = build_model("tiny_ws").config
    path = SourcePixelWarp(config)
    d, s = config.volume_depth, config.volume_size
    grid = identity_grid(d, s, s)[None]
    points = _random(1, 3, d, s, s, seed=3) * 2 - 1
    volume = torch.zeros(1, config.volume_channels, d, s, s)
    volume[:, 0, 1] = 1.0                       # depth 1 is the surface
    with torch.no_grad():
        path.surface.weight.zero_()
        path.surface.weight[0, 0] = 50.0        # softmax over depth -> depth 1
    flow = path.flow(volume, points, grid)
    assert torch.allclose(flow, points[:, :2, 1], atol=1e-5)
    with torch.no_grad():
        path.surface.weight.zero_()             # no surface: the mean over depth
    assert torch.allclose(path.flow(volume, points, grid), points[:, :2].mean(dim=2), atol=1e-6)


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
    source, driver = _random(2, 3, size, size, seed=5), _random(2, 3, size, size, seed=6)
    with torch.no_grad():
        old = without(source, driver)
        new = with_path(source, driver)
        avatar = with_path.source_branch(source)
        motion = with_path.driver_branch(driver)
        deformation = with_path.generator.driver_warp(motion.expression, avatar.global_descriptor)
        from megaportraits_export.warp import driver_grid, sample_volume
        grid = driver_grid(motion.pose, deformation)
        warped = with_path.generator.source_pixels(sample_volume(avatar.canonical_volume, grid),
                                                   avatar.source_coordinates, grid, source)
    m = 1 / (1 + math.exp(-INITIAL_BLEND_LOGIT))
    assert torch.allclose(new["image"], (1 - m) * old["image"] + m * warped, atol=1e-5)
    assert torch.equal(new["matte"], old["matte"])


def test_the_generator_of_a_model_with_the_path_refuses_to_render_without_the_source_pixels():
    model = build_model("tiny_ws").eval()
    size = model.config.image_size
    with torch.no_grad():
        avatar = model.source_branch(_random(1, 3, size, size, seed=7))
        motion = model.driver_branch(_random(1, 3, size, size, seed=8))
        with pytest.raises(ValueError, match="source_image and source_coordinates"):
            model.generator(*avatar[:2], *motion)
