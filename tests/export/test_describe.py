"""``describe``: its parameter counts and shapes against real modules and a real forward pass."""
import json
import subprocess
import sys

import pytest
import torch

from megaportraits_export import warp
from megaportraits_export.describe import describe, main
from megaportraits_export.model import build_model
from megaportraits_export.networks.blocks import count_parameters


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _shapes(report):
    return {entry["tensor"]: tuple(entry["shape"]) for entry in report["data_flow"]}


def test_tiny_shapes_equal_those_of_a_real_forward_pass():
    report = describe("tiny", batch=2)
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    size = model.config.image_size
    source, driver = torch.rand(2, 3, size, size), torch.rand(2, 3, size, size)
    branch = model.source_branch
    with torch.no_grad():
        out = model(source, driver)
        avatar, motion = out["avatar"], out["motion"]
        volume = branch.appearance_encoder(source)
        source_grid = warp.source_grid(avatar.pose, out["source_deformation"])
        driver_grid = warp.driver_grid(motion.pose, out["driver_deformation"])
        driver_volume = warp.sample_volume(avatar.canonical_volume, driver_grid)
        crop = model.driver_branch.expression_encoder.aligned_crop(driver, motion.pose)
        embedding = model.generator.driver_warp.embedding(motion.expression, avatar.global_descriptor)
        projected = model.generator.image_generator.projection(driver_volume)
    actual = {
        "source_image": source.shape, "driver_image": driver.shape,
        "v_s": volume.shape, "e_s": avatar.global_descriptor.shape, "theta_s": avatar.pose.shape,
        "crop_s": crop.shape, "z_s": avatar.expression.shape, "emb_s": embedding.shape,
        "D_s": out["source_deformation"].shape, "g_s": source_grid.shape,
        "v_s->c": warp.sample_volume(volume, source_grid).shape, "c_s": avatar.canonical_volume.shape,
        "theta_d": motion.pose.shape, "crop_d": crop.shape, "z_d": motion.expression.shape, "emb_d": embedding.shape,
        "D_d": out["driver_deformation"].shape, "g_d": driver_grid.shape, "v_d": driver_volume.shape,
        "P(v_d)": projected.shape, "image": out["image"].shape,
    }
    assert _shapes(report) == {name: tuple(shape) for name, shape in actual.items()}


def test_parameter_counts_are_those_of_the_real_modules():
    report = describe("tiny")
    model = build_model("tiny")
    by_module = {row["module"]: row["parameters"] for row in report["parameters"]}
    assert by_module["source_branch.canonical_generator"] == count_parameters(model.source_branch.canonical_generator)
    assert by_module["driver_branch.head_pose"] == count_parameters(model.driver_branch.head_pose)
    assert by_module["generator.image_generator"] == count_parameters(model.generator.image_generator)
    graphs = report["graphs"]
    assert graphs["model"] == count_parameters(model)
    assert graphs["source"] + graphs["generator"] == graphs["model"]
    assert graphs["bundle_fp32_bytes"] == 4 * (graphs["model"] + count_parameters(model.driver_branch))
    assert all(row["macs_per_sample"] > 0 for row in report["parameters"])


def test_paper512_on_the_meta_device_has_the_papers_shapes():
    report = describe("paper512")
    shapes = _shapes(report)
    assert shapes["v_s"] == shapes["c_s"] == shapes["v_d"] == (1, 96, 16, 64, 64)
    assert shapes["e_s"] == (1, 512, 4, 4)
    assert shapes["z_s"] == shapes["z_d"] == (1, 512)
    assert shapes["D_s"] == shapes["D_d"] == shapes["g_s"] == shapes["g_d"] == (1, 16, 64, 64, 3)
    assert shapes["crop_d"] == (1, 3, 128, 128)
    assert shapes["P(v_d)"] == (1, 512, 64, 64)
    assert shapes["image"] == (1, 3, 512, 512)
    references = {row["module"]: row for row in report["parameters"] if "reference_millions" in row}
    g3d = references["source_branch.canonical_generator"]
    assert g3d["parameters"] / 1e6 == pytest.approx(g3d["reference_millions"], rel=0.02)


def test_cli_prints_json_and_a_table(capsys):
    assert main(["--preset", "tiny", "--json", "--batch", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["preset"] == "tiny" and _shapes(report)["image"] == (3, 3, 64, 64)
    assert main(["--preset", "tiny"]) == 0
    table = capsys.readouterr().out
    assert "canonical volume" in table and "1x8x4x16x16" in table


def test_cli_rejects_an_unknown_preset_with_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "huge"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_the_package_dispatcher_runs_describe():
    result = subprocess.run([sys.executable, "-m", "megaportraits_export", "describe", "--preset", "demo128", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert _shapes(json.loads(result.stdout))["image"] == (1, 4, 128, 128)  # RGBA: demo128 predicts a matte
