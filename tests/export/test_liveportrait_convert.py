"""convert liveportrait: a tiny LivePortrait of the published structure through the converter,
checked in ONNX Runtime against the PyTorch networks (custom op and portable twin)."""
import json

import numpy as np
import onnx
import pytest
import torch

from megaportraits import manifest as mf
from megaportraits import motion_liveportrait as mlp
from megaportraits.schema import GRID_SAMPLE_3D, LIVEPORTRAIT, LIVEPORTRAIT_GRAPH_IO
from megaportraits_export.__main__ import main as export_main
from megaportraits_export.convert import liveportrait as convert
from megaportraits_export.liveportrait import keypoints
from megaportraits_export.liveportrait.config import tiny_config
from megaportraits_export.liveportrait.graphs import role_modules
from megaportraits_export.liveportrait.weights import LivePortraitNetworks
from megaportraits_export.onnx_export import ort_session


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_torch_thread):
    g = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    networks = LivePortraitNetworks(tiny_config()).eval()
    for m in networks.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.2, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    out = tmp_path_factory.mktemp("lp") / "bundle"
    lines = []
    convert.write_bundle(networks, out, convert.provenance(None, []), check=True, progress=lines.append)
    return networks, out, lines


def test_bundle_layout_and_provenance(tiny):
    _, bundle, lines = tiny
    manifest = mf.load_manifest(bundle)
    mf.verify_files(bundle, manifest)
    assert set(manifest.graphs) == {"source", "driver", "generator"}
    for role, spec in manifest.graphs.items():
        io = LIVEPORTRAIT_GRAPH_IO[role]
        assert tuple(t.name for t in spec.inputs) == io.inputs
        assert tuple(t.name for t in spec.outputs) == io.outputs
    raw = json.loads((bundle / "manifest.json").read_text())
    assert raw["provenance"]["licence"] == "MIT"
    assert raw["provenance"]["family"] == LIVEPORTRAIT
    assert raw["provenance"]["crop_geometry"]["source"]["scale"] == 2.3
    assert any("exporting the generator graph" in line for line in lines)  # progress is shown


def test_both_volume_samples_go_through_the_custom_op(tiny):
    _, bundle, _ = tiny
    generator = onnx.load(bundle / "generator.onnx")
    ops = [(n.domain, n.op_type) for n in generator.graph.node]
    assert ops.count((GRID_SAMPLE_3D.domain, GRID_SAMPLE_3D.name)) == 2
    assert ("", "GridSample") not in ops
    twin = onnx.load(bundle / "generator.portable.onnx")
    twin_ops = [(n.domain, n.op_type) for n in twin.graph.node]
    assert twin_ops.count(("", "GridSample")) == 2 and all(d == "" for d, _ in twin_ops)


def test_a_frame_through_the_bundle_matches_pytorch(tiny):
    """SDK motion module + the three graph files vs the PyTorch networks with torch keypoints."""
    networks, bundle, _ = tiny
    size = networks.config.image_size
    g = torch.Generator().manual_seed(3)
    source, driver = torch.rand(1, 3, size, size, generator=g), torch.rand(1, 3, size, size, generator=g)
    modules = role_modules(networks)
    with torch.no_grad():
        s_out, d_out = modules["source"](source), modules["driver"](driver)
        kp_s = keypoints.keypoints_of(s_out[1:])
        kp_d = keypoints.keypoints_of(d_out[:6] + (s_out[7],))  # absolute pose on the source's x_c, all deltas
        reference = modules["generator"](s_out[0], kp_s, kp_d).numpy()
    sessions = {r: ort_session(bundle / f"{r}.onnx")[0] for r in ("source", "driver", "generator")}
    src = sessions["source"].run(None, {"source_image": source.numpy()})
    drv = sessions["driver"].run(None, {"driver_image": driver.numpy()})
    s_motion, d_motion = mlp.decode(src[1:]), mlp.decode(drv)
    x_s = mlp.own_keypoints(s_motion)
    x_d = mlp.keypoints(s_motion.canonical, d_motion.rotation, d_motion.expression, d_motion.scale, d_motion.translation)
    np.testing.assert_allclose(x_s, kp_s.numpy(), atol=1e-5)
    np.testing.assert_allclose(x_d, kp_d.numpy(), atol=1e-5)
    image = sessions["generator"].run(["image"], {"feature_volume": src[0], "source_keypoints": x_s,
                                                  "driving_keypoints": x_d})[0]
    assert image.shape == (1, 3, networks.config.output_size, networks.config.output_size)
    assert np.abs(image - reference).max() <= 1e-4
    assert image.std() > 1e-3  # a real rendering, not a constant


def test_stitching_changes_the_driving_keypoints(tiny):
    networks, _, _ = tiny
    from megaportraits_export.liveportrait.stitching import stitch

    g = torch.Generator().manual_seed(4)
    k = networks.config.num_kp
    kp_s, kp_d = torch.randn(2, k, 3, generator=g), torch.randn(2, k, 3, generator=g)
    with torch.no_grad():
        delta = networks.stitching(torch.cat([kp_s.reshape(2, -1), kp_d.reshape(2, -1)], 1))
        got = stitch(networks.stitching, kp_s, kp_d)
    expected = kp_d + delta[:, :3 * k].reshape(2, k, 3)
    expected[..., :2] += delta[:, None, 3 * k:]
    torch.testing.assert_close(got, expected)


def test_cli_errors_are_one_line(tmp_path, capsys):
    code = export_main(["convert", "liveportrait", "--weights", str(tmp_path / "nowhere"), "-o", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "not a directory" in err[0]
    (tmp_path / "w").mkdir()
    code = export_main(["convert", "liveportrait", "--weights", str(tmp_path / "w"), "-o", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "appearance_feature_extractor.pth is missing" in err[-1] and "Traceback" not in "".join(err)
    assert not (tmp_path / "b").exists()
    assert export_main(["convert", "nosuchfamily"]) == 2


@pytest.mark.parametrize("kernel, padding", [(7, 3), (3, 1), ((5, 3, 1), (2, 1, 0))])
def test_depth_sliced_conv3d_equals_conv3d(kernel, padding):
    from megaportraits_export.liveportrait.blocks import DepthSlicedConv3d

    torch.manual_seed(2)
    conv = torch.nn.Conv3d(6, 4, kernel, padding=padding).eval()
    x = torch.randn(2, 6, 9, 10, 7)
    with torch.no_grad():
        torch.testing.assert_close(DepthSlicedConv3d(conv)(x), conv(x), rtol=1e-5, atol=1e-5)
