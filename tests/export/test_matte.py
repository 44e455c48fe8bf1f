"""Models with a matte: trained on the foreground only, exported with a `matte` output, scored on
what the SDK shows (the rendering composited over the source's backdrop)."""
import numpy as np
import pytest
import torch

from megaportraits_export import evaluation
from megaportraits_export.checkpoint import initialise_from_checkpoint, save_checkpoint
from megaportraits_export.config import get_config
from megaportraits_export.model import build_model, split_matte
from megaportraits_export.training.objectives import LossComputer, composite, foreground_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n, size, seed):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _model(preset, seed):
    torch.manual_seed(seed)
    return build_model(preset).eval()


def test_a_matte_model_renders_rgba_and_its_forward_splits_image_and_matte():
    model = _model("tiny_matte", 0)
    source, driver = _images(2, 64, 1), _images(2, 64, 2)
    with torch.no_grad():
        out = model(source, driver)
        rendering = model.reenact(out["avatar"], out["motion"])
    assert rendering.shape == (2, 4, 64, 64)
    assert out["image"].shape == (2, 3, 64, 64) and out["matte"].shape == (2, 1, 64, 64)
    assert torch.equal(out["image"], rendering[:, :3]) and torch.equal(out["matte"], rendering[:, 3:])
    assert 0.0 <= float(out["matte"].min()) and float(out["matte"].max()) <= 1.0
    plain = _model("tiny", 0)
    with torch.no_grad():
        assert plain(source, driver)["matte"] is None
    image = torch.rand(1, 3, 8, 8)
    assert split_matte(image)[0] is image and split_matte(image)[1] is None


def test_initialising_a_matte_model_from_a_plain_checkpoint_keeps_every_old_weight(tmp_path):
    plain = _model("tiny", 3)
    path = tmp_path / "plain.pt"
    save_checkpoint(path, plain, get_config("tiny"), "tiny", {"steps": 0})
    matte_model = _model("tiny_matte", 4)
    fresh_matte_row = matte_model.generator.image_generator.to_rgb[2].weight[3].detach().clone()
    report = initialise_from_checkpoint(matte_model, path)
    assert report["grown"] == ["generator.image_generator.to_rgb.2.weight", "generator.image_generator.to_rgb.2.bias"]
    assert report["kept"] == []
    # the colours are the old model's exactly; the new matte channel keeps its fresh initialisation
    source, driver = _images(2, 64, 5), _images(2, 64, 6)
    with torch.no_grad():
        expected = plain(source, driver)["image"]
        got = matte_model(source, driver)
    assert torch.allclose(got["image"], expected, atol=1e-6)   # a 4-channel conv may round differently
    assert torch.equal(matte_model.generator.image_generator.to_rgb[2].weight[3], fresh_matte_row)


def test_initialising_from_an_unrelated_file_says_so(tmp_path):
    from megaportraits_export.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="does not exist"):
        initialise_from_checkpoint(_model("tiny_matte", 0), tmp_path / "missing.pt")


def _loss_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    prediction, target = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    matte = torch.rand(2, 1, 32, 32, generator=g)
    mask = (torch.rand(2, 1, 32, 32, generator=g) > 0.5).float()
    return {"prediction": prediction, "matte": matte}, {"driver": target, "driver_mask": mask}


def test_a_matte_model_is_trained_on_the_foreground_only():
    weights = {"perceptual": 0.0, "adversarial": 0.0, "feature_matching": 0.0, "cycle": 0.0, "l1": 1.0,
               "matte": 1.0}
    losses = LossComputer(weights, torch.device("cpu"), l1_scales=1)
    outputs, batch = _loss_inputs(0)
    mask = batch["driver_mask"]
    _, terms = losses.generator(outputs, batch, critic=None)
    # by hand: the mean absolute difference of the masked images, and of matte and mask
    assert terms["l1"] == pytest.approx(float((outputs["prediction"] * mask - batch["driver"] * mask).abs().mean()))
    assert terms["matte"] == pytest.approx(float((outputs["matte"] - mask).abs().mean()))
    # the backdrop of the target does not matter; its person does
    changed = dict(batch, driver=batch["driver"] * mask + torch.rand(2, 3, 32, 32) * (1 - mask))
    assert losses.generator(outputs, changed, critic=None)[1]["l1"] == pytest.approx(terms["l1"])
    changed = dict(batch, driver=batch["driver"] * (1 - mask) + torch.rand(2, 3, 32, 32) * mask)
    assert losses.generator(outputs, changed, critic=None)[1]["l1"] != pytest.approx(terms["l1"])


def test_a_matte_model_without_masks_in_its_data_is_refused():
    outputs, batch = _loss_inputs(1)
    del batch["driver_mask"]
    losses = LossComputer({"perceptual": 0.0, "adversarial": 0.0, "feature_matching": 0.0, "l1": 1.0},
                          torch.device("cpu"))
    with pytest.raises(ValueError, match="foreground masks"):
        losses.generator(outputs, batch, critic=None)
    with pytest.raises(ValueError, match="driver_mask"):
        foreground_mask(batch)


def test_composite_is_the_matte_blend_and_leaves_plain_models_alone():
    g = torch.Generator().manual_seed(2)
    image, background, matte = (torch.rand(1, c, 4, 4, generator=g) for c in (3, 3, 1))
    expected = image * matte + background * (1 - matte)
    assert torch.allclose(composite(image, matte, background), expected)
    assert composite(image, None, background) is image


def test_the_checkpoint_evaluation_shows_the_composite_the_sdk_would(tmp_path):
    from megaportraits.compositing import background_plate
    from megaportraits.compositing import composite as sdk_composite

    model = _model("tiny_matte", 7)
    pairs = evaluation.heldout_pairs(2, 64, seed=3, identities=3)
    shown = evaluation.CheckpointReenactor(model).reenact(pairs.source, pairs.self_driver, None)
    raw = evaluation.CheckpointReenactor(model, background="generated").reenact(pairs.source, pairs.self_driver, None)
    with torch.no_grad():
        avatar = model.source_branch(pairs.source)
        image, matte = split_matte(model.generator(*avatar[:2], *model.driver_branch(pairs.self_driver)))
        own_matte = split_matte(model.generator(*avatar))[1]
    assert torch.allclose(raw, image.clamp(0, 1), atol=1e-6)
    for n in range(2):
        plate = background_plate(pairs.source[n].numpy(), own_matte[n].numpy())
        expected = sdk_composite(image[n].numpy(), matte[n].numpy(), plate)
        np.testing.assert_allclose(shown[n].numpy(), np.clip(expected, 0, 1), atol=1e-6)


def test_evaluation_reports_raw_and_masked_metrics():
    pairs = evaluation.heldout_pairs(2, 64, seed=1, identities=3)
    assert pairs.target_mask.shape == (2, 1, 64, 64)
    assert 0.05 < float(pairs.target_mask.mean()) < 0.95     # a person and a backdrop

    class Backdrop:
        """Right on the person, wrong everywhere else: perfect masked scores only."""

        def reenact(self, source, driver, reference):
            return torch.where(pairs.target_mask > 0, pairs.target, 1 - pairs.target)

    results = evaluation.evaluate(Backdrop(), pairs)
    for task in evaluation.TASKS:
        assert results["masked"]["model"][task]["l1"] == 0.0
        assert results["model"][task]["l1"] > 0.05
        assert results["masked"]["source_unchanged"][task]["l1"] > 0.0
    table = evaluation.format_table(results, "header")
    assert "model (masked)" in table and "source unchanged (raw)" in table


def test_matte_bundle_outputs_the_matte_and_matches_pytorch(graphs_factory, tmp_path):
    from megaportraits_export.onnx_export import random_model, verify_bundle, write_bundle

    bundle = write_bundle(graphs_factory("tiny_matte", 0), tmp_path / "matte", portable=True)
    import json

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [o["name"] for o in manifest["graphs"]["generator"]["outputs"]] == ["image", "matte"]
    model, _ = random_model("tiny_matte", 0)
    report = verify_bundle(bundle, model, batch_sizes=(2,))
    names = {r.output for r in report}
    assert "matte" in names and all(r.ok for r in report), [r.describe() for r in report if not r.ok]


def test_a_video_config_for_a_matte_preset_is_refused(tmp_path):
    from megaportraits_export.training.config import config_from_dict
    from megaportraits_export.training.distributed import DistributedContext
    from megaportraits_export.training.trainer import Trainer

    cfg = config_from_dict({"model": {"preset": "tiny_matte"}, "data": {"kind": "video", "root": str(tmp_path)},
                            "log": {"out_dir": str(tmp_path / "run")}})
    with pytest.raises(ValueError, match="foreground masks"):
        Trainer(cfg, DistributedContext())


def test_a_training_config_can_switch_the_presets_matte(tmp_path):
    from megaportraits_export.training.config import ConfigError, config_from_dict
    from megaportraits_export.training.distributed import DistributedContext
    from megaportraits_export.training.trainer import Trainer

    def trainer(**model):
        cfg = config_from_dict({"model": {"preset": "tiny_matte", **model}, "log": {"out_dir": str(tmp_path)},
                                "data": {"train_identities": 4}})
        return Trainer(cfg, DistributedContext())

    assert trainer().model_config.matte is True
    plain = trainer(matte=False)
    assert plain.model_config.matte is False
    assert plain.model.generator.image_generator.to_rgb[2].out_channels == 3
    with pytest.raises(ConfigError, match="true or false"):
        config_from_dict({"model": {"preset": "tiny", "matte": "yes"}})


def test_a_matte_model_whose_matte_weight_is_zero_is_refused(tmp_path):
    from megaportraits_export.training.config import config_from_dict
    from megaportraits_export.training.distributed import DistributedContext
    from megaportraits_export.training.trainer import Trainer

    cfg = config_from_dict({"model": {"preset": "tiny_matte"}, "log": {"out_dir": str(tmp_path)},
                            "data": {"train_identities": 4}, "losses": {"weights": {"matte": 0.0}}})
    with pytest.raises(ValueError, match="never learn"):
        Trainer(cfg, DistributedContext())


def test_an_unknown_background_is_refused_in_one_line():
    with pytest.raises(ValueError, match="background must be one of source, generated"):
        evaluation.CheckpointReenactor(_model("tiny_matte", 0), background="transparent")
