"""Export a MegaPortraits model to the ONNX model bundle that the ``megaportraits`` SDK runs.

The model is cut where DESIGN.md cuts the data flow: a ``source`` graph run once per avatar, a
``driver`` graph and a ``generator`` graph run per frame. Each graph is exported by the dynamo
exporter from the model's own module, with training-only pieces folded away
(``folded_for_export``), GroupNorms rewritten in a form ONNX Runtime computes accurately
(:func:`with_stable_group_norms`), opset 20, a dynamic ``batch`` axis and the ONNX names of
docs/interfaces.md.

Two flavours of the same weights exist. The default sends the heavy volume sample through the
``com.megaportraits::GridSample3D`` custom op (see :mod:`custom_op`) and also carries a
*portable twin* of every graph that holds that op, so the SDK can fall back to standard ONNX
when the op library cannot be loaded; ``--portable`` writes standard-ops graphs only. Each
graph is traced once: its twin is the same graph with that node renamed to the standard
GridSample-20 it equals by contract. Twins repeat their graph's weights (about +85% bundle
size) unless ``--external-weights`` puts each graph's weights in one data file both share.

A bundle is written into a temporary directory next to the output and renamed into place at
the end, so an interrupted export never leaves a half-written bundle behind. The manifest is
written only through :mod:`megaportraits.manifest`, the schema's single definition.

``--verify`` runs every graph file in ONNX Runtime on random inputs at batch sizes 1 and 3 and
compares it with the PyTorch modules it came from.

Why the dynamo exporter and not TorchScript (``dynamo=False``): measured on the tiny source
graph, TorchScript exports 3x faster but leaves twice the nodes (1438 vs 772: Constant,
Identity, Mod, Where, Equal from shape arithmetic) that we would have to clean up ourselves;
the dynamo exporter's optimizer folds them, and ``custom_translation_table`` maps the
``torch.library`` op onto the custom-domain node with no symbolic-function registry.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

import megaportraits
from megaportraits import manifest as mf
from megaportraits_export import custom_op
from megaportraits_export.warp import use_volume_sampler

OPSET = 20
MODEL_NAME = "megaportraits"
BATCH_AXIS = "batch"
EXAMPLE_BATCH = 2  # torch.export specialises a batch of 1, so trace with 2 and mark it dynamic
VERIFY_BATCH_SIZES = (1, 3)

# role -> (input names, output names); docs/interfaces.md, "Bundle graphs".
GRAPH_IO = {
    "source": (("source_image",), ("canonical_volume", "global_descriptor", "pose", "expression")),
    "driver": (("driver_image",), ("pose", "expression")),
    "generator": (("canonical_volume", "global_descriptor", "pose", "expression"), ("image",)),
}
# A model with a matte (ModelConfig.matte) has a second generator output, the person's matte.
MATTE_OUTPUT = "matte"
# Outputs that are images in [0, 1]: held to an absolute tolerance; the rest (volumes, codes,
# poses of random networks, whose scale is arbitrary) to a tolerance relative to their scale.
IMAGE_OUTPUTS = ("image", MATTE_OUTPUT)
IMAGE_ATOL = 1e-4
FEATURE_RTOL = 1e-4

# Ops that ONNX Runtime runs through slow generic paths or that betray an untidy trace
# (control flow, sequences); a deployment graph should have none of them.
SLOW_OPS = {"Loop", "Scan", "If", "SequenceConstruct", "SequenceAt", "SplitToSequence",
            "ConcatFromSequence", "NonZero", "Compress", "Unique"}

_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.INT64: "int64"}

log = logging.getLogger("megaportraits_export.onnx_export")


class ExportError(RuntimeError):
    """The model cannot be exported, or the export does not match PyTorch."""


def graph_io(role: str, matte: bool = False) -> tuple:
    """(input names, output names) of a role's graph; a matte model's generator adds ``matte``."""
    inputs, outputs = GRAPH_IO[role]
    return inputs, outputs + ((MATTE_OUTPUT,) if matte and role == "generator" else ())


class GeneratorGraph(torch.nn.Module):
    """What a matte model's generator graph computes: its RGBA rendering as two named outputs,
    ``image`` and ``matte``, so a runtime that knows nothing of mattes still finds ``image``."""

    def __init__(self, generator: torch.nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, canonical_volume: torch.Tensor, global_descriptor: torch.Tensor, pose: torch.Tensor,
                expression: torch.Tensor) -> tuple:
        from megaportraits_export.model import split_matte

        return split_matte(self.generator(canonical_volume, global_descriptor, pose, expression))


# ---- one graph ---------------------------------------------------------------------------------
def export_graph(module: torch.nn.Module,
                 example_inputs: tuple,
                 input_names: tuple,
                 output_names: tuple) -> torch.onnx.ONNXProgram:
    """Trace ``module`` with the volume sample routed through our op, and translate it to ONNX
    (custom-op flavour; :func:`save_standard_twin` makes the portable one from it)."""
    batch = torch.export.Dim(BATCH_AXIS, min=1, max=4096)
    _quiet_exporter_logs()
    with use_volume_sampler(custom_op.volume_sampler), torch.no_grad():
        program = torch.onnx.export(
            module,
            example_inputs,
            dynamo=True,
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=OPSET,
            dynamic_shapes=tuple({0: batch} for _ in example_inputs),
            custom_translation_table=custom_op.translation_table(),
            optimize=True,
            verbose=False,
        )
    _strip_trace_metadata(program)
    return program


def _strip_trace_metadata(program: torch.onnx.ONNXProgram) -> None:
    """Drop the exporter's per-node debugging metadata (Python stack traces with this machine's
    paths, FX node text, module hierarchy): most of a small graph's bytes, none of its meaning."""
    graph = program.model.graph
    for node in graph:
        node.metadata_props.clear()
    for value in (*graph.inputs, *graph.initializers.values(), *(v for n in graph for v in n.outputs)):
        value.metadata_props.clear()


def save_graph(program: torch.onnx.ONNXProgram, path: Path, external_data: bool | None = None) -> list[str]:
    """Save one graph (weights inline below 2 GB, else one external data file beside it, as
    ``external_data=None`` lets the exporter decide); check it, and return the names of the
    files written."""
    program.save(path, external_data=external_data)
    proto = onnx.load(path, load_external_data=False)
    data_files = sorted({entry.value for t in proto.graph.initializer
                         if t.data_location == onnx.TensorProto.EXTERNAL
                         for entry in t.external_data if entry.key == "location"})
    for name in data_files:
        mf.safe_name(name)  # the SDK will refuse anything else
    _check_model(path)
    return [path.name, *data_files]


def save_standard_twin(graph_path: Path, twin_path: Path) -> None:
    """Write the portable twin of a saved graph: the same nodes and weights, with every
    GridSample3D turned into the standard GridSample-20 it equals by contract (DESIGN.md).

    A graph whose weights are external shares its data file with its twin. ``twin_path`` may
    be ``graph_path`` itself (a portable-only bundle).
    """
    proto = onnx.load(graph_path, load_external_data=False)
    onnx.save(custom_nodes_as_standard(proto), twin_path)
    _check_model(twin_path)


def custom_nodes_as_standard(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every GridSample3D node turned into the standard GridSample-20 it equals."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    for node in proto.graph.node:
        if node.domain == mf.CUSTOM_OP_DOMAIN and node.op_type == custom_op.OP_NAME:
            node.domain, node.op_type = "", "GridSample"
    kept = [o for o in proto.opset_import if o.domain != mf.CUSTOM_OP_DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    return proto


def _check_model(path: Path) -> None:
    custom_op.register_onnx_schema()
    onnx.checker.check_model(path, full_check=True, check_custom_domain=True)


def graph_summary(path: Path) -> tuple[list[mf.TensorSpec], list[mf.TensorSpec], dict]:
    """Input and output specs as the ONNX file declares them, and its op histogram."""
    proto = onnx.load(path, load_external_data=False)
    specs = [[_tensor_spec(v) for v in vs] for vs in (proto.graph.input, proto.graph.output)]
    ops: dict = {}
    for node in proto.graph.node:
        key = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        ops[key] = ops.get(key, 0) + 1
    return specs[0], specs[1], ops


def _tensor_spec(value: onnx.ValueInfoProto) -> mf.TensorSpec:
    t = value.type.tensor_type
    if t.elem_type not in _ONNX_DTYPES:
        raise ExportError(f"graph value {value.name!r} has ONNX element type {t.elem_type}, "
                          f"which the bundle format cannot describe")
    shape = tuple(d.dim_param if d.dim_param else d.dim_value for d in t.shape.dim)
    return mf.TensorSpec(name=value.name, shape=shape, dtype=_ONNX_DTYPES[t.elem_type])


def _check_graph(role: str, path: Path, portable: bool, matte: bool = False) -> tuple[list, list, bool]:
    """The saved graph has exactly the names, batch axis and ops the bundle promises; returns
    its input and output specs and whether it holds a custom-op node."""
    inputs, outputs, ops = graph_summary(path)
    want_in, want_out = graph_io(role, matte)
    got_in, got_out = tuple(t.name for t in inputs), tuple(t.name for t in outputs)
    if (got_in, got_out) != (want_in, want_out):
        raise ExportError(f"{role} graph has inputs {got_in} and outputs {got_out}; "
                          f"docs/interfaces.md fixes {want_in} and {want_out}")
    for t in (*inputs, *outputs):
        if not t.shape or t.shape[0] != BATCH_AXIS:
            raise ExportError(f"{role} graph: {t.name} has shape {t.shape}, not a dynamic '{BATCH_AXIS}' axis 0")
    slow = sorted(set(ops) & SLOW_OPS)
    if slow:
        raise ExportError(f"{role} graph contains {', '.join(slow)}, which ONNX Runtime runs slowly; "
                          "rewrite that part of the model with tensor ops")
    uses_custom_op = any(op.startswith(mf.CUSTOM_OP_DOMAIN + "::") for op in ops)
    if portable and uses_custom_op:
        raise ExportError(f"portable {role} graph still contains a {mf.CUSTOM_OP_DOMAIN} node")
    return inputs, outputs, uses_custom_op


# ---- GroupNorm, exported in a numerically stable form ------------------------------------------
class TwoPassGroupNorm(torch.nn.Module):
    """Export-only stand-in for an ``nn.GroupNorm``: the same function, in a form ONNX Runtime
    computes accurately (see :func:`with_stable_group_norms`).

    The mean is subtracted before the variance is taken (two passes; a second, small mean of the
    centred values corrects the first), so the variance is never the difference of two large,
    nearly equal numbers. Same parameters and state_dict keys as
    the ``nn.GroupNorm`` it replaces.
    """

    def __init__(self, norm: torch.nn.GroupNorm):
        super().__init__()
        self.num_groups = norm.num_groups
        self.num_channels = norm.num_channels
        self.eps = norm.eps
        self.weight = norm.weight  # Parameter or None, shared with ``norm``
        self.bias = norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grouped = x.reshape(x.shape[0], self.num_groups, -1)
        centred = grouped - grouped.mean(dim=-1, keepdim=True)
        centred = centred - centred.mean(dim=-1, keepdim=True)  # the first mean's rounding error
        variance = (centred * centred).mean(dim=-1, keepdim=True)
        normalised = (centred * torch.rsqrt(variance + self.eps)).reshape(x.shape)
        if self.weight is None:
            return normalised
        per_channel = (1, self.num_channels) + (1,) * (x.dim() - 2)
        return normalised * self.weight.reshape(per_channel) + self.bias.reshape(per_channel)


def with_stable_group_norms(module: torch.nn.Module) -> torch.nn.Module:
    """Replace, in place, every ``nn.GroupNorm`` inside ``module`` by a :class:`TwoPassGroupNorm`.

    The exporter lowers ``nn.GroupNorm`` to InstanceNormalization, which ONNX Runtime computes
    inaccurately over large groups: the G2D's final GroupNorm(1, C) over C x 512 x 512 values is
    off by 1.4e-2 in the normalised values at paper512 (torch: 4.5e-7), 5.9e-4 in the image.
    The two-pass form is lowered to ReduceMean/Sub/Mul/Sqrt instead (a second mean of the
    centred values removes the first mean's rounding: ORT's ReduceMean of 524288 values near 100
    is itself 1.8e-4 off).

    All GroupNorms are replaced, not only GroupNorm(1, C): a group's size grows with the
    resolution, which the module does not know, and per-channel groups at 512 x 512 lose
    precision too. Measured on ORT 1.32 CPU, inputs 100 + randn, max abs vs torch,
    InstanceNormalization -> two-pass: GroupNorm(1, 16) at 256^2 2.7e-4 -> 5.4e-5;
    GroupNorm(16, 16) at 512^2 1.9e-4 -> 2.1e-5, at 256^2 7.9e-5 -> 1.0e-5; GroupNorm(32, 96)
    at 64^2 4.8e-5 -> 1.2e-5. Cost: small256 generator graph, batch 1, 1 thread, median of 5,
    three rounds: InstanceNormalization everywhere 42.7/44.0/42.1 ms, two-pass for
    GroupNorm(1, C) only 45.7/43.2/41.7 ms, two-pass everywhere 48.4/45.6/44.8 ms (+1.6 to
    +5.7 ms, about 7%), accepted for one accuracy rule everywhere.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.GroupNorm):
            setattr(module, name, TwoPassGroupNorm(child))
        else:
            with_stable_group_norms(child)
    return module


# ---- the model's three graphs ------------------------------------------------------------------
def role_modules(model: torch.nn.Module) -> dict:
    generator = GeneratorGraph(model.generator).eval() if model.config.matte else model.generator
    return {"source": model.source_branch, "driver": model.driver_branch, "generator": generator}


def example_inputs(model: torch.nn.Module, image_size: int, batch: int, seed: int) -> dict:
    """Random images for the branches, and the generator's inputs computed from them by the
    model itself, so every graph sees realistic values."""
    return {role: inputs for role, (inputs, _) in _reference_run(model, image_size, batch, seed, False).items()}


def _reference_run(model: torch.nn.Module, image_size: int, batch: int, seed: int, with_image: bool) -> dict:
    """role -> (inputs, PyTorch outputs) on random images (the generator's output only if asked)."""
    g = torch.Generator().manual_seed(seed)
    source_image = torch.rand(batch, 3, image_size, image_size, generator=g)
    driver_image = torch.rand(batch, 3, image_size, image_size, generator=g)
    with torch.no_grad():
        avatar = model.source_branch(source_image)
        motion = model.driver_branch(driver_image)
        generator_inputs = (avatar.canonical_volume, avatar.global_descriptor, motion.pose, motion.expression)
        rendering = role_modules(model)["generator"](*generator_inputs) if with_image else None
    return {
        "source": ((source_image,), tuple(avatar)),
        "driver": ((driver_image,), tuple(motion)),
        "generator": (generator_inputs, rendering if isinstance(rendering, tuple) else (rendering,)),
    }


@dataclass
class ExportedModel:
    """The graphs of one model, exported (custom-op flavour) but not yet written: the slow
    part of an export, from which bundles of either flavour are written."""

    programs: dict  # role -> torch.onnx.ONNXProgram
    preset: str
    image_size: int
    provenance: dict
    matte: bool = False  # the generator graph also outputs the matte


def export_graphs(model: torch.nn.Module, config, preset: str, provenance: dict) -> ExportedModel:
    """Fold ``model`` for deployment (on a copy) and export its source, driver and generator."""
    from megaportraits_export.model import folded_for_export

    _check_output_order()
    deploy = with_stable_group_norms(folded_for_export(model.eval())).eval()
    inputs = example_inputs(deploy, config.image_size, EXAMPLE_BATCH, seed=0)
    programs = {}
    for role, module in role_modules(deploy).items():
        started = time.perf_counter()
        programs[role] = export_graph(module, inputs[role], *graph_io(role, config.matte))
        log.info("exported the %s graph in %.1f s", role, time.perf_counter() - started)
    return ExportedModel(programs=programs, preset=preset, image_size=int(config.image_size),
                         provenance=dict(provenance), matte=bool(config.matte))


def _check_output_order() -> None:
    """The ONNX outputs are named by position; make sure the branches return them in that order."""
    from megaportraits_export.model import AvatarState, Motion

    for role, result_type in (("source", AvatarState), ("driver", Motion)):
        if tuple(result_type._fields) != GRAPH_IO[role][1]:
            raise ExportError(f"the {role} branch returns {result_type.__name__}{result_type._fields}, but the "
                              f"{role} graph's outputs are {GRAPH_IO[role][1]}; update docs/interfaces.md and "
                              "the exporter together")


# ---- the bundle --------------------------------------------------------------------------------
def export_bundle(model: torch.nn.Module,
                  config,
                  output: str | os.PathLike,
                  preset: str,
                  provenance: dict,
                  portable: bool = False,
                  verify: bool = False,
                  external_weights: bool = False) -> Path:
    """Export ``model`` (trained or random) to a complete bundle at ``output``; see :func:`write_bundle`."""
    _check_output_dir(Path(output))
    exported = export_graphs(model, config, preset, provenance)
    return write_bundle(exported, output, portable=portable, verify_against=model if verify else None,
                        external_weights=external_weights)


def write_bundle(exported: ExportedModel,
                 output: str | os.PathLike,
                 portable: bool = False,
                 verify_against: torch.nn.Module | None = None,
                 external_weights: bool = False) -> Path:
    """Write a bundle to ``output`` (replacing a bundle already there) and return its path.

    Default flavour: each graph with the custom op plus its portable twin; ``portable``: the
    standard-ops graphs only. Weights are stored inside each .onnx file (below 2 GB), so a twin
    repeats its graph's weights; with ``external_weights`` each graph keeps them in a
    ``<file>.data`` beside it that its twin shares, which nearly halves a default bundle.
    With ``verify_against`` (the PyTorch model), every graph file is compared with it in ONNX
    Runtime before the bundle is put in place, and a mismatch raises :class:`ExportError` and
    writes nothing.
    """
    output = Path(output)
    _check_output_dir(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        graphs = {role: _write_role(role, program, staging, portable, external_weights, exported.matte)
                  for role, program in exported.programs.items()}
        manifest = mf.Manifest(
            model_name=MODEL_NAME,
            preset=exported.preset,
            image_size=exported.image_size,
            graphs=graphs,
            files={name: "" for name in _data_files(staging)},  # write_manifest hashes them
            opset=OPSET,
            custom_op=None if portable else {"domain": mf.CUSTOM_OP_DOMAIN, "version": mf.CUSTOM_OP_VERSION},
            precision="fp32",
            producer=producer_versions(),
            provenance=dict(exported.provenance),
        )
        mf.write_manifest(staging, manifest)
        if verify_against is not None:
            _verify_or_raise(staging, verify_against)
        _move_into_place(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return output


def _write_role(role: str,
                program: torch.onnx.ONNXProgram,
                staging: Path,
                portable: bool,
                external_weights: bool,
                matte: bool = False) -> mf.GraphSpec:
    """Write one role's graph file(s); a graph with no custom node is its own portable twin."""
    path = staging / f"{role}.onnx"
    save_graph(program, path, external_data=True if external_weights else None)
    inputs, outputs, uses_custom_op = _check_graph(role, path, portable=False, matte=matte)
    twin = path
    if uses_custom_op:
        twin = path if portable else staging / f"{role}.portable.onnx"
        save_standard_twin(path, twin)
        _check_graph(role, twin, portable=True, matte=matte)
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


def _check_output_dir(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise ExportError(f"--output {output} is a file; give a directory for the bundle")
    if output.is_dir() and any(output.iterdir()) and not (output / mf.MANIFEST_NAME).is_file():
        raise ExportError(f"--output {output} is a non-empty directory that is not a bundle; "
                          "choose a new directory (an existing bundle is replaced)")


def _move_into_place(staging: Path, output: Path) -> None:
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


def _quiet_exporter_logs() -> None:
    # torch's ONNX registry warns about every missing torchvision op on each export.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


# ---- verification against PyTorch -------------------------------------------------------------
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
    manifest = mf.load_manifest(bundle_dir)
    mf.verify_files(bundle_dir, manifest)
    model = model.eval()
    cases = []  # (batch, role, feeds, PyTorch outputs)
    for batch in batch_sizes:
        run = _reference_run(model, manifest.image_size, batch, seed + batch, with_image=True)
        for role in manifest.graphs:
            if role in run:  # later roles (enhancer, student) come from other models
                inputs, expected = run[role]
                feeds = {name: t.numpy() for name, t in zip(GRAPH_IO[role][0], inputs)}
                cases.append((batch, role, feeds, expected))
    matte = bool(model.config.matte)
    report = []
    for role, spec in manifest.graphs.items():
        for file in dict.fromkeys(filter(None, (spec.file, spec.portable_file))):
            session, how = ort_session(bundle_dir / file)
            for batch, case_role, feeds, expected in cases:
                if case_role == role:
                    names = list(graph_io(role, matte)[1])
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


def custom_ops_library() -> tuple[str | None, str]:
    """The op library's path, or None and the reason it cannot be used."""
    try:
        return megaportraits.custom_ops_library(), ""
    except AttributeError:
        return None, "this megaportraits has no custom_ops_library()"
    except Exception as e:  # the SDK's error says how to build the library
        return None, str(e).splitlines()[0] if str(e) else type(e).__name__


def ort_session(path: Path, threads: int = 2):
    """An ONNX Runtime CPU session for one graph file, and a note of how it runs the custom op."""
    import onnxruntime as ort

    proto = onnx.load(path, load_external_data=False)
    has_custom = any(n.domain == mf.CUSTOM_OP_DOMAIN for n in proto.graph.node)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if not has_custom:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), "onnxruntime"
    library, reason = custom_ops_library()
    if library is not None:
        options.register_custom_ops_library(library)
        return (ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]),
                "onnxruntime + custom op library")
    proto = onnx.load(path)  # with any external weights: the model is rebuilt in memory
    as_standard = custom_nodes_as_standard(proto)
    session = ort.InferenceSession(as_standard.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, f"onnxruntime, GridSample3D run as GridSample ({reason})"


def format_report(report: list[OutputComparison]) -> str:
    lines = [f"{'file':<24} {'output':<18} {'batch':>5} {'max abs':>10} {'max rel':>10}  ok"]
    for r in report:
        lines.append(f"{r.file:<24} {r.output:<18} {r.batch:>5} {r.max_abs:>10.2e} {r.max_rel:>10.2e}  "
                     f"{'yes' if r.ok else 'NO'}")
    for how in sorted({r.checked_with for r in report}):
        files = sorted({r.file for r in report if r.checked_with == how})
        lines.append(f"{', '.join(files)}: {how}")
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------
def random_model(preset: str, seed: int):
    """A randomly initialised model of a preset; the same (preset, seed) gives the same weights."""
    from megaportraits_export.config import get_config
    from megaportraits_export.model import build_model

    config = get_config(preset)
    torch.manual_seed(seed)
    return build_model(config).eval(), config


def export_random_init(preset: str,
                       seed: int,
                       output: str | os.PathLike,
                       portable: bool = False,
                       verify: bool = False,
                       external_weights: bool = False) -> Path:
    """Export randomly initialised weights of a preset (tests, benchmarks at any size)."""
    model, config = random_model(preset, seed)
    return export_bundle(model, config, output, preset=preset,
                         provenance={"weights": "random-init", "seed": seed},
                         portable=portable, verify=verify, external_weights=external_weights)


def _parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m megaportraits_export export",
        description="Export a checkpoint, or a randomly initialised preset, to an ONNX model bundle.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="CKPT", help="training checkpoint to export")
    source.add_argument("--preset", metavar="NAME", help="architecture preset (with --random-init)")
    p.add_argument("--random-init", action="store_true", help="export random weights (tests, benchmarks)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="bundle directory to write")
    p.add_argument("--portable", action="store_true",
                   help="standard ONNX ops only (no custom-op graphs) for runtimes without our library")
    p.add_argument("--external-weights", action="store_true",
                   help="keep each graph's weights in a .data file beside it, shared with its portable twin "
                        "(a default bundle then holds each weight once)")
    p.add_argument("--verify", action="store_true",
                   help="compare every graph with PyTorch in ONNX Runtime (batch 1 and 3) before writing")
    args = p.parse_args(argv)
    if args.preset and not args.random_init:
        p.error("--preset exports an untrained architecture; add --random-init to confirm, "
                "or give --checkpoint CKPT")
    if args.random_init and not args.preset:
        p.error("--random-init needs --preset NAME")
    return args


def main(argv=None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    if not log.handlers:
        log.addHandler(logging.StreamHandler())
        log.setLevel(logging.INFO)
    started = time.perf_counter()
    try:
        if args.checkpoint:
            from megaportraits_export.checkpoint import load_model_from_checkpoint

            model, config, provenance = load_model_from_checkpoint(args.checkpoint)
            out = export_bundle(model, config, args.output, preset=provenance["preset"],
                                provenance=provenance, portable=args.portable, verify=args.verify,
                                external_weights=args.external_weights)
        else:
            out = export_random_init(args.preset, args.seed, args.output, portable=args.portable,
                                     verify=args.verify, external_weights=args.external_weights)
    except (ExportError, mf.BundleError, ValueError, OSError) as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"wrote {out} ({size / 2**20:.1f} MiB, {time.perf_counter() - started:.0f} s)")
    return 0
