"""The MegaPortraits model: presets, the inference split, gradients, export folding, building blocks."""
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from megaportraits_export import warp
from megaportraits_export.config import PRESETS, ModelConfig, get_config
from megaportraits_export.model import AvatarState, Motion, build_model, folded_for_export, split_matte
from megaportraits_export.networks import ExpressionEncoder, resnet
from megaportraits_export.networks.blocks import (AdaptiveGroupNorm, WSConv2d, WSConv3d, count_parameters,
                                                  standardised_weight)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model("tiny").eval()


def _images(config, n, seed):
    return torch.rand(n, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_and_runs_on_the_meta_device_with_its_declared_shapes(name):
    config = get_config(name)
    with torch.device("meta"):
        model = build_model(name)
        source = torch.empty(2, 3, config.image_size, config.image_size)
        out = model(source, source)
    c, d, s = config.volume_channels, config.volume_depth, config.volume_size
    assert out["image"].shape == (2, 3, config.image_size, config.image_size)
    assert out["avatar"].canonical_volume.shape == (2, c, d, s, s)
    assert out["avatar"].global_descriptor.shape == (2,) + config.descriptor_shape
    assert out["avatar"].pose.shape == out["motion"].pose.shape == (2, 3, 4)
    assert out["motion"].expression.shape == (2, config.expression_dim)
    assert out["source_deformation"].shape == out["driver_deformation"].shape == (2,) + config.warp_field_shape


@pytest.mark.parametrize("name", list(PRESETS))
def test_no_group_norm_normalises_fewer_than_four_values(name):
    # a group of one value normalises to 0 and stops gradients: small presets must keep trunks >= 2x2
    config = get_config(name)
    smallest = []

    def record(module, inputs, output):
        x = inputs[0]
        groups = module.num_groups if isinstance(module, nn.GroupNorm) else module.groups
        smallest.append((x.shape[1] // groups * x[0, 0].numel(), type(module).__name__, tuple(x.shape)))

    with torch.device("meta"):
        model = build_model(name)
        for module in model.modules():
            if isinstance(module, (nn.GroupNorm, AdaptiveGroupNorm)):
                module.register_forward_hook(record)
        image = torch.empty(1, 3, config.image_size, config.image_size)
        model(image, image)
    assert min(smallest)[0] >= 4, min(smallest)


def test_paper512_has_the_papers_tensor_sizes_and_parameter_counts():
    config = get_config("paper512")
    assert config.volume_shape == (96, 16, 64, 64)
    assert config.descriptor_shape == (512, 4, 4)
    assert config.expression_dim == 512
    assert config.warp_field_shape == (16, 64, 64, 3)
    with torch.device("meta"):
        model = build_model(config)
    appearance = model.source_branch.appearance_encoder
    millions = lambda module: count_parameters(module) / 1e6  # noqa: E731
    assert millions(appearance) == pytest.approx(11.6, abs=0.2)
    assert millions(appearance.blocks_3d) == pytest.approx(1.5, abs=0.05)
    warp_generator = model.generator.driver_warp
    assert millions(warp_generator) - millions(warp_generator.embedding) == pytest.approx(9.0, abs=0.2)
    assert millions(model.source_branch.canonical_generator) == pytest.approx(57.8, abs=0.5)
    assert millions(model.generator.image_generator) == pytest.approx(35.8, abs=1.5)
    assert millions(model.driver_branch.head_pose.trunk) == pytest.approx(11.18, abs=0.01)      # ResNet-18 trunk
    assert millions(model.source_branch.global_descriptor.trunk) == pytest.approx(23.5, abs=0.05)  # ResNet-50 trunk


def test_small_presets_fit_the_demo_bundle_budget():
    for name, limit in (("small256", 4.6e6), ("demo128", 2.0e6)):
        with torch.device("meta"):
            model = build_model(name)
        # the pose and expression encoders are in both the source and the driver graph
        bundle_floats = count_parameters(model) + count_parameters(model.driver_branch)
        assert count_parameters(model) <= limit, name
        assert bundle_floats * 4 <= 25e6, name


def test_tiny_forward_and_backward_reach_every_parameter_with_finite_gradients():
    torch.manual_seed(1)
    model = build_model("tiny").train()
    config = model.config
    out = model(_images(config, 2, 1), _images(config, 2, 2))
    loss = out["image"].mean() + out["driver_expression"].square().mean() + out["source_deformation"].abs().mean()
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad
    silent = [name for name, p in model.named_parameters() if not p.grad.any()]
    assert not silent


@pytest.mark.parametrize("name", ["tiny", "tiny_ws"])
def test_the_source_driver_generator_split_equals_the_full_forward(name):
    torch.manual_seed(0)
    tiny_model = build_model(name).eval()
    config = tiny_model.config
    source, driver = _images(config, 2, 3), _images(config, 2, 4)
    with torch.no_grad():
        full = tiny_model(source, driver)
        avatar = tiny_model.source_branch(source)
        motion = tiny_model.driver_branch(driver)
        image = split_matte(tiny_model.generator(*avatar[:2], *motion, *avatar.source_pixels))[0]
    assert isinstance(avatar, AvatarState) and isinstance(motion, Motion)
    assert len(avatar.source_pixels) == (3 if config.warped_source else 0)
    for split, whole in zip(avatar, full["avatar"]):
        assert (split is None and whole is None) or torch.equal(split, whole)
    for split, whole in zip(motion, full["motion"]):
        assert torch.equal(split, whole)
    assert torch.equal(image, full["image"])
    assert torch.equal(split_matte(tiny_model.reenact(avatar, motion))[0], image)


def test_the_source_pose_and_expression_come_from_the_shared_driver_branch(tiny_model):
    source = _images(tiny_model.config, 1, 5)
    with torch.no_grad():
        avatar = tiny_model.source_branch(source)
        own_motion = tiny_model.driver_branch(source)
    assert torch.equal(avatar.pose, own_motion.pose)
    assert torch.equal(avatar.expression, own_motion.expression)
    assert tiny_model.source_branch.driver_branch is tiny_model.driver_branch
    names = [name for name, _ in tiny_model.named_parameters()]
    assert len(names) == len(set(id(p) for p in tiny_model.parameters()))


def test_cross_reenactment_differs_from_self_reenactment(tiny_model):
    config = tiny_model.config
    with torch.no_grad():
        avatar = tiny_model.source_branch(_images(config, 1, 6))
        own = tiny_model.generator(*avatar)
        other = tiny_model.generator(*avatar[:2], *tiny_model.driver_branch(_images(config, 1, 7)))
    assert not torch.allclose(own, other)


def test_batch_elements_are_independent(tiny_model):
    config = tiny_model.config
    source, driver = _images(config, 2, 8), _images(config, 2, 9)
    with torch.no_grad():
        both = tiny_model(source, driver)["image"]
        first = tiny_model(source[:1], driver[:1])["image"]
        second = tiny_model(source[1:], driver[1:])["image"]
    assert torch.allclose(both, torch.cat((first, second)), atol=1e-5)
    assert not torch.allclose(first, second)


def test_train_and_eval_mode_compute_the_same_function(tiny_model):
    config = tiny_model.config
    source, driver = _images(config, 2, 10), _images(config, 2, 11)
    with torch.no_grad():
        evaluated = tiny_model.eval()(source, driver)["image"]
        trained = tiny_model.train()(source, driver)["image"]
    tiny_model.eval()
    assert torch.equal(evaluated, trained)


def test_folded_for_export_has_no_ws_convs_and_gives_the_same_outputs(tiny_model):
    config = tiny_model.config
    folded = folded_for_export(tiny_model)
    assert not any(isinstance(m, (WSConv2d, WSConv3d)) for m in folded.modules())
    assert any(isinstance(m, (WSConv2d, WSConv3d)) for m in tiny_model.modules())
    assert count_parameters(folded) == count_parameters(tiny_model)
    source, driver = _images(config, 2, 12), _images(config, 2, 13)
    with torch.no_grad():
        expected = tiny_model(source, driver)
        actual = folded(source, driver)
    assert torch.allclose(actual["image"], expected["image"], atol=1e-5)
    assert torch.allclose(actual["avatar"].canonical_volume, expected["avatar"].canonical_volume, atol=1e-4)


def test_weight_standardisation_on_every_conv_but_each_networks_first_and_last(tiny_model):
    branch, generator = tiny_model.source_branch, tiny_model.generator
    plain = {
        branch.appearance_encoder.stem,
        branch.global_descriptor.trunk.conv1, branch.global_descriptor.to_descriptor,
        tiny_model.driver_branch.head_pose.trunk.conv1, tiny_model.driver_branch.expression_encoder.trunk.conv1,
        branch.source_warp.embedding.mix, branch.source_warp.head,
        generator.driver_warp.embedding.mix, generator.driver_warp.head,
        branch.canonical_generator.head[-1],
        generator.image_generator.projection.conv, generator.image_generator.to_rgb[-1],
    }
    for module in tiny_model.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            assert isinstance(module, (WSConv2d, WSConv3d)) == (module not in plain)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.Dropout)) for m in tiny_model.modules())


def test_ws_conv_standardises_each_filter():
    conv = WSConv3d(4, 6, 3, padding=1)
    weight = standardised_weight(conv.weight)
    flat = weight.reshape(6, -1)
    assert torch.allclose(flat.mean(dim=1), torch.zeros(6), atol=1e-6)
    assert torch.allclose(flat.var(dim=1, unbiased=False), torch.full((6,), 1 / flat.shape[1]), atol=1e-5)
    x = torch.randn(1, 4, 5, 5, 5)
    raw = conv.weight.reshape(6, -1)
    by_hand = ((raw - raw.mean(1, keepdim=True)) / raw.std(1, unbiased=False, keepdim=True) / raw.shape[1] ** 0.5)
    assert torch.allclose(conv(x), F.conv3d(x, by_hand.reshape_as(conv.weight), conv.bias, padding=1), atol=1e-4)


def test_adaptive_group_norm_projects_scale_and_shift_from_the_embedding():
    torch.manual_seed(2)
    norm = AdaptiveGroupNorm(channels=8, embed_channels=5, embed_size=2)
    x, embedding = torch.randn(3, 8, 2, 3, 4), torch.randn(3, 5, 2, 2)
    params = torch.einsum("ce,nes,sk->nck", norm.channel_projection, embedding.flatten(2), norm.spatial_projection)
    groups = x.reshape(3, norm.groups, -1)
    normalised = ((groups - groups.mean(-1, keepdim=True)) / torch.sqrt(groups.var(-1, unbiased=False, keepdim=True) + 1e-5))
    expected = normalised.reshape_as(x) * (1 + params[..., 0, None, None, None]) + params[..., 1, None, None, None]
    assert torch.allclose(norm(x, embedding), expected, atol=1e-5)


def test_an_all_zero_pose_head_predicts_the_identity_transform(tiny_model):
    model = build_model("tiny")
    with torch.no_grad():
        model.driver_branch.head_pose.to_parameters.weight.zero_()
        pose = model.driver_branch.head_pose(_images(model.config, 2, 14))
    assert torch.allclose(pose, torch.eye(3, 4).expand(2, 3, 4), atol=0)


def test_the_expression_crop_is_a_2x_zoom_around_the_head_centre():
    # a crop half the image's side lands exactly on pixel centres, so it is plain slicing
    config = get_config("tiny")
    encoder = ExpressionEncoder(config.replace(expression_input_size=config.image_size // 2))
    image = _images(config, 1, 15)
    s, q = config.image_size, config.image_size // 4
    identity = warp.pose_matrix(torch.ones(1, 3), torch.zeros(1, 3), torch.zeros(1, 3))
    assert torch.allclose(encoder.aligned_crop(image, identity), image[..., q:s - q, q:s - q], atol=1e-5)
    # head centre = theta^-1(0) = -t: t = (-4/s, +2/s) moves it 2 pixels right and 1 up
    shifted = warp.pose_matrix(torch.ones(1, 3), torch.zeros(1, 3), torch.tensor([[-4 / s, 2 / s, 0.3]]))
    assert torch.allclose(encoder.aligned_crop(image, shifted), image[..., q - 1:s - q - 1, q + 2:s - q + 2], atol=1e-5)


def test_the_expression_crop_box_filters_a_large_image_before_sampling_it():
    # paper geometry: a 128x128 crop of a 512x512 image is sampled 1:1 from the image pooled to 256
    config = get_config("tiny")
    encoder = ExpressionEncoder(config.replace(expression_input_size=config.image_size // 4))
    image = _images(config, 1, 16)
    pooled = F.avg_pool2d(image, 2)
    s, q = pooled.shape[-1], pooled.shape[-1] // 4
    identity = warp.pose_matrix(torch.ones(1, 3), torch.zeros(1, 3), torch.zeros(1, 3))
    assert torch.allclose(encoder.aligned_crop(image, identity), pooled[..., q:s - q, q:s - q], atol=1e-5)


def test_pretrained_backbones_load_a_cached_torchvision_checkpoint(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(resnet, "_reported_missing", set())
    config = get_config("tiny").replace(pretrained_backbones=True)
    with caplog.at_level(logging.WARNING, logger=resnet.__name__):
        build_model(config)
        build_model(config)
    missing = [r for r in caplog.records if "without ImageNet weights" in r.getMessage()]
    assert len(missing) == 2          # once for resnet18, once for resnet50, not once per trunk or per build

    # a torchvision-layout checkpoint: ``bn`` names, BatchNorm buffers and an fc head we do not have
    trunk = resnet.ResNetTrunk(config.pose_backbone)
    torchvision_state = {}
    for key, tensor in trunk.state_dict().items():
        name = key.replace("norm", "bn")
        torchvision_state[name] = torch.randn_like(tensor)
    torchvision_state["bn1.running_mean"] = torch.zeros(config.pose_backbone.width)
    torchvision_state["fc.weight"] = torch.randn(1000, trunk.out_channels)
    (tmp_path / "checkpoints").mkdir()
    torch.save(torchvision_state, tmp_path / "checkpoints" / "resnet18-0000.pth")
    model = build_model(config)
    loaded = model.driver_branch.head_pose.trunk.state_dict()
    assert torch.equal(loaded["conv1.weight"], torchvision_state["conv1.weight"])
    assert torch.equal(loaded["layer1.0.norm2.bias"], torchvision_state["layer1.0.bn2.bias"])
    assert torch.equal(model.driver_branch.expression_encoder.trunk.state_dict()["layer4.0.downsample.0.weight"],
                       torchvision_state["layer4.0.downsample.0.weight"])


def test_config_errors_say_what_to_change():
    with pytest.raises(ValueError, match="unknown preset 'huge'; choose one of paper512"):
        get_config("huge")
    with pytest.raises(ValueError, match="appearance_channels"):
        get_config("tiny").replace(appearance_channels=(16,))
    config = get_config("small256")
    assert ModelConfig.from_dict(config.to_dict()) == config
