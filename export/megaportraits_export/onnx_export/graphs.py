"""The model's three graphs: which module each role exports, the inputs it is traced with, and the
export of all three (the slow part of an export, kept apart from writing a bundle)."""
from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass

import torch

from megaportraits.schema import (AVATAR_GENERATOR_INPUTS, DRIVER, GENERATOR, GRAPH_IO, MATTE_OUTPUT, SOURCE,
                                  SOURCE_IMAGE)
from megaportraits_export.onnx_export.errors import ExportError
from megaportraits_export.onnx_export.group_norm import with_stable_group_norms
from megaportraits_export.onnx_export.tracing import export_graph

EXAMPLE_BATCH = 2  # torch.export specialises a batch of 1, so trace with 2 and mark it dynamic

log = logging.getLogger(__name__)


def graph_io(role: str, matte: bool = False, avatar_inputs: tuple = ()) -> tuple:
    """(input names, output names) of a role's graph; a matte model's generator adds ``matte``.

    ``avatar_inputs``: the optional generator inputs the model reads (names of
    ``schema.AVATAR_GENERATOR_INPUTS``, :func:`avatar_generator_inputs`); the generator takes
    them after the motion, and the source graph outputs what they are fed from (the source
    crop excepted: the SDK holds the crop it fed in)."""
    io = GRAPH_IO[role]
    inputs, outputs = io.inputs, io.outputs
    if role == GENERATOR:
        inputs += tuple(avatar_inputs)
    if role == SOURCE:
        outputs += tuple(dict.fromkeys(AVATAR_GENERATOR_INPUTS[name] for name in avatar_inputs
                                       if AVATAR_GENERATOR_INPUTS[name] in io.optional_outputs))
    return inputs, outputs + ((MATTE_OUTPUT,) if matte and MATTE_OUTPUT in io.optional_outputs else ())


def avatar_generator_inputs(model: torch.nn.Module, avatar) -> tuple:
    """The names of the optional generator inputs ``model`` reads (a model with the source-pixel
    path: ``source_image``, ``source_pose``, ``source_expression``), in the order its generator
    takes them.

    The model says what its generator reads after the motion: ``avatar.source_pixels``
    (:meth:`megaportraits_export.model.AvatarState.source_pixels`, what ``model.reenact``
    passes); their names are the generator's parameters that follow ``expression``, and each
    must be one the bundle's vocabulary knows (``schema.AVATAR_GENERATOR_INPUTS``)."""
    extras = tuple(avatar.source_pixels)
    if not extras:
        return ()
    parameters = list(inspect.signature(model.generator.forward).parameters)
    base = len(GRAPH_IO[GENERATOR].inputs)
    names = tuple(parameters[base:base + len(extras)])
    unknown = [n for n in names if n not in AVATAR_GENERATOR_INPUTS]
    if len(names) != len(extras) or unknown:
        raise ExportError(f"the generator reads {len(extras)} avatar tensor(s) after the motion, as its parameters "
                          f"{names}, which megaportraits.schema.AVATAR_GENERATOR_INPUTS does not name "
                          f"({', '.join(AVATAR_GENERATOR_INPUTS)}); update the schema and the model together")
    return names


class SourceGraph(torch.nn.Module):
    """What the source graph of a model with avatar generator inputs computes: the avatar state's
    tensors named by ``outputs`` (the source image itself is not among them: the SDK feeds the
    generator the crop it fed this graph)."""

    def __init__(self, source_branch: torch.nn.Module, outputs: tuple):
        super().__init__()
        self.source_branch = source_branch
        self.outputs = tuple(outputs)

    def forward(self, source_image: torch.Tensor) -> tuple:
        avatar = self.source_branch(source_image)
        return tuple(getattr(avatar, name) for name in self.outputs)


class GeneratorGraph(torch.nn.Module):
    """What a matte model's generator graph computes: its RGBA rendering as two named outputs,
    ``image`` and ``matte``, so a runtime that knows nothing of mattes still finds ``image``.
    The generator's inputs pass through as they are (the motion, then any avatar inputs)."""

    def __init__(self, generator: torch.nn.Module):
        super().__init__()
        self.generator = generator

    def forward(self, canonical_volume: torch.Tensor, global_descriptor: torch.Tensor, pose: torch.Tensor,
                expression: torch.Tensor, *avatar_inputs: torch.Tensor) -> tuple:
        from megaportraits_export.model import split_matte

        return split_matte(self.generator(canonical_volume, global_descriptor, pose, expression, *avatar_inputs))


def role_modules(model: torch.nn.Module, avatar_inputs: tuple = ()) -> dict:
    """role -> the module its graph is traced from (a matte model's generator as
    :class:`GeneratorGraph`; with ``avatar_inputs`` the source branch as :class:`SourceGraph`)."""
    generator = GeneratorGraph(model.generator).eval() if model.config.matte else model.generator
    source = model.source_branch
    if avatar_inputs:
        source = SourceGraph(model.source_branch, graph_io(SOURCE, avatar_inputs=avatar_inputs)[1]).eval()
    return {SOURCE: source, DRIVER: model.driver_branch, GENERATOR: generator}


def example_inputs(model: torch.nn.Module, image_size: int, batch: int, seed: int) -> dict:
    """Random images for the branches, and the generator's inputs computed from them by the
    model itself, so every graph sees realistic values."""
    return {role: inputs for role, (inputs, _) in reference_run(model, image_size, batch, seed, False).items()}


def reference_run(model: torch.nn.Module, image_size: int, batch: int, seed: int, with_image: bool) -> dict:
    """role -> (inputs, PyTorch outputs) on random images (the generator's output only if asked),
    each in the order of the role's graph (:func:`model_graph_io`)."""
    g = torch.Generator().manual_seed(seed)
    source_image = torch.rand(batch, 3, image_size, image_size, generator=g)
    driver_image = torch.rand(batch, 3, image_size, image_size, generator=g)
    with torch.no_grad():
        avatar = model.source_branch(source_image)
        motion = model.driver_branch(driver_image)
        avatar_inputs = avatar_generator_inputs(model, avatar)
        generator_inputs = (avatar.canonical_volume, avatar.global_descriptor, motion.pose, motion.expression,
                            *avatar.source_pixels)
        rendering = role_modules(model, avatar_inputs)[GENERATOR](*generator_inputs) if with_image else None
    source_outputs = graph_io(SOURCE, avatar_inputs=avatar_inputs)[1]
    return {
        SOURCE: ((source_image,), tuple(getattr(avatar, name) for name in source_outputs)),
        DRIVER: ((driver_image,), tuple(motion)),
        GENERATOR: (generator_inputs, rendering if isinstance(rendering, tuple) else (rendering,)),
    }


def model_graph_io(model: torch.nn.Module) -> dict:
    """role -> (input names, output names) of the graphs of ``model`` (matte, avatar inputs)."""
    avatar_inputs = model_avatar_inputs(model)
    return {role: graph_io(role, bool(model.config.matte), avatar_inputs) for role in (SOURCE, DRIVER, GENERATOR)}


def model_avatar_inputs(model: torch.nn.Module) -> tuple:
    """:func:`avatar_generator_inputs` of ``model``, found on a small random source image."""
    size = int(model.config.image_size)
    with torch.no_grad():
        avatar = model.source_branch(torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)))
    return avatar_generator_inputs(model, avatar)


@dataclass
class ExportedModel:
    """The graphs of one model, exported (custom-op flavour) but not yet written: the slow
    part of an export, from which bundles of either flavour are written."""

    programs: dict  # role -> torch.onnx.ONNXProgram
    preset: str
    image_size: int
    provenance: dict
    matte: bool = False  # the generator graph also outputs the matte
    avatar_inputs: tuple = ()  # the optional generator inputs the model reads (graph_io)

    def graph_io(self, role: str) -> tuple:
        """(input names, output names) of this model's ``role`` graph."""
        return graph_io(role, self.matte, self.avatar_inputs)


def export_graphs(model: torch.nn.Module, config, preset: str, provenance: dict) -> ExportedModel:
    """Fold ``model`` for deployment (on a copy) and export its source, driver and generator."""
    from megaportraits_export.model import folded_for_export

    _check_output_order()
    deploy = with_stable_group_norms(folded_for_export(model.eval())).eval()
    inputs = example_inputs(deploy, config.image_size, EXAMPLE_BATCH, seed=0)
    avatar_inputs = model_avatar_inputs(deploy)
    programs = {}
    for role, module in role_modules(deploy, avatar_inputs).items():
        started = time.perf_counter()
        programs[role] = export_graph(module, inputs[role], *graph_io(role, config.matte, avatar_inputs))
        log.info("exported the %s graph in %.1f s", role, time.perf_counter() - started)
    return ExportedModel(programs=programs, preset=preset, image_size=int(config.image_size),
                         provenance=dict(provenance), matte=bool(config.matte), avatar_inputs=avatar_inputs)


def _check_output_order() -> None:
    """The ONNX outputs are named by position; make sure the branches return them in that order.
    The avatar state may carry more than the source graph's required outputs: what the
    generator's avatar inputs read (``schema.SOURCE_OPTIONAL_OUTPUTS``) and the source image."""
    from megaportraits_export.model import AvatarState, Motion

    for role, result_type in ((SOURCE, AvatarState), (DRIVER, Motion)):
        io = GRAPH_IO[role]
        fields = tuple(result_type._fields)
        extra = fields[len(io.outputs):]
        if fields[:len(io.outputs)] != io.outputs or not set(extra) <= set(io.optional_outputs) | {SOURCE_IMAGE}:
            raise ExportError(f"the {role} branch returns {result_type.__name__}{result_type._fields}, but the "
                              f"{role} graph's outputs are {io.outputs}"
                              + (f" (optionally also {io.optional_outputs})" if io.optional_outputs else "")
                              + "; update megaportraits.schema and the model together")


def random_model(preset: str, seed: int):
    """A randomly initialised model of a preset; the same (preset, seed) gives the same weights."""
    from megaportraits_export.config import get_config
    from megaportraits_export.model import build_model

    config = get_config(preset)
    torch.manual_seed(seed)
    return build_model(config).eval(), config
