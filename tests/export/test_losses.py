"""Losses: values checked by hand, gradients, the discriminator's spectral norm, the weights."""
import math

import numpy as np
import pytest
import torch

from megaportraits_export.losses import (
    LossWeights,
    MultiScaleDiscriminator,
    PerceptualLoss,
    VGG19Features,
    combine_losses,
    cosface_loss,
    discriminator_hinge_loss,
    feature_matching_loss,
    generator_hinge_loss,
    motion_cycle_loss,
    multiscale_l1,
)
from megaportraits_export.losses import perceptual


def unit(degrees, length=1.0):
    angle = math.radians(degrees)
    return torch.tensor([[length * math.cos(angle), length * math.sin(angle)]], dtype=torch.float64)


def test_cosface_cycle_loss_by_hand():
    # z_d along x, z_d* along y; z_s->d at 30 degrees, z_s*->d at 60 degrees.
    z_d, z_d2 = unit(0), unit(90)
    z_sd, z_s2d = unit(30, length=3.0), unit(60, length=0.5)  # lengths must not matter
    s, m = 5.0, 0.2
    negatives = math.exp(s * math.cos(math.radians(60))) + math.exp(s * math.cos(math.radians(30)))
    expected = 0.0
    for positive_cos in (math.cos(math.radians(30)), math.cos(math.radians(60))):
        a = math.exp(s * (positive_cos - m))
        expected += -math.log(a / (a + negatives))
    # by hand: negatives e^2.5 + e^4.3301 = 12.1825 + 75.954 = 88.137;
    # 30 degrees: ln((e^3.3301 + 88.137) / e^3.3301) = ln(116.079 / 27.942) = 1.4241
    # 60 degrees: ln((e^1.5 + 88.137) / e^1.5) = ln(92.618 / 4.4817) = 3.0285
    assert expected == pytest.approx(1.4241 + 3.0285, abs=1e-3)
    loss = motion_cycle_loss(z_sd, z_s2d, z_d, z_d2)
    assert float(loss) == pytest.approx(expected, rel=1e-9)
    # the general form with the same pairs agrees, and the margin only penalises
    general = cosface_loss([(z_sd, z_d), (z_s2d, z_d)], [(z_sd, z_d2), (z_s2d, z_d2)], scale=s, margin=m)
    assert float(general) == pytest.approx(expected, rel=1e-9)
    assert float(cosface_loss([(z_sd, z_d)], [(z_sd, z_d2)], margin=0.0)) < float(cosface_loss([(z_sd, z_d)], [(z_sd, z_d2)]))


def test_cosface_loss_is_a_batch_mean_and_has_gradients():
    torch.manual_seed(0)
    codes = [torch.randn(4, 16, requires_grad=True) for _ in range(4)]
    loss = motion_cycle_loss(*codes)
    per_item = [float(motion_cycle_loss(*(c[i:i + 1].detach() for c in codes))) for i in range(4)]
    assert float(loss.detach()) == pytest.approx(sum(per_item) / 4, rel=1e-5)
    loss.backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in codes)
    # aligned positives and orthogonal negatives give a smaller loss than the reverse
    z = torch.eye(4)
    good = motion_cycle_loss(z[:1], z[:1], z[:1], z[1:2])
    bad = motion_cycle_loss(z[1:2], z[1:2], z[:1], z[1:2])
    assert float(good) < float(bad)
    with pytest.raises(ValueError, match="at least one positive"):
        cosface_loss([], [(z, z)])


def constant_outputs(values, shape=(2, 1, 3, 3)):
    """Discriminator outputs with one feature map and the logits, per scale."""
    return [[torch.full((2, 4, 5, 5), 0.1), torch.full(shape, v)] for v in values]


def test_hinge_losses_by_hand():
    real, fake = constant_outputs([0.5, 2.0]), constant_outputs([-0.25, 0.5])
    # scale 1: relu(1 - 0.5) + relu(1 - 0.25) = 1.25; scale 2: relu(1 - 2) + relu(1 + 0.5) = 1.5
    assert float(discriminator_hinge_loss(real, fake)) == pytest.approx((1.25 + 1.5) / 2)
    assert float(generator_hinge_loss(fake)) == pytest.approx(-(-0.25 + 0.5) / 2)
    # logits on both sides of the margins: the hinge of each patch, then the mean (the hinge of
    # the mean would differ). Real patches 3, 0, -1, 0.5: relu(1 - x) = 0, 1, 2, 0.5 -> 0.875;
    # fake patches -3, 0, 1, -0.5: relu(1 + x) = 0, 1, 2, 0.5 -> 0.875
    real_logits = torch.tensor([3.0, 0.0, -1.0, 0.5]).view(1, 1, 2, 2)
    fake_logits = torch.tensor([-3.0, 0.0, 1.0, -0.5]).view(1, 1, 2, 2)
    real, fake = [[torch.zeros(1, 2, 2, 2), real_logits]], [[torch.zeros(1, 2, 2, 2), fake_logits]]
    assert float(discriminator_hinge_loss(real, fake)) == pytest.approx(0.875 + 0.875)
    assert float(generator_hinge_loss(fake)) == pytest.approx(-(-3.0 + 0.0 + 1.0 - 0.5) / 4)


def test_feature_matching():
    """Every layer of every scale counts, each as its own mean, logits excluded: per-layer and
    per-scale differences of different sizes, expected values computed with numpy."""
    torch.manual_seed(0)
    shapes = [(2, 4, 8, 8), (2, 8, 4, 4), (2, 1, 3, 3)]  # two feature maps, then the logits
    real = [[torch.randn(*shape) for shape in shapes] for _ in range(2)]
    same = [[f.clone().requires_grad_() for f in scale] for scale in real]
    assert float(feature_matching_loss(same, real).detach()) == 0.0
    # a different offset per (scale, layer) and random per-element noise; logits moved a lot
    offsets = [[0.1, 0.4, 7.0], [0.9, 1.6, -5.0]]
    noise = [[0.3 * torch.randn(*shape) for shape in shapes] for _ in range(2)]
    fake = [[f + o + n for f, o, n in zip(scale, scale_offsets, scale_noise)]
            for scale, scale_offsets, scale_noise in zip(same, offsets, noise)]
    per_layer = [[np.abs((o + n).numpy()).mean() for o, n in zip(scale_offsets[:-1], scale_noise[:-1])]
                 for scale_offsets, scale_noise in zip(offsets, noise)]
    expected = np.mean([np.mean(layers) for layers in per_layer])
    assert 0.5 < expected < 1.2 and len({round(v, 2) for layers in per_layer for v in layers}) == 4
    loss = feature_matching_loss(fake, real)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    loss.backward()
    for scale in same:
        assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in scale[:-1])
        assert scale[-1].grad is None


def test_discriminator_spectral_norm_is_active():
    torch.manual_seed(0)
    discriminator = MultiScaleDiscriminator(num_scales=2, base_channels=8, num_layers=3)
    image = torch.rand(2, 3, 32, 32, requires_grad=True)
    discriminator.train()
    for _ in range(30):  # one power iteration per forward pass
        outputs = discriminator(image)
    convs = [m for m in discriminator.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 * 4
    for conv in convs:
        raw = conv.parametrizations.weight.original
        effective = conv.weight
        sigma = torch.linalg.matrix_norm(effective.detach().flatten(1), ord=2)
        raw_sigma = torch.linalg.matrix_norm(raw.detach().flatten(1), ord=2)
        assert float(sigma) == pytest.approx(1.0, abs=0.05)
        assert abs(float(raw_sigma) - 1.0) > 0.1, "the raw weight itself is not normalised"
    assert len(outputs) == 2 and outputs[1][-1].shape[-1] < outputs[0][-1].shape[-1]
    generator_hinge_loss(outputs).backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_vgg19_layout_matches_torchvision_indices(tmp_path):
    features = perceptual.vgg19_feature_stack(36)
    conv_indices = [i for i, m in enumerate(features) if isinstance(m, torch.nn.Conv2d)]
    # torchvision.models.vgg19().features: conv layers at these indices, pools at 4, 9, 18, 27, 36
    assert conv_indices == [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]
    assert [i for i, m in enumerate(features) if isinstance(m, torch.nn.MaxPool2d)] == [4, 9, 18, 27, 36]
    assert all(isinstance(features[i], torch.nn.ReLU) for i in perceptual.VGG19_LAYERS)
    # a torchvision-format state dict (features.N.*, classifier.*) loads by those names
    torch.manual_seed(1)
    state = {f"features.{k}": v.clone().normal_() for k, v in features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(4, 4)
    path = tmp_path / "vgg19-test.pth"
    torch.save(state, path)
    loaded = VGG19Features(path)
    assert loaded.pretrained
    assert torch.equal(loaded.features[28].weight, state["features.28.weight"])


def test_missing_imagenet_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="ImageNet VGG19 weights not found"):
        VGG19Features("imagenet")
    fallback = VGG19Features("auto")
    assert not fallback.pretrained
    again = VGG19Features("random")
    assert torch.equal(fallback.features[0].weight, again.features[0].weight), "the fallback is fixed"
    (tmp_path / "checkpoints").mkdir()
    torch.save({f"features.{k}": v for k, v in fallback.features.state_dict().items()},
               tmp_path / "checkpoints" / "vgg19-dcbb9e9d.pth")
    assert VGG19Features("auto").pretrained


def _pyramid_l1(prediction, target, scales=4):
    """The multi-scale L1 written out in numpy: 2x2 block means by reshaping, L1 per level."""
    a, b = prediction.double().numpy(), target.double().numpy()
    levels = []
    for _ in range(scales):
        levels.append(np.abs(a - b).mean())
        n, c, h, w = a.shape
        a = a.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
        b = b.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
    return float(np.mean(levels))


def test_multiscale_l1_by_hand():
    # the error is a one-pixel checkerboard of 0.2 plus a two-pixel checkerboard of 0.08:
    # full resolution |+-0.2 +-0.08| averages 0.2; at 1/2 the first cancels and 0.08 is left;
    # at 1/4 and 1/8 both cancel. So (0.2 + 0.08 + 0 + 0) / 4 = 0.07 (a plain L1 gives 0.2).
    y, x = np.mgrid[:16, :16]
    error = 0.2 * (-1.0) ** (x + y) + 0.08 * (-1.0) ** (x // 2 + y // 2)
    torch.manual_seed(3)
    target = 0.3 + 0.4 * torch.rand(2, 3, 16, 16)
    prediction = target + torch.from_numpy(error).float()
    assert float(multiscale_l1(prediction, target)) == pytest.approx(0.07, abs=1e-6)
    assert float(multiscale_l1(prediction, target, scales=2)) == pytest.approx(0.14, abs=1e-6)
    # and on random images, the numpy pyramid
    other = torch.rand(2, 3, 32, 32)
    noisy = (other + 0.2 * torch.randn(2, 3, 32, 32)).clamp(0, 1)
    assert float(multiscale_l1(noisy, other)) == pytest.approx(_pyramid_l1(noisy, other), rel=1e-5)


def _vgg_by_hand(vgg, image):
    """relu1_1, relu2_1, ..., relu5_1 computed with F.conv2d/relu/max_pool2d from the convs'
    weights, following VGG19's blocks (2, 2, 4, 4, 4 convs, a 2x2 max-pool between blocks)."""
    convs = iter([m for m in vgg.features if isinstance(m, torch.nn.Conv2d)])
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x, firsts = (image - mean) / std, []
    for block, depth in enumerate((2, 2, 4, 4, 4)):
        if block:
            x = torch.nn.functional.max_pool2d(x, 2)
        for layer in range(depth):
            conv = next(convs)
            x = torch.relu(torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))
            if layer == 0:
                firsts.append(x)
            if block == 4:
                break  # relu5_1 is the last one used
    return firsts


def test_perceptual_loss(tmp_path):
    """Weighted VGG19 feature L1 (pix2pixHD's 1/32 .. 1 per layer), plus the multi-scale L1
    with the random-weight fallback only; expected values computed by hand from the weights."""
    torch.manual_seed(0)
    target = torch.rand(2, 3, 32, 32)
    pooled = lambda image: [torch.nn.functional.avg_pool2d(image, 4)]  # noqa: E731
    loss = PerceptualLoss(vgg_weights="random", face_features=pooled)
    same = loss(target.clone(), target)
    assert set(same) == {"perceptual", "face"}
    assert float(same["perceptual"]) == 0.0 and float(same["face"]) == 0.0
    prediction = (target + 0.1 * torch.randn_like(target)).clamp(0, 1).requires_grad_()
    terms = loss(prediction, target)
    layer_weights = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    with torch.no_grad():
        per_layer = [float((p - t).abs().mean()) for p, t in
                     zip(_vgg_by_hand(loss.vgg, prediction), _vgg_by_hand(loss.vgg, target))]
    features = sum(w * d for w, d in zip(layer_weights, per_layer))
    # every layer differs, and no single layer dominates the weighted sum
    assert min(per_layer) > 0 and max(w * d for w, d in zip(layer_weights, per_layer)) < 0.9 * features
    expected = features + _pyramid_l1(prediction.detach(), target)
    assert float(terms["perceptual"].detach()) == pytest.approx(expected, rel=1e-5)
    expected_face = torch.nn.functional.l1_loss(pooled(prediction.detach())[0], pooled(target)[0])
    assert float(terms["face"].detach()) == pytest.approx(float(expected_face), rel=1e-6)
    sum(terms.values()).backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.vgg.parameters())
    # more noise -> larger loss
    worse = loss((target + 0.3 * torch.randn_like(target)).clamp(0, 1), target)
    assert float(worse["perceptual"]) > float(terms["perceptual"].detach())
    # with weights from a file ("pretrained") the multi-scale L1 is not added
    path = tmp_path / "vgg19-test.pth"
    torch.save({f"features.{k}": v for k, v in loss.vgg.features.state_dict().items()}, path)
    loaded = PerceptualLoss(vgg_weights=path)
    assert loaded.vgg.pretrained
    assert float(loaded(prediction.detach(), target)["perceptual"]) == pytest.approx(features, rel=1e-5)


def test_loss_weights_and_combination():
    weights = LossWeights()
    assert (weights.perceptual, weights.face, weights.gaze) == (20.0, 4.0, 5.0)
    assert (weights.adversarial, weights.feature_matching, weights.cycle) == (1.0, 40.0, 2.0)
    terms = {"perceptual": torch.tensor(0.5, requires_grad=True), "cycle": torch.tensor(1.5), "l1": torch.tensor(9.0)}
    total, logged = combine_losses(terms, weights)
    assert float(total.detach()) == pytest.approx(20 * 0.5 + 2 * 1.5)  # l1 has weight 0 in the base model
    assert logged == pytest.approx({"perceptual": 10.0, "cycle": 3.0, "total": 13.0})
    total.backward()
    assert float(terms["perceptual"].grad) == 20.0
    total, _ = combine_losses(terms, LossWeights(l1=100.0))
    assert float(total.detach()) == pytest.approx(913.0)
    with pytest.raises(ValueError, match="unknown loss term 'perceptul'"):
        combine_losses({"perceptul": torch.tensor(1.0)})


def test_the_composite_term_is_the_squared_error_of_the_image_a_user_sees():
    # by hand in numpy: the prediction through its matte over the driver's true background (the
    # driver with its person removed), against the driver; and it needs a matte
    from megaportraits_export.training.objectives import LossComputer

    rng = np.random.default_rng(21)
    prediction, driver = (rng.uniform(0, 1, (2, 3, 12, 12)) for _ in range(2))
    matte = rng.uniform(0, 1, (2, 1, 12, 12))
    mask = (rng.random((2, 1, 12, 12)) < 0.5).astype(np.float64)
    computer = LossComputer({"l1": 0.0, "perceptual": 0.0, "adversarial": 0.0, "feature_matching": 0.0,
                             "matte": 0.0, "composite": 5.0}, torch.device("cpu"))
    t = torch.from_numpy
    batch = {"driver": t(driver), "driver_mask": t(mask)}
    total, logged = computer.generator({"prediction": t(prediction), "matte": t(matte)}, batch, None)
    shown = matte * prediction + (1 - matte) * driver * (1 - mask)
    by_hand = ((shown - driver) ** 2).mean()
    assert float(total) == pytest.approx(5.0 * by_hand, rel=1e-9)
    assert logged["composite"] == pytest.approx(5.0 * by_hand)
    with pytest.raises(ValueError, match="matte"):
        computer.generator({"prediction": t(prediction), "matte": None}, batch, None)
