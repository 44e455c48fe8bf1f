"""Shared fixtures: exported model bundles with random weights, made once per test session.

SDK tests need real bundles but not trained weights; exporting is the slow part, so the graphs
of each (preset, seed) are exported at most once per session, and both flavours of bundle are
written from that one export. torch is imported only when a bundle is first made, so SDK-only
tests stay torch-free.
"""
from __future__ import annotations

import functools
from pathlib import Path

import pytest


@functools.lru_cache(maxsize=None)
def exported_graphs(preset: str = "tiny", seed: int = 0):
    """The exported (not yet written) graphs of ``random_model(preset, seed)``, cached."""
    from megaportraits_export import onnx_export

    model, config = onnx_export.random_model(preset, seed)
    return onnx_export.export_graphs(model, config, preset, {"weights": "random-init", "seed": seed})


def make_bundle(tmp_dir, preset: str = "tiny", portable: bool = False, seed: int = 0) -> Path:
    """Write a random-weight bundle of ``preset`` into a new directory under ``tmp_dir``.

    The weights are those of ``megaportraits_export.onnx_export.random_model(preset, seed)``,
    so a test can rebuild the very PyTorch model a bundle came from.
    """
    from megaportraits_export.onnx_export import write_bundle

    name = f"{preset}-{'portable' if portable else 'default'}-seed{seed}"
    return write_bundle(exported_graphs(preset, seed), Path(tmp_dir) / name, portable=portable)


@pytest.fixture(scope="session")
def bundle_factory(tmp_path_factory):
    """``bundle_factory(preset="tiny", portable=False, seed=0) -> Path``, cached per session.

    The bundles are shared: copy one before modifying it.
    """
    root = tmp_path_factory.mktemp("bundles")
    made: dict = {}

    def get(preset: str = "tiny", portable: bool = False, seed: int = 0) -> Path:
        key = (preset, portable, seed)
        if key not in made:
            made[key] = make_bundle(root, preset=preset, portable=portable, seed=seed)
        return made[key]

    return get


@pytest.fixture(scope="session")
def graphs_factory():
    """``graphs_factory(preset="tiny", seed=0) -> onnx_export.ExportedModel``, cached per session."""
    return exported_graphs


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_script():
    """Load a script of the repository (``tools/x.py``, ``benchmarks/x.py``) as a module: the
    scripts are not a package, and their tests call their functions and ``main`` directly."""
    import importlib.util

    loaded = {}

    def load(relative: str):
        if relative not in loaded:
            path = REPO_ROOT / relative
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            loaded[relative] = module
        return loaded[relative]

    return load
