"""The ``student`` graph: a trained student traced to ONNX, and the student bundle written around it.

The graph is (driver_image (N, 3, S, S) float32, avatar_index (N,) int64) -> image (N, 3, S, S)
[+ matte (N, 1, S, S)], names from :mod:`megaportraits.schema` (STUDENT_IO). It is traced from
``Student.inference()``, the eval-mode copy with every BatchNorm folded away (encoder norms into
their convs, each SPADE layer into full-resolution per-avatar scale and shift tables gathered by
the avatar index: no Resize, no statistics, no Split at run time), with a dynamic batch axis on
both inputs. It has only standard ops, so the bundle is portable.

The bundle holds, beside the graph, every avatar's source photo (PNG, hashed like every file),
where its face crop lies in that photo and, for a matte student, the backdrop the SDK composites
onto: all a runtime needs to paste frames back, without the teacher. The manifest names the
teacher by its manifest's sha256. Written in a staging directory renamed into place at the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from megaportraits import manifest as mf
from megaportraits.schema import MATTE_OUTPUT, STUDENT, STUDENT_IO
from megaportraits_export.networks.student import Student, StudentGraph
from megaportraits_export.onnx_export.errors import ExportError
from megaportraits_export.onnx_export.graph_files import check_graph, save_graph
from megaportraits_export.onnx_export.tracing import OPSET, export_graph
from megaportraits_export.onnx_export.writing import check_output_dir, producer_versions, staged_bundle

MODEL_NAME = "megaportraits-student"


@dataclass(frozen=True)
class StudentAvatar:
    """One avatar as the bundle stores it: its name, source photo (RGB uint8), face crop
    (x, y, side) in that photo, and the backdrop (RGB uint8, S x S) for matte students."""

    name: str
    image: np.ndarray
    crop: tuple
    backdrop: np.ndarray | None = None


def student_io(matte: bool) -> tuple:
    """(input names, output names) of the student graph."""
    return STUDENT_IO.inputs, STUDENT_IO.outputs + ((MATTE_OUTPUT,) if matte else ())


def deployable(student: Student) -> torch.nn.Module:
    """A folded copy of ``student`` wrapped as the graph computes it (the original is untouched)."""
    return StudentGraph(student.inference()).eval()


def example_inputs(config, batch: int = 2, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, config.image_size, config.image_size, generator=g)
    index = torch.randint(0, config.num_avatars, (batch,), generator=g, dtype=torch.int64)
    return image, index


def export_student_graph(student: Student, path: Path) -> tuple:
    """Trace ``student`` to ``path``; returns its (inputs, outputs) tensor specs, checked."""
    inputs, outputs = student_io(student.config.matte)
    program = export_graph(deployable(student), example_inputs(student.config), inputs, outputs)
    save_graph(program, path)
    specs_in, specs_out, uses_custom_op = check_graph(STUDENT, path, portable=True, names=(inputs, outputs))
    return specs_in, specs_out


def write_student_bundle(student: Student, avatars: list, teacher_dir: Path, output: Path,
                         provenance: dict | None = None, teacher: dict | None = None,
                         precisions: tuple = ("fp32",), calibration_frames=None) -> Path:
    """Export ``student`` with its ``avatars`` (in avatar_index order) into a bundle at ``output``.

    ``teacher``: the teacher's record (manifest_sha256, model_name, preset) as it was when the
    targets were rendered; default: read from ``teacher_dir`` now. ``precisions``: fp32 first,
    then the flavours to carry beside it (int8, fp16: :mod:`..onnx_export.add_precision`, int8
    calibrated on ``calibration_frames``, default the synthetic training heads)."""
    output = Path(output)
    if len(avatars) != student.config.num_avatars:
        raise ExportError(f"the student holds {student.config.num_avatars} avatars but {len(avatars)} were given")
    check_output_dir(output)
    if teacher is None:
        loaded = mf.load_manifest(teacher_dir)
        teacher = {"manifest_sha256": mf.sha256_file(Path(teacher_dir) / mf.MANIFEST_NAME),
                   "model_name": loaded.model_name, "preset": loaded.preset}
    with staged_bundle(output) as staging:
        specs_in, specs_out = export_student_graph(student, staging / f"{STUDENT}.onnx")
        entries = []
        for i, avatar in enumerate(avatars):
            image_name = f"avatar_{i:03d}.png"
            _write_png(staging / image_name, avatar.image)
            entry = {"name": avatar.name, "image": image_name, "crop": [int(v) for v in avatar.crop], "backdrop": None}
            if avatar.backdrop is not None:
                entry["backdrop"] = f"backdrop_{i:03d}.png"
                _write_png(staging / entry["backdrop"], avatar.backdrop)
            entries.append(entry)
        manifest = mf.Manifest(
            model_name=MODEL_NAME,
            preset=student.config.name,
            image_size=student.config.image_size,
            graphs={STUDENT: mf.GraphSpec(file=f"{STUDENT}.onnx", inputs=tuple(specs_in), outputs=tuple(specs_out))},
            files={p.name: "" for p in sorted(staging.iterdir()) if p.is_file()},
            opset=OPSET,
            custom_op=None,
            producer=producer_versions(),
            provenance={**(provenance or {}), "student_config": student.config.to_dict()},
            student={"avatars": entries,
                     "teacher": {k: teacher[k] for k in ("manifest_sha256", "model_name", "preset")}},
        )
        if tuple(precisions) != ("fp32",):
            from megaportraits_export.onnx_export.add_precision import add_flavours_in_place

            add_flavours_in_place(staging, manifest, tuple(precisions), calibration_frames)
        mf.write_manifest(staging, manifest)
    return output


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2BGR)):
        raise ExportError(f"could not write {path.name}")
