"""Evaluation metrics and the evaluate command, checked against values derived by hand and a
direct per-window SSIM written from the paper's formula."""
import math

import numpy as np
import pytest
import torch

from megaportraits_export import metrics


def _reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM from Wang et al. (2004) evaluated window by window, Gaussian-weighted statistics."""
    size, sigma = 11, 1.5
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-r ** 2 / (2 * sigma ** 2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for ch in range(x.shape[0]):
        for i in range(x.shape[1] - size + 1):
            for j in range(x.shape[2] - size + 1):
                a = x[ch, i:i + size, j:j + size]
                b = y[ch, i:i + size, j:j + size]
                ma, mb = (w * a).sum(), (w * b).sum()
                va = (w * (a - ma) ** 2).sum()
                vb = (w * (b - mb) ** 2).sum()
                cov = (w * (a - ma) * (b - mb)).sum()
                values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_l1_and_psnr_of_a_known_offset():
    """A different offset per image, of alternating sign pixel by pixel: per-image values that a
    batch mean (or a missing absolute value) would change."""
    g = torch.Generator().manual_seed(0)
    target = 0.2 + 0.6 * torch.rand(3, 3, 16, 16, generator=g)
    sign = (-1.0) ** torch.arange(16 * 16).reshape(1, 1, 16, 16)
    offsets = torch.tensor([0.1, 0.01, 0.05])
    prediction = target + offsets.view(3, 1, 1, 1) * sign
    # by hand: L1 = |offset|; PSNR = -10 log10(offset^2) = 20, 40 and 26.0206 dB
    expected_psnr = torch.tensor([20.0, 40.0, -20 * math.log10(0.05)], dtype=torch.float64)
    assert torch.allclose(metrics.l1(prediction, target), offsets.double(), atol=1e-7)
    assert torch.allclose(metrics.psnr(prediction, target), expected_psnr, atol=1e-4)


def test_psnr_of_identical_images_is_capped():
    x = torch.rand(1, 3, 12, 12)
    assert metrics.psnr(x, x).item() == pytest.approx(100.0)


def test_ssim_matches_the_per_window_formula():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 14, 15, generator=g)
    y = (x + 0.2 * torch.rand(2, 3, 14, 15, generator=g)).clamp(0, 1)
    ours = metrics.ssim(x, y)
    for n in range(2):
        assert ours[n].item() == pytest.approx(_reference_ssim(x[n].double().numpy(), y[n].double().numpy()), abs=1e-9)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(2, dtype=torch.float64))
    assert (ours < 1).all()


def test_metric_accumulator_averages_per_image():
    """Batches of different sizes with a different error per image: the mean is over images."""
    acc = metrics.MetricAccumulator()
    t = 0.2 + 0.6 * torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    acc.add(t[:2] + torch.tensor([0.1, 0.01]).view(2, 1, 1, 1), t[:2])   # psnr 20 and 40
    acc.add(t[2:] + 0.001, t[2:])                                        # psnr 60
    means = acc.means()
    assert acc.count == 3
    assert means["psnr"] == pytest.approx(40.0, abs=1e-4)       # not (30 + 60) / 2 per batch
    assert means["l1"] == pytest.approx(0.111 / 3, abs=1e-7)


def test_metrics_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        metrics.l1(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


# ---- the evaluation protocol ---------------------------------------------------------------------
import json  # noqa: E402

from megaportraits_export import evaluate, evaluation  # noqa: E402
from megaportraits_export.data import synthetic  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_pose(n, generator):
    from megaportraits_export.warp import pose_matrix

    return pose_matrix(0.8 + 0.4 * torch.rand(n, 3, generator=generator),
                       0.5 * torch.randn(n, 3, generator=generator), 0.1 * torch.randn(n, 3, generator=generator))


def test_relative_motion_is_the_documented_matrix_product():
    g = torch.Generator().manual_seed(2)
    s, d, r = (_random_pose(3, g).double() for _ in range(3))
    zs, zd, zr = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(3))
    pose, z = evaluation.relative_motion((s, zs), (d, zd), (r, zr))

    def h(m):
        return np.vstack([m.numpy(), [0, 0, 0, 1]])

    for n in range(3):
        expected = h(d[n]) @ np.linalg.inv(h(r[n])) @ h(s[n])
        assert np.allclose(pose[n].numpy(), expected[:3], atol=1e-10)
    assert torch.allclose(z, zs + zd - zr)
    # a driver at the source's own motion reproduces the driver's motion exactly
    pose, z = evaluation.relative_motion((s, zs), (d, zd), (s, zs))
    assert torch.allclose(pose, d, atol=1e-10) and torch.allclose(z, zd)


def _forced_motions(monkeypatch, count):
    """Make HeadMotion.random hand out known, very different motions (strong yaw, open or closed
    mouth), so which image shows which motion can be checked by re-rendering."""
    motions = [synthetic.HeadMotion(
        synthetic.Pose(scale=1.0 + 0.05 * (k % 3 - 1), yaw=(-0.6, 0.6)[k % 2] * (1 + 0.1 * k),
                       pitch=0.1 * (k % 3 - 1), roll=0.05 * (k % 2), tx=0.02 * k),
        synthetic.Expression(mouth_open=float(k % 2), smile=0.2 * k - 0.3)) for k in range(count)]
    handed = iter(motions)
    monkeypatch.setattr(synthetic.HeadMotion, "random", classmethod(lambda cls, rng, *a, **kw: next(handed)))
    return motions


def test_heldout_pairs_use_unseen_identities_and_exact_targets(monkeypatch):
    """Every image of every pair re-rendered from the identities and motions it must show."""
    n, size = 3, 64
    motions = _forced_motions(monkeypatch, 2 * n)
    pairs = evaluation.heldout_pairs(n, size, seed=5, identities=4)
    eval_seeds = set(synthetic.identity_seeds("eval", 4))
    assert pairs.source.shape == (n, 3, size, size) and pairs.target_mask.shape == (n, 1, size, size)

    def rendered(identity, motion):
        image = synthetic.render(synthetic.Identity.sample(identity), motion.pose, motion.expression, size)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0

    def mask(identity, motion):
        _, m = synthetic.render(synthetic.Identity.sample(identity), motion.pose, motion.expression, size,
                                with_mask=True)
        return torch.from_numpy(m).float()[None] / 255.0

    for k, (a, b) in enumerate(pairs.identities):
        assert a != b and {a, b} <= eval_seeds and min(a, b) >= synthetic.EVAL_IDENTITY_SEED_OFFSET
        # the pair's two motions, in whichever order they were drawn: m_s is the one the source shows
        drawn = motions[2 * k: 2 * k + 2]
        is_source = [torch.equal(pairs.source[k], rendered(a, m)) for m in drawn]
        assert sorted(is_source) == [False, True], f"pair {k}: the source is not identity A with one of its motions"
        m_s, m_d = drawn if is_source[0] else drawn[::-1]
        assert torch.equal(pairs.target[k], rendered(a, m_d))             # A with the driver's motion
        assert torch.equal(pairs.self_driver[k], rendered(a, m_d))
        assert torch.equal(pairs.cross_driver[k], rendered(b, m_d))       # B with the same motion
        assert torch.equal(pairs.cross_reference[k], rendered(b, m_s))    # B with the source's motion
        assert torch.equal(pairs.target_mask[k], mask(a, m_d))
        np.testing.assert_array_equal(pairs.source_pose[k].numpy(), m_s.pose.model_parameters())
        np.testing.assert_array_equal(pairs.driver_pose[k].numpy(), m_d.pose.model_parameters())
    monkeypatch.undo()
    first, again = (evaluation.heldout_pairs(3, 32, seed=5, identities=4) for _ in range(2))
    assert torch.equal(again.cross_reference, first.cross_reference) and again.identities == first.identities
    assert not torch.equal(evaluation.heldout_pairs(3, 32, seed=6, identities=4).source, first.source)


class _Oracle:
    """Returns the ground truth (perfect model) or the source (the baseline) for plumbing checks."""

    image_size = 64

    def __init__(self, pairs, answer):
        self.pairs, self.answer = pairs, answer

    def reenact(self, source, driver, reference):
        return self.pairs.target.clone() if self.answer == "target" else source.clone()


def test_evaluate_scores_the_model_and_the_baseline_on_the_same_targets():
    pairs = evaluation.heldout_pairs(2, 64, seed=1, identities=3)
    perfect = evaluation.evaluate(_Oracle(pairs, "target"), pairs)
    for task in evaluation.TASKS:
        assert perfect["model"][task]["psnr"] == pytest.approx(100.0)
        assert perfect["model"][task]["ssim"] == pytest.approx(1.0)
        assert perfect["model"][task]["l1"] == 0.0
    copy = evaluation.evaluate(_Oracle(pairs, "source"), pairs)
    assert copy["model"] == copy["source_unchanged"]
    assert copy["source_unchanged"]["self"]["l1"] > 0.0
    table = evaluation.format_table(copy, "header")
    assert "source unchanged" in table and "LPIPS not computed" in table


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from megaportraits_export.checkpoint import save_checkpoint
    from megaportraits_export.onnx_export import random_model

    model, config = random_model("tiny", 0)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model, config, "tiny", {"data": "none: random weights", "steps": 0})
    return path, model


def test_relative_and_absolute_agree_on_self_reenactment(tiny_checkpoint):
    _, model = tiny_checkpoint
    pairs = evaluation.heldout_pairs(2, 64, seed=2, identities=3)
    reenactor = evaluation.CheckpointReenactor(model)
    absolute = reenactor.reenact(pairs.source, pairs.self_driver, None)
    relative = reenactor.reenact(pairs.source, pairs.self_driver, pairs.source)
    assert torch.allclose(absolute, relative, atol=1e-4)
    with torch.no_grad():
        direct = model(pairs.source, pairs.self_driver)["image"].clamp(0, 1)
    assert torch.allclose(absolute, direct, atol=1e-6)


def test_relative_cross_reenactment_is_driver_times_inverse_reference_times_source(tiny_checkpoint):
    """With a reference that is not the source, the order of the product and which image plays
    which part matter: the expected image is generated from poses multiplied in numpy."""
    _, model = tiny_checkpoint
    pairs = evaluation.heldout_pairs(2, 64, seed=2, identities=3)
    got = evaluation.CheckpointReenactor(model).reenact(pairs.source, pairs.cross_driver, pairs.cross_reference)

    def h(pose):
        return np.concatenate([pose.double().numpy(), np.tile([[[0, 0, 0, 1.0]]], (pose.shape[0], 1, 1))], axis=1)

    with torch.no_grad():
        avatar = model.source_branch(pairs.source)
        pose_d, z_d = model.driver_branch(pairs.cross_driver)
        pose_r, z_r = model.driver_branch(pairs.cross_reference)
        pose = torch.from_numpy((h(pose_d) @ np.linalg.inv(h(pose_r)) @ h(avatar.pose))[:, :3]).float()
        expression = avatar.expression + (z_d - z_r)
        expected = model.generator(avatar.canonical_volume, avatar.global_descriptor, pose, expression)
    expected = expected[:, :3].clamp(0, 1)
    assert torch.allclose(got, expected, atol=1e-5)
    # the reference matters: with another one the image is not the same
    other = evaluation.CheckpointReenactor(model).reenact(pairs.source, pairs.cross_driver, pairs.cross_driver)
    assert (other - got).abs().max() > 1e-3


def test_cli_prints_json_and_writes_provenance(tiny_checkpoint, tmp_path, capsys):
    import shutil

    from megaportraits_export.checkpoint import load_model_from_checkpoint

    path = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoint[0], path)
    assert evaluate.main(["--checkpoint", str(path), "--pairs", "2", "--identities", "3",
                          "--json", "--write-provenance"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert set(results["model"]) == {"self", "cross"}
    assert results["protocol"]["motion"] == "relative" and results["protocol"]["pairs"] == 2
    _, _, provenance = load_model_from_checkpoint(path)
    assert provenance["metrics"]["evaluation"]["model"] == results["model"]
    assert provenance["data"] == "none: random weights"


def test_bundle_through_the_sdk_matches_the_checkpoint(bundle_factory):
    """The same random weights as a bundle (SDK, ONNX Runtime, uint8 frames) and in PyTorch."""
    from megaportraits_export.onnx_export import random_model

    model, _ = random_model("tiny", 0)
    pairs = evaluation.heldout_pairs(2, 64, seed=4, identities=3)
    through_sdk = evaluation.BundleReenactor(str(bundle_factory("tiny", portable=True)))
    in_torch = evaluation.CheckpointReenactor(model)
    for reference in (None, pairs.cross_reference):
        expected = in_torch.reenact(pairs.source, pairs.cross_driver, reference)
        got = through_sdk.reenact(pairs.source, pairs.cross_driver, reference)
        assert (got - expected).abs().max() < 3 / 255


def test_pose_errors_compare_the_regressor_with_the_ground_truth(tiny_checkpoint, monkeypatch):
    """A regressor forced to answer each frame's own ground truth plus known offsets: the errors
    are those offsets exactly, so pairing a frame with another frame's truth cannot pass."""
    _, model = tiny_checkpoint
    pairs = evaluation.heldout_pairs(3, 64, seed=3, identities=3)
    truth_of = {}
    for images, poses in ((pairs.source, pairs.source_pose), (pairs.self_driver, pairs.driver_pose),
                          (pairs.cross_driver, pairs.driver_pose)):
        for image, pose in zip(images, poses):
            truth_of[image.numpy().tobytes()] = pose.double()
    assert len(truth_of) == 9, "every held-out frame is a different image"
    offsets = torch.tensor([0.01, 0.02, -0.03], dtype=torch.float64)  # yaw, pitch, roll (radians)

    def forced(images):
        truth = torch.stack([truth_of[image.numpy().tobytes()] for image in images])
        scale = (truth[:, :1] * 1.02).expand(-1, 3)
        return scale.float(), (truth[:, 1:4] + offsets).float(), (truth[:, 4:7] - 0.004).float()

    monkeypatch.setattr(model.driver_branch.head_pose, "pose_parameters", forced)
    errors = evaluation.CheckpointReenactor(model).pose_errors(pairs)
    # by hand: 0.01 rad = 0.573 deg, 0.02 rad = 1.146 deg, 0.03 rad = 1.719 deg
    assert errors["yaw_deg"] == pytest.approx(0.5730, abs=1e-3)
    assert errors["pitch_deg"] == pytest.approx(1.1459, abs=1e-3)
    assert errors["roll_deg"] == pytest.approx(1.7189, abs=1e-3)
    assert errors["translation"] == pytest.approx(0.004, abs=1e-6)
    assert errors["scale_relative"] == pytest.approx(0.02, abs=1e-6)


def test_a_bundle_with_an_enhancer_is_scored_at_its_base_size(bundle_factory, tmp_path, one_torch_thread):
    """The base model's figures: with an enhancer added, the frames are the base bundle's own
    (the enhancer is off here; its twice-larger frames would not even match the targets' shape)."""
    from megaportraits_export.onnx_export.enhancer import add_enhancer
    from test_enhancer_export import random_enhancer

    base = bundle_factory("tiny", portable=True)
    enhanced = add_enhancer(base, random_enhancer("tiny", base_size=64), tmp_path / "enhanced",
                            provenance={"weights": "random-init"})
    pairs = evaluation.heldout_pairs(2, 64, seed=5, identities=3)
    plain = evaluation.BundleReenactor(str(base)).reenact(pairs.source, pairs.cross_driver, pairs.cross_reference)
    got = evaluation.BundleReenactor(str(enhanced)).reenact(pairs.source, pairs.cross_driver, pairs.cross_reference)
    assert got.shape == pairs.target.shape
    assert torch.equal(got, plain)
    # and expression-eval's reenactor, both of its renderings
    from megaportraits_export import expression_eval

    codes = [expression_eval.BundleExpressionReenactor(str(b)).reenact_codes(
        pairs.source, pairs.cross_driver, pairs.cross_reference) for b in (base, enhanced)]
    assert codes[0].keys() == codes[1].keys()
    for name in codes[0]:
        assert codes[1][name].shape == pairs.target.shape and torch.equal(codes[1][name], codes[0][name])
