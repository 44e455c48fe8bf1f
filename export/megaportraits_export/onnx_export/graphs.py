"""The model's three graphs: which module each role exports, the inputs it is traced with, and the
export of all three (the slow part of an export, kept apart from writing a bundle)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from megaportraits.schema import DRIVER, GENERATOR, GRAPH_IO, MATTE_OUTPUT, SOURCE
from megaportraits_export.onnx_export.errors import ExportError
from megaportraits_export.onnx_export.group_norm import with_stable_group_norms
from megaportraits_export.onnx_export.tracing import export_graph

EXAMPLE_BATCH = 2  # torch.export specialises a batch of 1, so trace with 2 and mark it dynamic

log = logging.getLogger(__name__)


def graph_io(role: str, matte: bool = False) -> tuple:
    """(input names, output names) of a role's graph; a matte model's generator adds ``matte``."""
    io = GRAPH_IO[role]
    return io.inputs, io.outputs + ((MATTE_OUTPUT,) if matte and MATTE_OUTPUT in io.optional_outputs else ())


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


def role_modules(model: torch.nn.Module) -> dict:
    """role -> the module its graph is traced from (a matte model's generator as :class:`GeneratorGraph`)."""
    generator = GeneratorGraph(model.generator).eval() if model.config.matte else model.generator
    return {SOURCE: model.source_branch, DRIVER: model.driver_branch, GENERATOR: generator}


def example_inputs(model: torch.nn.Module, image_size: int, batch: int, seed: int) -> dict:
    """Random images for the branches, and the generator's inputs computed from them by the
    model itself, so every graph sees realistic values."""
    return {role: inputs for role, (inputs, _) in reference_run(model, image_size, batch, seed, False).items()}


def reference_run(model: torch.nn.Module, image_size: int, batch: int, seed: int, with_image: bool) -> dict:
    """role -> (inputs, PyTorch outputs) on random images (the generator's output only if asked)."""
    g = torch.Generator().manual_seed(seed)
    source_image = torch.rand(batch, 3, image_size, image_size, generator=g)
    driver_image = torch.rand(batch, 3, image_size, image_size, generator=g)
    with torch.no_grad():
        avatar = model.source_branch(source_image)
        motion = model.driver_branch(driver_image)
        generator_inputs = (avatar.canonical_volume, avatar.global_descriptor, motion.pose, motion.expression)
        rendering = role_modules(model)[GENERATOR](*generator_inputs) if with_image else None
    return {
        SOURCE: ((source_image,), tuple(avatar)),
        DRIVER: ((driver_image,), tuple(motion)),
        GENERATOR: (generator_inputs, rendering if isinstance(rendering, tuple) else (rendering,)),
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

    for role, result_type in ((SOURCE, AvatarState), (DRIVER, Motion)):
        if tuple(result_type._fields) != GRAPH_IO[role].outputs:
            raise ExportError(f"the {role} branch returns {result_type.__name__}{result_type._fields}, but the "
                              f"{role} graph's outputs are {GRAPH_IO[role].outputs}; update megaportraits.schema "
                              "and the model together")


def random_model(preset: str, seed: int):
    """A randomly initialised model of a preset; the same (preset, seed) gives the same weights."""
    from megaportraits_export.config import get_config
    from megaportraits_export.model import build_model

    config = get_config(preset)
    torch.manual_seed(seed)
    return build_model(config).eval(), config
