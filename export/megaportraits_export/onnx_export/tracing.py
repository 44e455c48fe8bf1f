"""Tracing one module into one ONNX graph: the dynamo exporter, the volume sample routed through
our custom op, a dynamic batch axis, and the exporter's debugging metadata stripped.

Why the dynamo exporter and not TorchScript (``dynamo=False``): measured on the tiny source
graph, TorchScript exports 3x faster but leaves twice the nodes (1438 vs 772: Constant,
Identity, Mod, Where, Equal from shape arithmetic) that we would have to clean up ourselves;
the dynamo exporter's optimizer folds them, and ``custom_translation_table`` maps the
``torch.library`` op onto the custom-domain node with no symbolic-function registry.
"""
from __future__ import annotations

import inspect
import logging

import torch

from megaportraits_export import custom_op
from megaportraits_export.warp import use_volume_sampler

OPSET = 20
BATCH_AXIS = "batch"


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
            dynamic_shapes=_batch_axes(module, example_inputs, {0: batch}),
            custom_translation_table=custom_op.translation_table(),
            optimize=True,
            verbose=False,
        )
    _strip_trace_metadata(program)
    return program


def _batch_axes(module: torch.nn.Module, example_inputs: tuple, axis: dict) -> tuple:
    """``axis`` for every input, shaped as ``module.forward``'s parameters: torch.export wants
    the inputs of a ``*args`` parameter (a generator graph's avatar inputs) as one tuple."""
    parameters = list(inspect.signature(module.forward).parameters.values())
    shapes = []
    for k, parameter in enumerate(parameters):
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            if example_inputs[k:]:  # none given: torch.export counts no entry for it
                shapes.append(tuple(axis for _ in example_inputs[k:]))
            return tuple(shapes)
        if k < len(example_inputs):
            shapes.append(axis)
    return tuple(shapes)


def _strip_trace_metadata(program: torch.onnx.ONNXProgram) -> None:
    """Drop the exporter's per-node debugging metadata (Python stack traces with this machine's
    paths, FX node text, module hierarchy): most of a small graph's bytes, none of its meaning."""
    graph = program.model.graph
    for node in graph:
        node.metadata_props.clear()
    for value in (*graph.inputs, *graph.initializers.values(), *(v for n in graph for v in n.outputs)):
        value.metadata_props.clear()
    # The program's signature lists an output the module returns as None (the avatar state's
    # fields of a path the model lacks, which the graph does not have) as an unnamed
    # ': USER_OUTPUT' line; without those lines the graph is the one traced before such fields.
    signature = graph.metadata_props.get(_SIGNATURE_KEY)
    if signature is not None:
        graph.metadata_props[_SIGNATURE_KEY] = signature.replace(_UNNAMED_OUTPUT, "")


_SIGNATURE_KEY = "pkg.torch.export.ExportedProgram.graph_signature"
_UNNAMED_OUTPUT = "\n: USER_OUTPUT"


def _quiet_exporter_logs() -> None:
    # torch's ONNX registry warns about every missing torchvision op on each export.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
