"""Portable twins: a custom-op graph with every GridSample3D node turned into the standard
GridSample-20 it equals by contract, and every DequantizeInstanceNormalization (int8 graphs)
into the DequantizeLinear + InstanceNormalization it equals, for runtimes that cannot load the
op library."""
from __future__ import annotations

from pathlib import Path

import onnx

from megaportraits.schema import GRID_SAMPLE_3D
from megaportraits_export.onnx_export.graph_files import check_model


def save_standard_twin(graph_path: Path, twin_path: Path) -> None:
    """Write the portable twin of a saved graph: the same nodes and weights, with every
    GridSample3D turned into the standard GridSample-20 it equals by contract (docs/design.md,
    "The custom op").

    A graph whose weights are external shares its data file with its twin. ``twin_path`` may
    be ``graph_path`` itself (a portable-only bundle).
    """
    proto = onnx.load(graph_path, load_external_data=False)
    onnx.save(custom_nodes_as_standard(proto), twin_path)
    check_model(twin_path)


def custom_nodes_as_standard(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with every library node turned into the standard ops it equals."""
    from megaportraits_export.onnx_export.int8_graph import dequantize_instance_norms_as_standard

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    dequantize_instance_norms_as_standard(proto)
    for node in proto.graph.node:
        if node.domain == GRID_SAMPLE_3D.domain and node.op_type == GRID_SAMPLE_3D.name:
            node.domain, node.op_type = "", "GridSample"
    kept = [o for o in proto.opset_import if o.domain != GRID_SAMPLE_3D.domain]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    return proto
