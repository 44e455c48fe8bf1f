"""convert liveportrait: a tiny LivePortrait of the published structure through the converter,
checked in ONNX Runtime against the PyTorch networks (custom op and portable twin)."""
import json
import math

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
    assert manifest.family == LIVEPORTRAIT and raw["model"]["motion"] == "implicit_keypoints"
    assert manifest.crop("source") == mf.CropSpec(2.3, 0.0, -0.125) and manifest.crop("driver").scale == 2.2
    assert (manifest.input_size("driver"), manifest.output_size("generator")) == (64, 128)
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


def test_external_weights_are_shared_with_the_twin_and_verified(tiny, tmp_path):
    """--external-weights: each graph's weights in one .data file that its portable twin reads
    too (so the twin does not repeat them), hashed in the manifest, and the graphs still verify."""
    networks, inline, _ = tiny
    out = tmp_path / "external"
    convert.write_bundle(networks, out, convert.provenance(None, []), check=True, progress=lambda line: None,
                         external_weights=True)
    manifest = mf.load_manifest(out)
    mf.verify_files(out, manifest)
    for file in ("generator.onnx", "generator.portable.onnx"):
        proto = onnx.load(out / file, load_external_data=False)
        locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {"generator.onnx.data"}
    assert "generator.onnx.data" in manifest.files

    def size(bundle):
        return sum(p.stat().st_size for p in bundle.iterdir())

    assert size(out) < 0.75 * size(inline)


@pytest.mark.parametrize("form", ["conv_input_taps", "conv_output_taps"])
@pytest.mark.parametrize("kernel, padding", [(7, 3), (3, 1), ((5, 3, 1), (2, 1, 0)), ((3, 5, 3), (0, 2, 1))])
def test_slice_convs_equal_conv3d(form, kernel, padding):
    from megaportraits_export.liveportrait import sliced

    torch.manual_seed(2)
    conv = torch.nn.Conv3d(6, 4, kernel, padding=padding).eval()
    x = torch.randn(2, 6, 9, 10, 7)
    with torch.no_grad():
        got = getattr(sliced, form)(x.transpose(1, 2), conv.weight, conv.bias, conv.padding).transpose(1, 2)
        torch.testing.assert_close(got, conv(x), rtol=1e-5, atol=1e-5)


def _random_batch_norm(channels: int, g: torch.Generator, affine: bool = False) -> torch.nn.BatchNorm3d:
    """A BatchNorm3d in eval mode with random running statistics (and random affine terms)."""
    norm = torch.nn.BatchNorm3d(channels).eval()
    with torch.no_grad():
        norm.running_mean.normal_(0, 0.5, generator=g)
        norm.running_var.uniform_(0.3, 3.0, generator=g)
        if affine:
            norm.weight.normal_(1.0, 0.3, generator=g)
            norm.bias.normal_(0, 0.3, generator=g)
    return norm


def test_slice_conv_folds_batch_norm_and_pads_channels():
    from megaportraits_export.liveportrait.sliced import SliceConv

    g = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv3d(5, 3, 3, padding=1).eval()
    norm = _random_batch_norm(3, g, affine=True)
    with torch.no_grad():
        x = torch.randn(2, 5, 6, 8, 8, generator=g)
        expected = norm(conv(x))
        sliced = SliceConv(conv, norm, pad_inputs=3, pad_outputs=2)
        padded = torch.cat([x, torch.randn(2, 3, 6, 8, 8, generator=g)], dim=1)  # ignored channels
        got = sliced(padded.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(got[:, :3], expected, rtol=1e-5, atol=1e-5)
    assert got.shape[1] == 5 and torch.equal(got[:, 3:], torch.zeros_like(got[:, 3:]))


@pytest.mark.parametrize("form", [{"im2col": True}, {"winograd": True}, {"output_taps": True},
                                  {"upsampled": True}])
def test_slice_conv_forms_equal_conv3d(form):
    """Each layout a 3x3x3 slice conv may take (one MatMul of patches, Winograd F(4x4, 3x3) of
    the stacked taps, taps as outputs, the phase form of a 2x upsampled input) against Conv3d
    with its BatchNorm, on random unit-scale inputs."""
    import torch.nn.functional as F

    from megaportraits_export.liveportrait.sliced import SliceConv

    g = torch.Generator().manual_seed(4)
    conv = torch.nn.Conv3d(6, 5, 3, padding=1).eval()
    norm = _random_batch_norm(5, g)
    with torch.no_grad():
        x = torch.randn(2, 6, 5, 8, 8, generator=g)
        sliced = SliceConv(conv, norm, **form)
        if form.get("upsampled"):
            expected = F.relu(norm(conv(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest"))))
        else:
            expected = norm(conv(x))
        got = sliced(x.transpose(1, 2)).transpose(1, 2)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_sliced_dense_motion_equals_the_network(seed):
    """The slice form the bundle holds against the published computation; the tiny hourglass's
    input (6 x 3 = 18 channels) is padded to 32 as the published 110 is to 112."""
    from megaportraits_export.liveportrait.dense_motion import DenseMotionNetwork
    from megaportraits_export.liveportrait.sliced import SlicedDenseMotion

    c = tiny_config()
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    network = DenseMotionNetwork(c).eval()
    with torch.no_grad():
        for m in network.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.normal_(1.0, 0.2, generator=g)
                m.bias.normal_(0, 0.2, generator=g)
        sliced = SlicedDenseMotion(network, c.feature_size).eval()
        assert sliced.pad > 0 and [conv.upsampled for conv in sliced.hourglass.up] == [False, False, True]
        f = c.feature_size
        volume = torch.randn(2, c.reshape_channel, c.reshape_depth, f, f, generator=g)
        kp_source = torch.rand(2, c.num_kp, 3, generator=g) - 0.5
        kp_driving = kp_source + 0.1 * torch.randn(2, c.num_kp, 3, generator=g)
        expected = network(volume, kp_driving, kp_source)
        got = sliced(volume, kp_driving, kp_source)
    for e, o in zip(expected, got):
        assert e.shape == o.shape
        torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-5)


def test_flushed_heatmaps_hold_no_subnormals_and_differ_below_exp_minus_69():
    """The slice form's heatmaps: values under exp(-69) are zero, so neither they nor the
    driving - source difference the hourglass reads hold a subnormal float32 (the convs reading
    them ran 4x slower), and each heatmap changes by less than exp(-69) = 1.03e-30."""
    from megaportraits_export.liveportrait.dense_motion import (HEATMAP_FLUSH_EXPONENT, coordinate_grid,
                                                                 keypoint_heatmaps)

    g = torch.Generator().manual_seed(5)
    grid = coordinate_grid(16, 64, 64, torch.zeros(()))
    kp_source = torch.rand(1, 21, 3, generator=g) * 1.6 - 0.8
    kp_driving = kp_source + 0.05 * torch.randn(1, 21, 3, generator=g)
    plain = keypoint_heatmaps(kp_driving, grid) - keypoint_heatmaps(kp_source, grid)
    flushed = (keypoint_heatmaps(kp_driving, grid, HEATMAP_FLUSH_EXPONENT)
               - keypoint_heatmaps(kp_source, grid, HEATMAP_FLUSH_EXPONENT))

    def subnormals(t):
        return int(((t != 0) & (t.abs() < torch.finfo(torch.float32).tiny)).sum())

    assert subnormals(plain) > 1000  # the published computation does make them
    assert subnormals(flushed) == 0
    assert float((flushed - plain).abs().max()) < 2 * math.exp(HEATMAP_FLUSH_EXPONENT)
    assert float(flushed.abs().max()) > 0.5


def _dft_heads_case(side, depth, cin=6, cout=3, seed=0):
    """Random 7x7x7 mask and 7x7 occlusion convs of unit-scale outputs, their slice-order
    occlusion weight, and random slices."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.randn(cout, cin, 7, 7, 7, generator=g) / math.sqrt(cin * 343)
    occlusion = torch.randn(1, depth * cin, 7, 7, generator=g) / math.sqrt(depth * cin * 49)
    biases = torch.randn(cout, generator=g), torch.randn(1, generator=g)
    slices = torch.randn(2, depth, cin, side, side, generator=g)
    return mask, occlusion, biases, slices


def _dft_heads_reference(mask, occlusion, biases, slices):
    """Both heads by F.conv3d / F.conv2d in float64."""
    import torch.nn.functional as F

    n, d, c, h, w = slices.shape
    x = slices.double()
    expected_mask = F.conv3d(x.transpose(1, 2), mask.double(), biases[0].double(), padding=3).transpose(1, 2)
    expected_occlusion = F.conv2d(x.reshape(n, d * c, h, w), occlusion.double(), biases[1].double(), padding=3)
    return expected_mask, expected_occlusion


@pytest.mark.parametrize("side, tile, depth", [(16, 8, 5), (32, 16, 6), (16, 16, 3), (32, 8, 2)])
def test_tiled_dft_heads_equal_conv3d_and_conv2d(side, tile, depth):
    """The dense motion's two 7x7 heads by tiled DFTs (overlap-save, half spectrum along H,
    depth taps summed on the spectra) against F.conv3d and F.conv2d in float64, on random
    unit-scale inputs: float32 rounding only, below the direct float32 conv's own error."""
    from megaportraits_export.liveportrait.dft_conv import TiledDFTHeads

    mask, occlusion, biases, slices = _dft_heads_case(side, depth, seed=side + tile + depth)
    heads = TiledDFTHeads(mask, biases[0], occlusion, biases[1], side, tile)
    with torch.no_grad():
        got_mask, got_occlusion = heads(slices)
    expected_mask, expected_occlusion = _dft_heads_reference(mask, occlusion, biases, slices)
    assert got_mask.shape == expected_mask.shape and got_occlusion.shape == expected_occlusion.shape
    assert float(expected_mask.abs().max()) > 1.0  # unit scale: the bound below is relative too
    torch.testing.assert_close(got_mask.double(), expected_mask, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_occlusion.double(), expected_occlusion, rtol=0, atol=1e-5)


def test_tiled_dft_heads_in_onnx_runtime_equal_the_convs(tmp_path):
    """The exported DFT form (constant MatMuls, the kernels' spectra folded at session set-up)
    in ONNX Runtime against F.conv3d / F.conv2d, at a batch other than the traced one."""
    from megaportraits_export.liveportrait.dft_conv import TiledDFTHeads
    from megaportraits_export.onnx_export import export_graph, save_graph

    mask, occlusion, biases, slices = _dft_heads_case(32, 4, seed=9)
    heads = TiledDFTHeads(mask, biases[0], occlusion, biases[1], 32).eval()
    path = tmp_path / "heads.onnx"
    save_graph(export_graph(heads, (slices,), ("slices",), ("mask", "occlusion")), path)
    assert path.stat().st_size < 2 * 4 * (mask.numel() + occlusion.numel()) + 2**20  # weights, not spectra
    session, _ = ort_session(path)
    x = torch.cat([slices, -slices[:1]])
    got = session.run(None, {"slices": x.numpy()})
    for o, e in zip(got, _dft_heads_reference(mask, occlusion, biases, x)):
        np.testing.assert_allclose(o, e.numpy(), rtol=0, atol=1e-5)


def test_tiled_dft_heads_refuse_other_shapes():
    from megaportraits_export.liveportrait.dft_conv import TiledDFTHeads, dft_tile

    mask, occlusion, biases, slices = _dft_heads_case(16, 3)
    assert dft_tile(64, 7) == 16 and dft_tile(24, 7) == 8 and dft_tile(20, 7) is None
    with pytest.raises(ValueError, match="odd cubic kernel"):
        TiledDFTHeads(mask[..., :6], biases[0], occlusion, biases[1], 16)
    with pytest.raises(ValueError, match="no DFT tile"):
        TiledDFTHeads(mask, biases[0], occlusion, biases[1], 20)
    with pytest.raises(ValueError, match="built for 3 slices"):
        TiledDFTHeads(mask, biases[0], occlusion, biases[1], 16)(slices[:, :2])


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("relu", [False, True])
def test_winograd_conv_equals_conv2d(m, relu):
    """F(m x m, 3 x 3) of two convs sharing their input against F.conv2d, on random inputs of
    unit scale; the error stays at float rounding's order (bias and ReLU included)."""
    import torch.nn.functional as F

    from megaportraits_export.liveportrait.winograd import WinogradConv2d

    torch.manual_seed(m + 2 * relu)
    a, b = torch.nn.Conv2d(24, 16, 3, padding=1).eval(), torch.nn.Conv2d(24, 8, 3, padding=1, bias=False).eval()
    x = torch.randn(3, 24, 12, 16)
    with torch.no_grad():
        expected = torch.cat([a(x), b(x)], dim=1)
        if relu:
            expected = F.relu(expected)
        got = WinogradConv2d([a, b], m, relu=relu)(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-5 if m == 4 else 5e-6)


def test_winograd_conv_in_onnx_runtime_equals_conv2d(tmp_path):
    """The exported Winograd form (depthwise transforms, 1x1 products, pixel shuffle) in ONNX
    Runtime against F.conv2d, at a batch other than the traced one."""
    from megaportraits_export.liveportrait.winograd import WinogradConv2d
    from megaportraits_export.onnx_export import export_graph, save_graph

    torch.manual_seed(7)
    conv = torch.nn.Conv2d(32, 48, 3, padding=1).eval()
    path = tmp_path / "winograd.onnx"
    save_graph(export_graph(WinogradConv2d(conv, 4).eval(), (torch.randn(2, 32, 16, 16),), ("x",), ("y",)), path)
    session, _ = ort_session(path)
    x = torch.randn(3, 32, 16, 16)
    with torch.no_grad():
        expected = conv(x).numpy()
    np.testing.assert_allclose(session.run(None, {"x": x.numpy()})[0], expected, rtol=1e-5, atol=2e-5)


def test_deployable_with_winograd_equals_the_networks():
    """``convert.liveportrait.deployable`` with every 3x3 conv of the decoder and the warping
    module's ``third`` (BatchNorm folded) in Winograd form, at tiny size, against the networks."""
    from megaportraits_export.liveportrait.winograd import WinogradConv2d

    c = tiny_config()
    torch.manual_seed(8)
    g = torch.Generator().manual_seed(8)
    networks = LivePortraitNetworks(c).eval()
    with torch.no_grad():
        for m in networks.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
        fast = convert.deployable(networks, winograd_min_channels=8)
        assert isinstance(fast.warping_module.third.conv, WinogradConv2d)
        assert fast.warping_module.dense_motion_network.heads is not None  # the DFT heads
        assert sum(isinstance(m, WinogradConv2d) for m in fast.spade_generator.modules()) >= 13
        f = c.feature_size
        feature = torch.randn(2, c.warp_channels, f, f, generator=g)
        torch.testing.assert_close(fast.spade_generator(feature), networks.spade_generator(feature),
                                   rtol=1e-5, atol=1e-5)
        volume = torch.randn(2, c.reshape_channel, c.reshape_depth, f, f, generator=g)
        kp_source = torch.rand(2, c.num_kp, 3, generator=g) - 0.5
        kp_driving = kp_source + 0.1 * torch.randn(2, c.num_kp, 3, generator=g)
        torch.testing.assert_close(fast.warping_module(volume, kp_source, kp_driving),
                                   networks.warping_module(volume, kp_source, kp_driving), rtol=1e-5, atol=1e-5)


def test_winograd_refuses_other_convs_and_sizes():
    from megaportraits_export.liveportrait.winograd import WinogradConv2d, eligible

    with pytest.raises(ValueError, match="3x3, stride 1, padding 1"):
        WinogradConv2d(torch.nn.Conv2d(4, 4, 3, padding=1, stride=2))
    with pytest.raises(ValueError, match="divisible by 4"):
        WinogradConv2d(torch.nn.Conv2d(4, 4, 3, padding=1), 4)(torch.randn(1, 4, 6, 8))
    assert eligible(torch.nn.Conv2d(256, 512, 3, padding=1))
    assert not eligible(torch.nn.Conv2d(128, 512, 3, padding=1))  # narrow input: the direct conv is as fast
    assert not eligible(torch.nn.Conv2d(256, 256, 1))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_phased_conv_equals_conv_of_the_upsampled_map(scale):
    import torch.nn.functional as F

    from megaportraits_export.liveportrait.phased_spade import PhasedUpsampledConv

    torch.manual_seed(scale)
    conv = torch.nn.Conv2d(5, 7, 3, padding=1).eval()
    x = torch.randn(2, 5, 6, 9)
    with torch.no_grad():
        expected = F.relu(conv(F.interpolate(x, scale_factor=scale, mode="nearest")))
        phased = PhasedUpsampledConv(conv, scale, relu=True)
        got = phased(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    taps = sum(getattr(phased, f"weight{g}")[0].numel() // 5 * len(p) for g, (p, _) in enumerate(phased.groups))
    assert taps == {2: 16, 3: 25, 4: 36}[scale]  # only the small pixels each phase's window reaches


def test_decoder_with_phased_label_convs_equals_the_decoder():
    import copy

    from megaportraits_export.liveportrait.phased_spade import PhasedSPADE, with_phased_label_convs
    from megaportraits_export.liveportrait.spade_decoder import SPADEDecoder

    c = tiny_config()
    torch.manual_seed(4)
    decoder = SPADEDecoder(c).eval()
    phased = with_phased_label_convs(copy.deepcopy(decoder)).eval()
    assert sum(isinstance(m, PhasedSPADE) for m in phased.modules()) == 6
    x = torch.randn(2, c.warp_channels, c.feature_size, c.feature_size)
    with torch.no_grad():
        torch.testing.assert_close(phased(x), decoder(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("phased", [False, True])
def test_fused_spade_decoder_equals_the_decoder(phased):
    """The decoder with its blocks fused (shortcut 1x1 conv composed into beta_s, 1 in gamma's
    bias, one instance norm per block, before the upsampling in up_0 / up_1) against the
    published computation, at tiny size, with and without phased label convs."""
    import copy

    from megaportraits_export.liveportrait.fused_spade import FusedSPADEDecoder
    from megaportraits_export.liveportrait.phased_spade import with_phased_label_convs
    from megaportraits_export.liveportrait.spade_decoder import SPADEDecoder

    c = tiny_config()
    torch.manual_seed(12 + phased)
    decoder = SPADEDecoder(c).eval()
    base = with_phased_label_convs(copy.deepcopy(decoder)) if phased else copy.deepcopy(decoder)
    fused = FusedSPADEDecoder(base).eval()
    assert fused.up_1.shortcut_beta.out_channels == c.spade_out_channels  # composed: conv_s's width
    x = torch.randn(3, c.warp_channels, c.feature_size, c.feature_size)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), decoder(x), rtol=1e-5, atol=1e-6)


def test_composed_shortcut_conv_equals_the_two_convs():
    from megaportraits_export.liveportrait.fused_spade import compose_1x1_after, one_plus

    torch.manual_seed(13)
    inner, outer = torch.nn.Conv2d(6, 10, 3, padding=1), torch.nn.Conv2d(10, 4, 1, bias=False)
    x = torch.randn(2, 6, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(compose_1x1_after(outer, inner)(x), outer(inner(x)), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(one_plus(inner)(x), 1 + inner(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="not a plain 1x1"):
        compose_1x1_after(inner, outer)


def test_the_animator_runs_a_liveportrait_bundle(tiny, tmp_path):
    """The family switch end to end: Animator on the tiny bundle, relative motion, against the
    PyTorch networks with LivePortrait's rule composed in torch."""
    from megaportraits import Animator

    networks, bundle, _ = tiny
    size = networks.config.image_size
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    frames = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(3)]
    with Animator(bundle, provider="cpu", crop=False, paste_back=False) as animator:
        assert animator.family == LIVEPORTRAIT
        performance = animator.performance(animator.prepare(photo))
        rendered = [performance(f) for f in frames]
    out = networks.config.output_size
    assert all(r.shape == (out, out, 3) and r.dtype == np.uint8 for r in rendered)

    def tensor(image):
        return torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]

    modules = role_modules(networks)
    with torch.no_grad():
        s = modules["source"](tensor(photo))
        pitch, yaw, roll, t_s, exp_s, scale_s, kp_c = s[1:]
        r_s = keypoints.rotation(*(keypoints.bins_to_degrees(a) for a in (pitch, yaw, roll)))
        x_s = keypoints.transform(kp_c, r_s, exp_s, scale_s, t_s)
        first = None
        for frame, got in zip(frames, rendered):
            d = modules["driver"](tensor(frame))
            r_d = keypoints.rotation(*(keypoints.bins_to_degrees(a) for a in d[:3]))
            if first is None:
                first = (r_d, d)
            r0, d0 = first
            x_d = keypoints.transform(kp_c, r_d @ r0.transpose(1, 2) @ r_s, exp_s + d[4] - d0[4],
                                      scale_s * d[5] / d0[5], t_s + d[3] - d0[3])
            image = modules["generator"](s[0], x_s, x_d)[0].permute(1, 2, 0).numpy()
            assert np.abs(got.astype(np.float32) / 255.0 - image).max() <= 1.0 / 255.0 + 1e-4


def test_megaportraits_animate_runs_a_liveportrait_bundle(tiny, tmp_path, capsys):
    """``megaportraits animate --bundle LP photo.png driver.mp4 -o out.mp4``, faces found and
    cropped with the manifest's framing, the 2x larger rendering pasted back into the photo."""
    import sys
    from pathlib import Path

    import av
    import cv2

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sdk"))
    from drawn_faces import draw_face
    from media import write_video

    from megaportraits.cli import main as sdk_main

    _, bundle, _ = tiny
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), cv2.cvtColor(draw_face(320, 160, 170, 0.9), cv2.COLOR_RGB2BGR))
    frames = [draw_face(240, 120 + 3 * k, 125, 0.8, noise_seed=k) for k in range(4)]
    driver = write_video(tmp_path / "driver.mp4", frames, fps=10)
    out = tmp_path / "out.mp4"
    code = sdk_main(["animate", str(photo), str(driver), "-o", str(out), "--bundle", str(bundle), "--quiet",
                     "--provider", "cpu"])
    assert code == 0, capsys.readouterr().err
    with av.open(str(out)) as video:
        decoded = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]
    assert len(decoded) == 4 and decoded[0].shape == (320, 320, 3)
    source = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB).astype(np.float32)
    corner = np.abs(decoded[0][:12, :12].astype(np.float32) - source[:12, :12]).mean()
    assert corner < 8  # outside the face the photo is pasted back as it was (codec rounding only)
