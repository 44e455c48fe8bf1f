"""LivePortrait's published key layout against our networks, without their code.

The fixture (tests/export/fixtures/liveportrait_keys.json) holds every key and shape of their
five state dicts, recorded once from their modules by ``tools/parity_liveportrait.py
--record-keys``. Every key must be used (loaded as it is, or a spectral-norm triple folded),
and files of another layout must be refused with the key that is wrong.
"""
import json
import math
from pathlib import Path

import pytest
import torch

from megaportraits_export.liveportrait import weights as W
from megaportraits_export.liveportrait.config import WEIGHT_FILES, tiny_config

FIXTURE = Path(__file__).parent / "fixtures" / "liveportrait_keys.json"
# Parameter counts of the published networks (REFERENCE: 0.84M, 28.1M, 45.5M, 55.4M, 0.23M).
PUBLISHED_MILLIONS = {"appearance_feature_extractor": 0.84, "motion_extractor": 28.1, "warping_module": 45.5,
                      "spade_generator": 55.4}
BUFFERS = ("running_mean", "running_var", "num_batches_tracked", "weight_u", "weight_v")


@pytest.fixture(scope="module")
def layout():
    return json.loads(FIXTURE.read_text())["networks"]


@pytest.fixture(scope="module")
def networks():
    torch.manual_seed(0)
    return W.LivePortraitNetworks().eval()


def random_state(keys, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in keys:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g)
    return state


def test_fixture_matches_the_published_parameter_counts(layout):
    for network, millions in PUBLISHED_MILLIONS.items():
        count = sum(math.prod(s) for k, s in layout[network] if not k.endswith(BUFFERS))
        assert abs(count / 1e6 - millions) < 0.05, network
    mlps = sum(math.prod(s) for n in ("stitching", "lip", "eye") for k, s in layout[n])
    assert round(mlps / 1e6, 2) == 0.23


def test_every_published_key_is_used(layout, networks):
    for network, keys in layout.items():
        state = random_state(keys)
        report = W.load_into(networks.network(network), network, state)
        assert sorted(report.loaded + report.folded) == sorted(state), network
        ours = networks.network(network).state_dict()
        for key in report.loaded:  # loaded keys arrive unchanged
            assert torch.equal(ours[key.removeprefix(W.DDP_PREFIX)], state[key]), key
    folded = [k for k, _ in layout["spade_generator"] if k.endswith(W.SPECTRAL_SUFFIXES)]
    assert len(folded) == 54  # 18 spectral-norm convs of the decoder, three keys each
    assert all(k.startswith("module.") for n in ("stitching", "lip", "eye") for k, _ in layout[n])


def test_spectral_norm_fold_equals_torch_spectral_norm():
    torch.manual_seed(3)
    conv = torch.nn.utils.spectral_norm(torch.nn.Conv2d(6, 5, 3, padding=1))
    x = torch.randn(2, 6, 8, 8)
    for _ in range(3):
        conv(x)  # training-mode power iterations move u and v
    conv.eval()
    s = conv.state_dict()
    plain = torch.nn.Conv2d(6, 5, 3, padding=1)
    plain.load_state_dict({"weight": W.fold_spectral_norm(s["weight_orig"], s["weight_u"], s["weight_v"]),
                           "bias": s["bias"]})
    with torch.no_grad():
        torch.testing.assert_close(plain(x), conv(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change", ["extra", "missing", "shape"])
def test_another_layout_is_refused_naming_the_key(layout, networks, change):
    keys = layout["appearance_feature_extractor"]
    state = random_state(keys)
    if change == "extra":
        state["first.conv.extra"] = torch.zeros(1)
        expected = "first.conv.extra"
    elif change == "missing":
        del state["second.weight"]
        expected = "second.weight"
    else:
        state["second.bias"] = torch.zeros(3)
        expected = "second.bias"
    with pytest.raises(W.WeightsError, match=expected.replace(".", r"\.")):
        W.load_into(networks.appearance_feature_extractor, "appearance_feature_extractor", state)


def their_layout(networks: W.LivePortraitNetworks, g: torch.Generator) -> dict:
    """Our tiny networks' weights written as LivePortrait publishes them: SPADE convs as
    spectral-norm triples, MLPs with 'module.'. Spectral norm's weight W_orig / (u . W_orig v)
    is blind to W_orig's scale, so each of our SPADE conv weights is first set to what the
    triple (W_orig = our weight, random u, v) means, by hand."""
    files = {}
    for network in ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator"):
        state = dict(networks.network(network).state_dict())
        if network == "spade_generator":
            for key in [k for k in state if ".conv_" in k and k.endswith(".weight")]:
                w = state.pop(key)
                u = torch.nn.functional.normalize(torch.randn(w.shape[0], generator=g), dim=0)
                v = torch.nn.functional.normalize(torch.randn(w[0].numel(), generator=g), dim=0)
                sigma = torch.dot(u.double(), w.reshape(w.shape[0], -1).double() @ v.double())
                stem = key[:-len("weight")]
                state.update({stem + "weight_orig": w.clone(), stem + "weight_u": u, stem + "weight_v": v})
                with torch.no_grad():
                    w.copy_(w.double() / sigma)  # the network now holds what the loader must produce
        files[WEIGHT_FILES[network]] = state
    files[WEIGHT_FILES["stitching_retargeting_module"]] = {
        entry: {f"module.{k}": v for k, v in networks.network(name).state_dict().items()}
        for name, entry in W.RETARGETING_ENTRIES.items()}
    return files


def test_a_weights_directory_round_trips(tmp_path, one_torch_thread):
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    original = W.LivePortraitNetworks(tiny_config()).eval()
    for m in original.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.2, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    for path, state in their_layout(original, g).items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp_path / path)
    loaded, reports = W.load_networks(tmp_path, tiny_config())
    assert {r.network for r in reports} == set(W.STATE_DICTS)
    x = torch.randn(1, 32, 16, 16, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(loaded.spade_generator(x), original.spade_generator(x), rtol=1e-5, atol=1e-6)
    for name, ref in original.state_dict().items():
        assert torch.allclose(loaded.state_dict()[name].double(), ref.double(), rtol=1e-5, atol=1e-6), name


def test_missing_files_and_entries_are_one_line_errors(tmp_path):
    with pytest.raises(W.WeightsError, match="base_models/appearance_feature_extractor.pth is missing"):
        W.load_networks(tmp_path, tiny_config())
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(W.WeightsError, match="not a directory"):
        W.load_networks(not_a_dir, tiny_config())
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(W.WeightsError, match="not a readable PyTorch weights file"):
        W.read_weight_file(bad)
