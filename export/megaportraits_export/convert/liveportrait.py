"""``python -m megaportraits_export convert liveportrait --weights DIR -o BUNDLE [--verify]``.

Turns LivePortrait's published weights (KwaiVGI/LivePortrait, MIT) into a bundle our SDK runs on
stock ONNX Runtime: the networks are built from :mod:`megaportraits_export.liveportrait`, filled
from their ``.pth`` files by key, and exported as three graphs (see
:mod:`megaportraits_export.liveportrait.graphs`), with both 5-D grid samples of the warping
module on our ``GridSample3D`` op and a portable twin of that graph in standard ONNX.

The bundle is written in a staging directory and renamed into place (an interrupted run leaves
nothing); ``--verify`` compares every graph file with the PyTorch networks in ONNX Runtime on
random inputs at batch 1 and 3 and refuses to write a bundle that differs.
"""
from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

import torch

from megaportraits import manifest as mf
from megaportraits.schema import GRID_SAMPLE_3D, LIVEPORTRAIT, LIVEPORTRAIT_GRAPH_IO
from megaportraits_export import command
from megaportraits_export.liveportrait import keypoints
from megaportraits_export.liveportrait.config import LivePortraitConfig
from megaportraits_export.liveportrait.dft_conv import with_dft_heads
from megaportraits_export.liveportrait.fused_spade import with_fused_spade_blocks
from megaportraits_export.liveportrait.graphs import role_modules
from megaportraits_export.liveportrait.phased_spade import with_phased_label_convs
from megaportraits_export.liveportrait.sliced import with_sliced_dense_motion
from megaportraits_export.liveportrait.weights import LivePortraitNetworks, WeightsError, load_networks
from megaportraits_export.liveportrait.winograd import (WINOGRAD_MIN_CHANNELS, with_winograd_convs,
                                                        with_winograd_same_block)
from megaportraits_export.onnx_export import (OPSET, ExportError, compare_outputs, export_graph, format_report,
                                              ort_session, producer_versions, save_graph, save_standard_twin)
from megaportraits_export.onnx_export import check_graph as onnx_check_graph
from megaportraits_export.onnx_export.writing import check_output_dir, staged_bundle

LICENCE = "MIT"
SOURCE_REPOSITORY = "https://github.com/KwaiVGI/LivePortrait"
PRESET = "liveportrait-human"
EXAMPLE_BATCH = 2  # torch.export specialises a batch of 1
VERIFY_BATCH_SIZES = (1, 3)
# LivePortrait's crops (their src/config/crop_config.py): crop side = scale x the face's size,
# centre shifted by vy x that size (negative: up), cut at 512 and resized to the input size.
CROP_GEOMETRY = {
    "source": {"scale": 2.3, "vx_ratio": 0.0, "vy_ratio": -0.125, "crop_size": 512},
    "driver": {"scale": 2.2, "vx_ratio": 0.0, "vy_ratio": -0.1, "crop_size": 512},
}


def role_specs(config: LivePortraitConfig) -> dict:
    """Per role, the sizes and crops the manifest records (the SDK crops and pastes by them)."""
    def crop(role):
        c = CROP_GEOMETRY[role]
        return mf.CropSpec(c["scale"], c["vx_ratio"], c["vy_ratio"])

    return {"source": mf.RoleSpec(input_size=config.image_size, crop=crop("source")),
            "driver": mf.RoleSpec(input_size=config.image_size, crop=crop("driver")),
            "generator": mf.RoleSpec(output_size=config.output_size)}


def example_inputs(networks: LivePortraitNetworks, batch: int, seed: int) -> dict:
    """role -> (inputs, PyTorch outputs) on random images, the generator fed with the keypoints
    the networks themselves read from them (so every graph sees realistic values)."""
    size = networks.config.image_size
    g = torch.Generator().manual_seed(seed)
    source_image = torch.rand(batch, 3, size, size, generator=g)
    driver_image = torch.rand(batch, 3, size, size, generator=g)
    modules = role_modules(networks)
    with torch.no_grad():
        source = modules["source"](source_image)
        driver = modules["driver"](driver_image)
        kp_source = keypoints.keypoints_of(source[1:])
        # the driver's pose and expression on the source's canonical keypoints, as relative motion does
        kp_driving = keypoints.keypoints_of(driver[:6] + (source[7],))
        generator_inputs = (source[0], kp_source, kp_driving)
        image = modules["generator"](*generator_inputs)
    return {"source": ((source_image,), source), "driver": ((driver_image,), driver),
            "generator": (generator_inputs, (image,))}


def deployable(networks: LivePortraitNetworks, winograd_min_channels: int = WINOGRAD_MIN_CHANNELS) -> LivePortraitNetworks:
    """A copy in the form ONNX Runtime runs fastest, the same function: the dense motion's 3-D
    convs as 2-D convs of depth slices (:mod:`megaportraits_export.liveportrait.sliced`), its
    7x7 mask and occlusion heads by tiled DFTs (:mod:`~megaportraits_export.liveportrait.dft_conv`), the
    decoder's label convs at the label's resolution (:mod:`~megaportraits_export.liveportrait.phased_spade`),
    its residual blocks with the shortcut's 1x1 conv composed into its beta conv and one instance
    norm per block (:mod:`~megaportraits_export.liveportrait.fused_spade`),
    the wide 3x3 convs of the decoder and the warping module's ``third`` in Winograd form
    (:mod:`~megaportraits_export.liveportrait.winograd`; ``winograd_min_channels``: in and out)."""
    fast = with_dft_heads(with_sliced_dense_motion(copy.deepcopy(networks)))
    with_phased_label_convs(fast.spade_generator)
    with_fused_spade_blocks(fast)
    with_winograd_convs(fast.spade_generator, winograd_min_channels)
    with_winograd_same_block(fast.warping_module.third, winograd_min_channels)
    return fast.eval()


def export_programs(networks: LivePortraitNetworks, progress=print) -> dict:
    inputs = example_inputs(networks, EXAMPLE_BATCH, seed=0)
    programs = {}
    for role, module in role_modules(deployable(networks)).items():
        started = time.perf_counter()
        progress(f"exporting the {role} graph ...")
        io = LIVEPORTRAIT_GRAPH_IO[role]
        programs[role] = export_graph(module, inputs[role][0], io.inputs, io.outputs)
        progress(f"exported the {role} graph in {time.perf_counter() - started:.0f} s")
    return programs


def check_graph(role: str, path: Path, portable: bool) -> tuple:
    """The saved graph has the family's names, a dynamic batch axis and no slow ops."""
    io = LIVEPORTRAIT_GRAPH_IO[role]
    return onnx_check_graph(role, path, portable, names=(io.inputs, io.outputs))


def write_role(role: str, program, staging: Path, portable: bool, external_weights: bool = False) -> mf.GraphSpec:
    """One role's graph file and, where it holds our op, its portable twin; ``external_weights``:
    the weights in one ``<file>.data`` beside the graph, which the twin shares (the generator's
    are 400 MB, so a default bundle shrinks by about that)."""
    path = staging / f"{role}.onnx"
    save_graph(program, path, external_data=True if external_weights else None)
    inputs, outputs, uses_custom_op = check_graph(role, path, portable=False)
    twin = path
    if uses_custom_op:
        twin = path if portable else staging / f"{role}.portable.onnx"
        save_standard_twin(path, twin)
        check_graph(role, twin, portable=True)
    return mf.GraphSpec(file=path.name, inputs=tuple(inputs), outputs=tuple(outputs),
                        portable_file=None if portable else twin.name)


def verify(bundle: Path, networks: LivePortraitNetworks, progress=print) -> list:
    """Every graph file of the bundle in ONNX Runtime against the PyTorch networks."""
    manifest = mf.load_manifest(bundle)
    mf.verify_files(bundle, manifest)
    report = []
    cases = {batch: example_inputs(networks, batch, seed=1000 + batch) for batch in VERIFY_BATCH_SIZES}
    for role, spec in manifest.graphs.items():
        io = LIVEPORTRAIT_GRAPH_IO[role]
        for file in dict.fromkeys(filter(None, (spec.file, spec.portable_file))):
            progress(f"verifying {file} ...")
            session, how = ort_session(bundle / file)
            for batch, run in cases.items():
                inputs, expected = run[role]
                got = session.run(list(io.outputs), {n: t.numpy() for n, t in zip(io.inputs, inputs)})
                report += [compare_outputs(file, name, batch, ref.numpy(), out, how)
                           for name, ref, out in zip(io.outputs, expected, got)]
    return report


def provenance(weights_dir: Path | None, reports: list, extra: dict | None = None) -> dict:
    info = {
        "family": LIVEPORTRAIT,
        "converted_from": SOURCE_REPOSITORY,
        "licence": LICENCE,
        "licence_note": "LivePortrait's code and weights are MIT (its face detectors, not in this "
                        "bundle, are not)",
        "weights": str(weights_dir) if weights_dir else "random-init",
        "keys": {r.network: {"loaded": len(r.loaded), "spectral_norm_folded": len(r.folded)} for r in reports},
        "crop_geometry": CROP_GEOMETRY,
    }
    info.update(extra or {})
    return info


def write_bundle(networks: LivePortraitNetworks, output: str | os.PathLike, provenance_info: dict,
                 portable: bool = False, check: bool = False, progress=print, external_weights: bool = False) -> Path:
    output = Path(output)
    check_output_dir(output)
    programs = export_programs(networks, progress)
    with staged_bundle(output) as staging:
        graphs = {}
        for role, program in programs.items():
            progress(f"writing the {role} graph ...")
            graphs[role] = write_role(role, program, staging, portable, external_weights)
        manifest = mf.Manifest(
            model_name=LIVEPORTRAIT, preset=PRESET, image_size=networks.config.image_size, graphs=graphs,
            files={p.name: "" for p in staging.iterdir() if p.is_file()}, opset=OPSET,
            custom_op=None if portable else {"domain": GRID_SAMPLE_3D.domain, "version": GRID_SAMPLE_3D.version},
            precision="fp32", producer=producer_versions(), provenance=provenance_info,
            family=LIVEPORTRAIT, roles=role_specs(networks.config))
        mf.write_manifest(staging, manifest)
        if check:
            report = verify(staging, networks, progress)
            print(format_report(report))
            failed = [r for r in report if not r.ok]
            if failed:
                raise ExportError(f"{len(failed)} output(s) differ from PyTorch beyond tolerance "
                                  f"(first: {failed[0].describe()}); the bundle was not written")
    return output


def convert(weights_dir: str | os.PathLike, output: str | os.PathLike, portable: bool = False,
            check: bool = False, config: LivePortraitConfig = LivePortraitConfig(), progress=print,
            external_weights: bool = False) -> Path:
    """Published weights directory -> bundle; returns the bundle's path."""
    check_output_dir(Path(output))
    networks, reports = load_networks(weights_dir, config, progress=progress)
    for r in reports:
        progress(r.summary())
    return write_bundle(networks, output, provenance(Path(weights_dir), reports), portable, check, progress,
                        external_weights)


def build_parser():
    p = command.parser("convert liveportrait",
                       "Convert LivePortrait's published weights (MIT) into a megaportraits bundle.")
    p.add_argument("--weights", required=True, metavar="DIR",
                   help="LivePortrait's pretrained_weights/liveportrait directory (base_models/, retargeting_models/)")
    p.add_argument("--output", "-o", required=True, metavar="BUNDLE", help="bundle directory to write")
    p.add_argument("--portable", action="store_true", help="standard ONNX ops only (no custom-op graphs)")
    p.add_argument("--external-weights", action="store_true",
                   help="keep each graph's weights in a .data file beside it, shared with its portable twin "
                        "(a smaller bundle: the twin does not repeat the generator's 400 MB)")
    p.add_argument("--verify", action="store_true",
                   help="compare every graph with PyTorch in ONNX Runtime (batch 1 and 3) before writing")
    return p


def _body(args) -> int:
    started = time.perf_counter()
    try:
        out = convert(args.weights, args.output, portable=args.portable, check=args.verify,
                      progress=lambda line: print(line, file=sys.stderr, flush=True),
                      external_weights=args.external_weights)
    except WeightsError as e:
        raise command.CommandError(str(e)) from None
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({size / 2**20:.1f} MiB, {time.perf_counter() - started:.0f} s)")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return command.run(_body, args)
