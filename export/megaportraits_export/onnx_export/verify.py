"""Verification against PyTorch: every graph file of a bundle run in ONNX Runtime on random inputs
at batch sizes 1 and 3 and compared, output by output, with the modules it came from."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from megaportraits import sessions
from megaportraits.bundle import validate_bundle
from megaportraits.providers import resolve_providers
from megaportraits.schema import GENERATOR, GRAPH_IO, GRID_SAMPLE_3D, MATTE_OUTPUT
from megaportraits_export.onnx_export.errors import ExportError
from megaportraits_export.onnx_export.graphs import model_graph_io, reference_run
from megaportraits_export.onnx_export.portable import custom_nodes_as_standard

VERIFY_BATCH_SIZES = (1, 3)
# Outputs that are images in [0, 1]: held to an absolute tolerance; the rest (volumes, codes,
# poses of random networks, whose scale is arbitrary) to a tolerance relative to their scale.
IMAGE_OUTPUTS = (*GRAPH_IO[GENERATOR].outputs, MATTE_OUTPUT)
IMAGE_ATOL = 1e-4
FEATURE_RTOL = 1e-4


@dataclass(frozen=True)
class OutputComparison:
    """How far one output of one graph file is from PyTorch at one batch size."""

    file: str
    output: str
    batch: int
    max_abs: float
    max_rel: float  # max |onnx - torch| / max |torch|: error relative to the output's scale
    tolerance: float  # bound on max_abs
    checked_with: str  # how the graph was run

    @property
    def ok(self) -> bool:
        return bool(self.max_abs <= self.tolerance)

    def describe(self) -> str:
        return (f"{self.file}:{self.output} batch {self.batch}: max abs {self.max_abs:.2e}, "
                f"max rel {self.max_rel:.2e} (tolerance {self.tolerance:.1e})")


def verify_bundle(bundle_dir: str | os.PathLike,
                  model: torch.nn.Module,
                  batch_sizes: tuple = VERIFY_BATCH_SIZES,
                  seed: int = 1234) -> list[OutputComparison]:
    """Run every graph file of the bundle in ONNX Runtime and compare it with ``model``.

    Custom-op graphs run with the op library when it can be loaded; without it they run with
    their GridSample3D nodes turned into standard GridSample (which checks everything around
    the kernel, and the kernel itself is cpp_ext's tests' business), and the report says so.
    """
    bundle_dir = Path(bundle_dir)
    validation = validate_bundle(bundle_dir)  # the SDK's own complete check, before any session
    if not validation.ok:
        raise ExportError(f"the bundle at {bundle_dir} is not valid: {'; '.join(validation.problems)}")
    manifest = validation.manifest
    model = model.eval()
    names_of = model_graph_io(model)  # role -> (inputs, outputs), the avatar inputs included
    cases = []  # (batch, role, feeds, PyTorch outputs)
    for batch in batch_sizes:
        run = reference_run(model, manifest.image_size, batch, seed + batch, with_image=True)
        for role in manifest.graphs:
            if role in run:  # later roles (enhancer, student) come from other models
                inputs, expected = run[role]
                feeds = {name: t.numpy() for name, t in zip(names_of[role][0], inputs, strict=True)}
                cases.append((batch, role, feeds, expected))
    report = []
    for role, spec in manifest.graphs.items():
        for file in dict.fromkeys(filter(None, (spec.file, spec.portable_file))):
            session, how = ort_session(bundle_dir / file)
            for batch, case_role, feeds, expected in cases:
                if case_role == role:
                    names = list(names_of[role][1])
                    got = session.run(names, feeds)
                    report.extend(compare_outputs(file, name, batch, ref.numpy(), out, how)
                                  for name, ref, out in zip(names, expected, got))
    return report


def compare_outputs(file: str, name: str, batch: int, reference: np.ndarray, actual: np.ndarray,
                    checked_with: str = "") -> OutputComparison:
    if reference.shape != actual.shape:
        raise ExportError(f"{file}: output {name} has shape {actual.shape} at batch {batch}; "
                          f"PyTorch gives {reference.shape}")
    diff = np.abs(actual.astype(np.float64) - reference.astype(np.float64))
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    tolerance = IMAGE_ATOL if name in IMAGE_OUTPUTS else FEATURE_RTOL * max(scale, 1.0)
    return OutputComparison(file=file, output=name, batch=batch, max_abs=max_abs,
                       max_rel=max_abs / scale if scale > 0 else max_abs, tolerance=tolerance,
                       checked_with=checked_with)


def ort_session(path: Path, threads: int = 2):
    """An ONNX Runtime CPU session for one graph file, configured as the SDK configures its own
    (:mod:`megaportraits.sessions`), and a note of how it runs the custom op.

    A custom-op graph runs with the op library when it can be used here; without it, its
    GridSample3D nodes run as the standard GridSample they equal (the report says so)."""
    proto = onnx.load(path, load_external_data=False)
    has_custom = any(n.domain == GRID_SAMPLE_3D.domain for n in proto.graph.node)
    cpu = resolve_providers("cpu")
    if not has_custom:
        return sessions.create_session(path, cpu, sessions.session_options(threads)), "onnxruntime"
    status = sessions.custom_op_status()
    if status.available:
        options = sessions.session_options(threads, custom_op_library=status.path)
        return sessions.create_session(path, cpu, options), "onnxruntime + custom op library"
    as_standard = custom_nodes_as_standard(onnx.load(path))  # with any external weights, in memory
    session = sessions.create_session(as_standard.SerializeToString(), cpu, sessions.session_options(threads),
                                      what=repr(path.name))
    return session, f"onnxruntime, GridSample3D run as GridSample ({status.reason})"


def format_report(report: list[OutputComparison]) -> str:
    lines = [f"{'file':<24} {'output':<18} {'batch':>5} {'max abs':>10} {'max rel':>10}  ok"]
    for r in report:
        lines.append(f"{r.file:<24} {r.output:<18} {r.batch:>5} {r.max_abs:>10.2e} {r.max_rel:>10.2e}  "
                     f"{'yes' if r.ok else 'NO'}")
    for how in sorted({r.checked_with for r in report}):
        files = sorted({r.file for r in report if r.checked_with == how})
        lines.append(f"{', '.join(files)}: {how}")
    return "\n".join(lines)
