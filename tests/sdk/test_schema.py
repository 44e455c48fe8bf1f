"""The bundle's vocabulary is defined once (megaportraits.schema) and the C++ op library agrees.

The library keeps its own copy of the op identity (it cannot import Python); these tests read
that copy out of cpp_ext/ort_custom_op.cc and, where the library is built, run a node named
exactly as the schema says and compare it with ONNX's standard GridSample on random input.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from megaportraits import manifest as mf
from megaportraits import schema
from megaportraits.schema import GRAPH_IO, GRID_SAMPLE_3D, MATTE_OUTPUT

CC = Path(__file__).resolve().parents[2] / "cpp_ext" / "ort_custom_op.cc"


def cc_constant(source: str, name: str) -> str:
    """The value of ``constexpr ... name = value;`` in C++ source text, string quotes removed."""
    match = re.search(rf"constexpr\s+[\w\s\*]+?\b{name}\s*=\s*([^;]+);", source)
    assert match, f"{name} not found"
    return match.group(1).strip().strip('"')


def cc_op_identity(source: str) -> tuple:
    return (cc_constant(source, "kDomain"), cc_constant(source, "kOpName"), int(cc_constant(source, "kOpVersion")))


def test_the_cpp_library_declares_the_schema_op_identity():
    assert cc_op_identity(CC.read_text()) == tuple(GRID_SAMPLE_3D)


def test_the_parser_reads_what_the_file_says():
    """Not vacuous: a copy of the source with another name or version reads differently."""
    text = CC.read_text()
    renamed = text.replace(f'"{GRID_SAMPLE_3D.name}"', '"GridSample3Dx"')
    bumped = re.sub(r"(kOpVersion\s*=\s*)\d+", r"\g<1>7", text)
    assert cc_op_identity(renamed)[1] == "GridSample3Dx" and cc_op_identity(bumped)[2] == 7


def test_manifest_and_schema_share_roles_and_the_matte_name():
    assert schema.BASE_ROLES == schema.ROLES == tuple(GRAPH_IO)
    assert set(mf.MANIFEST_ROLES) == set(schema.ROLES) | set(schema.LATER_ROLES)
    assert GRAPH_IO[schema.GENERATOR].optional_outputs == (MATTE_OUTPUT,)


def test_every_avatar_generator_input_reads_a_source_tensor():
    """The optional generator inputs are fed from the avatar: each names the source graph's input
    or one of its outputs, is no required input, and the source graph's optional outputs are
    exactly what they read beyond its required ones."""
    source, generator = GRAPH_IO[schema.SOURCE], GRAPH_IO[schema.GENERATOR]
    assert generator.optional_inputs == tuple(schema.AVATAR_GENERATOR_INPUTS)
    assert not set(generator.optional_inputs) & set(generator.inputs)
    for origin in schema.AVATAR_GENERATOR_INPUTS.values():
        assert origin in source.inputs + source.outputs + source.optional_outputs
    read = set(schema.AVATAR_GENERATOR_INPUTS.values()) - set(source.inputs + source.outputs)
    assert set(source.optional_outputs) == read
    # the avatar's own motion, never the frame's: its sources are the source graph's motion outputs
    assert schema.AVATAR_GENERATOR_INPUTS[schema.SOURCE_POSE] == schema.POSE
    assert schema.AVATAR_GENERATOR_INPUTS[schema.SOURCE_EXPRESSION] == schema.EXPRESSION


def _warp_model(domain: str, op_type: str, version: int) -> bytes:
    from onnx import TensorProto, helper

    node = helper.make_node(op_type, ["x", "grid"], ["y"], domain=domain, mode="linear",
                            padding_mode="zeros", align_corners=0)
    graph = helper.make_graph([node], "warp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
                                               helper.make_tensor_value_info("grid", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    opsets = [helper.make_opsetid("", 20)] + ([helper.make_opsetid(domain, version)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def test_a_node_with_the_schema_identity_runs_in_the_built_library():
    pytest.importorskip("onnx")
    from megaportraits.errors import BundleError
    from megaportraits.sessions import create_session, custom_op_status, session_options

    status = custom_op_status()
    assert status.available, status.reason  # the suite needs the library (tests/cpp_ext load it too)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 3, 4, 5, 6), dtype=np.float32)
    grid = rng.uniform(-1.1, 1.1, (1, 2, 3, 4, 3)).astype(np.float32)
    cpu = ["CPUExecutionProvider"]
    ours = create_session(_warp_model(GRID_SAMPLE_3D.domain, GRID_SAMPLE_3D.name, GRID_SAMPLE_3D.version), cpu,
                          session_options(1, status.path))
    standard = create_session(_warp_model("", "GridSample", 20), cpu, session_options(1))
    got = ours.run(None, {"x": x, "grid": grid})[0]
    want = standard.run(None, {"x": x, "grid": grid})[0]
    assert np.abs(got).max() > 0.1
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Another name in the same domain is not the library's op: the identity is what matters.
    with pytest.raises(BundleError, match="ONNX Runtime cannot load"):
        create_session(_warp_model(GRID_SAMPLE_3D.domain, "GridSample3D_v2", GRID_SAMPLE_3D.version), cpu,
                       session_options(1, status.path))
