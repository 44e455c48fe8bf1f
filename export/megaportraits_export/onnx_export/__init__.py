"""Export a MegaPortraits model to the ONNX model bundle that the ``megaportraits`` SDK runs.

The model is cut where the data flow is cut (docs/design.md): a ``source`` graph run once per
avatar, a ``driver`` graph and a ``generator`` graph run per frame. Each graph is exported by the
dynamo exporter from the model's own module, with training-only pieces folded away
(``folded_for_export``), GroupNorms rewritten in a form ONNX Runtime computes accurately
(:func:`with_stable_group_norms`), opset 20, a dynamic ``batch`` axis and the tensor names of
:mod:`megaportraits.schema`.

Two flavours of the same weights exist. The default sends the heavy volume sample through the
``com.megaportraits::GridSample3D`` custom op (see :mod:`megaportraits_export.custom_op`) and
also carries a *portable twin* of every graph that holds that op, so the SDK can fall back to
standard ONNX when the op library cannot be loaded; ``--portable`` writes standard-ops graphs
only. Each graph is traced once: its twin is the same graph with that node renamed to the
standard GridSample-20 it equals by contract. Twins repeat their graph's weights (about +85%
bundle size) unless ``--external-weights`` puts each graph's weights in one data file both share.

A bundle is written into a temporary directory next to the output and renamed into place at
the end, so an interrupted export never leaves a half-written bundle behind. The manifest is
written only through :mod:`megaportraits.manifest`, the format's single definition.

``--verify`` runs every graph file in ONNX Runtime on random inputs at batch sizes 1 and 3 and
compares it with the PyTorch modules it came from.

Modules, in the order an export runs them: :mod:`.graphs` (the roles' modules and example
inputs, :func:`export_graphs`), :mod:`.group_norm`, :mod:`.tracing` (one module -> one ONNX
program), :mod:`.graph_files` (save and check a graph file), :mod:`.portable` (twins),
:mod:`.writing` (the bundle, put in place atomically), :mod:`.verify` (against PyTorch),
:mod:`.cli` (the ``export`` command).
"""
from megaportraits_export.onnx_export.cli import main
from megaportraits_export.onnx_export.errors import ExportError
from megaportraits_export.onnx_export.graph_files import SLOW_OPS, check_graph, check_model, graph_summary, save_graph
from megaportraits_export.onnx_export.graphs import (
    EXAMPLE_BATCH,
    ExportedModel,
    GeneratorGraph,
    SourceGraph,
    avatar_generator_inputs,
    example_inputs,
    export_graphs,
    graph_io,
    model_avatar_inputs,
    model_graph_io,
    random_model,
    reference_run,
    role_modules,
)
from megaportraits_export.onnx_export.group_norm import TwoPassGroupNorm, with_stable_group_norms
from megaportraits_export.onnx_export.portable import custom_nodes_as_standard, save_standard_twin
from megaportraits_export.onnx_export.tracing import BATCH_AXIS, OPSET, export_graph
from megaportraits_export.onnx_export.verify import (
    FEATURE_RTOL,
    IMAGE_ATOL,
    IMAGE_OUTPUTS,
    VERIFY_BATCH_SIZES,
    OutputComparison,
    compare_outputs,
    format_report,
    ort_session,
    verify_bundle,
)
from megaportraits_export.onnx_export.writing import (
    MODEL_NAME,
    export_bundle,
    export_random_init,
    producer_versions,
    write_bundle,
)

__all__ = [
    "BATCH_AXIS",
    "EXAMPLE_BATCH",
    "FEATURE_RTOL",
    "IMAGE_ATOL",
    "IMAGE_OUTPUTS",
    "MODEL_NAME",
    "OPSET",
    "SLOW_OPS",
    "VERIFY_BATCH_SIZES",
    "ExportError",
    "ExportedModel",
    "GeneratorGraph",
    "SourceGraph",
    "OutputComparison",
    "TwoPassGroupNorm",
    "avatar_generator_inputs",
    "check_graph",
    "check_model",
    "compare_outputs",
    "custom_nodes_as_standard",
    "example_inputs",
    "export_bundle",
    "export_graph",
    "export_graphs",
    "export_random_init",
    "format_report",
    "graph_io",
    "graph_summary",
    "main",
    "model_avatar_inputs",
    "model_graph_io",
    "ort_session",
    "producer_versions",
    "random_model",
    "reference_run",
    "role_modules",
    "save_graph",
    "save_standard_twin",
    "verify_bundle",
    "with_stable_group_norms",
    "write_bundle",
]
