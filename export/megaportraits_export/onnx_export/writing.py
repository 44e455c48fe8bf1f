"""Writing a bundle: every role's graph file and twin, the manifest, an optional verification,
all in a staging directory renamed into place at the end (an interrupted export leaves nothing)."""
from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import onnx
import torch

import megaportraits
from megaportraits import manifest as mf
from megaportraits.schema import GRID_SAMPLE_3D
from megaportraits_export.onnx_export.errors import ExportError
from megaportraits_export.onnx_export.graph_files import check_graph, save_graph
from megaportraits_export.onnx_export.graphs import ExportedModel, export_graphs, random_model
from megaportraits_export.onnx_export.portable import save_standard_twin
from megaportraits_export.onnx_export.precision import CalibrationFrames, convert_bundle_graphs, parse_precisions
from megaportraits_export.onnx_export.tracing import OPSET
from megaportraits_export.onnx_export.verify import format_report, verify_bundle

MODEL_NAME = "megaportraits"


def export_bundle(model: torch.nn.Module,
                  config,
                  output: str | os.PathLike,
                  preset: str,
                  provenance: dict,
                  portable: bool = False,
                  verify: bool = False,
                  external_weights: bool = False,
                  precision: str = "fp32",
                  calibration_frames: CalibrationFrames | None = None) -> Path:
    """Export ``model`` (trained or random) to a complete bundle at ``output``; see :func:`write_bundle`."""
    check_output_dir(Path(output))
    exported = export_graphs(model, config, preset, provenance)
    return write_bundle(exported, output, portable=portable, verify_against=model if verify else None,
                        external_weights=external_weights, precision=precision,
                        calibration_frames=calibration_frames)


def write_bundle(exported: ExportedModel,
                 output: str | os.PathLike,
                 portable: bool = False,
                 verify_against: torch.nn.Module | None = None,
                 external_weights: bool = False,
                 precision: str = "fp32",
                 calibration_frames: CalibrationFrames | None = None) -> Path:
    """Write a bundle to ``output`` (replacing a bundle already there) and return its path.

    Default flavour: each graph with the custom op plus its portable twin; ``portable``: the
    standard-ops graphs only. Weights are stored inside each .onnx file (below 2 GB), so a twin
    repeats its graph's weights; with ``external_weights`` each graph keeps them in a
    ``<file>.data`` beside it that its twin shares, which nearly halves a default bundle.
    With ``verify_against`` (the PyTorch model), every graph file is compared with it in ONNX
    Runtime before the bundle is put in place, and a mismatch raises :class:`ExportError` and
    writes nothing. ``precision`` int8 or fp16 then converts the per-frame graphs
    (:mod:`.precision`; int8 calibrated on ``calibration_frames``, by default synthetic heads):
    verification checks the fp32 trace, before the conversion. A list (``"fp32,int8"``) carries
    each precision after the first as a flavour beside the main files, which the SDK picks from.
    """
    output = Path(output)
    with staged_bundle(output) as staging:
        graphs = {role: _write_role(role, program, staging, portable, external_weights, exported.graph_io(role))
                  for role, program in exported.programs.items()}
        manifest = mf.Manifest(
            model_name=MODEL_NAME,
            preset=exported.preset,
            image_size=exported.image_size,
            graphs=graphs,
            files={name: "" for name in _data_files(staging)},  # write_manifest hashes them
            opset=OPSET,
            custom_op=None if portable else {"domain": GRID_SAMPLE_3D.domain, "version": GRID_SAMPLE_3D.version},
            precision="fp32",
            producer=producer_versions(),
            provenance=dict(exported.provenance),
        )
        mf.write_manifest(staging, manifest)
        if verify_against is not None:
            _verify_or_raise(staging, verify_against)
        precisions = parse_precisions(precision)  # "fp32", "int8", "fp32,int8", ...
        if precisions != ("fp32",):
            convert_bundle_graphs(staging, manifest, precisions, calibration_frames, external_weights)
            manifest.files = {name: "" for name in _data_files(staging)}
            mf.write_manifest(staging, manifest)
    return output


def _write_role(role: str,
                program: torch.onnx.ONNXProgram,
                staging: Path,
                portable: bool,
                external_weights: bool,
                names: tuple) -> mf.GraphSpec:
    """Write one role's graph file(s); a graph with no custom node is its own portable twin.
    ``names``: the (inputs, outputs) the graph must have (:meth:`ExportedModel.graph_io`)."""
    path = staging / f"{role}.onnx"
    save_graph(program, path, external_data=True if external_weights else None)
    inputs, outputs, uses_custom_op = check_graph(role, path, portable=False, names=names)
    twin = path
    if uses_custom_op:
        twin = path if portable else staging / f"{role}.portable.onnx"
        save_standard_twin(path, twin)
        check_graph(role, twin, portable=True, names=names)
    return mf.GraphSpec(file=path.name, inputs=tuple(inputs), outputs=tuple(outputs),
                        portable_file=None if portable else twin.name)


def _verify_or_raise(bundle: Path, model: torch.nn.Module) -> None:
    report = verify_bundle(bundle, model)
    print(format_report(report))
    failed = [r for r in report if not r.ok]
    if failed:
        raise ExportError(f"{len(failed)} output(s) of the exported graphs differ from PyTorch beyond "
                          f"tolerance (first: {failed[0].describe()}); the bundle was not written")


def _data_files(staging: Path) -> list[str]:
    return sorted(p.name for p in staging.iterdir() if p.is_file() and p.name != mf.MANIFEST_NAME)


def check_output_dir(output: Path) -> None:
    """Refuse an output that is a file, or a non-empty directory that is not a bundle (never overwrite
    what is not ours); a converter of another family checks its output the same way."""
    if output.exists() and not output.is_dir():
        raise ExportError(f"--output {output} is a file; give a directory for the bundle")
    if output.is_dir() and any(output.iterdir()) and not (output / mf.MANIFEST_NAME).is_file():
        raise ExportError(f"--output {output} is a non-empty directory that is not a bundle; "
                          "choose a new directory (an existing bundle is replaced)")


@contextlib.contextmanager
def staged_bundle(output: str | os.PathLike) -> Iterator[Path]:
    """A staging directory beside ``output`` to write a bundle into: renamed into place when the
    block ends, removed when it raises, so an interrupted write never leaves half a bundle.
    Every writer of bundles (export, enhancer, converters) goes through it."""
    output = Path(output)
    check_output_dir(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        yield staging
        move_into_place(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def move_into_place(staging: Path, output: Path) -> None:
    """Rename the finished bundle into place; an old bundle there is swapped out, then removed."""
    old = None
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
        os.rename(output, old / output.name)
    _make_readable(staging)
    os.rename(staging, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _make_readable(bundle: Path) -> None:
    """mkdtemp/mkstemp create owner-only entries; a bundle is meant to be shared and shipped."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(bundle, 0o777 & ~umask)
    for p in bundle.iterdir():
        os.chmod(p, 0o666 & ~umask)


def producer_versions() -> dict:
    versions = {
        "megaportraits": megaportraits.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "python": platform.python_version(),
    }
    for name in ("onnxscript", "onnxruntime"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return versions


def export_random_init(preset: str,
                       seed: int,
                       output: str | os.PathLike,
                       portable: bool = False,
                       verify: bool = False,
                       external_weights: bool = False,
                       precision: str = "fp32",
                       calibration_frames: CalibrationFrames | None = None) -> Path:
    """Export randomly initialised weights of a preset (tests, benchmarks at any size)."""
    model, config = random_model(preset, seed)
    return export_bundle(model, config, output, preset=preset,
                         provenance={"weights": "random-init", "seed": seed},
                         portable=portable, verify=verify, external_weights=external_weights,
                         precision=precision, calibration_frames=calibration_frames)
