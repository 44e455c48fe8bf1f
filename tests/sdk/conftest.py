"""Fixtures for the SDK tests: the toy bundle, drawn faces, generated videos."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from megaportraits.animator import Animator

sys.path.insert(0, str(Path(__file__).parent))

from hardening_inputs import make_media  # noqa: E402
from toy_bundle import make_toy_bundle  # noqa: E402


@pytest.fixture(scope="session")
def toy_bundle(tmp_path_factory) -> Path:
    """Portable-only toy bundle (custom_op None). Shared: copy before modifying."""
    return make_toy_bundle(tmp_path_factory.mktemp("toy") / "bundle")


@pytest.fixture(scope="session")
def toy_custom_bundle(tmp_path_factory) -> Path:
    """Toy bundle that declares the custom op and has portable twins."""
    return make_toy_bundle(tmp_path_factory.mktemp("toy_custom") / "bundle", custom_op=True)


@pytest.fixture(scope="session")
def toy_avatar_bundle(tmp_path_factory) -> Path:
    """Toy bundle (custom op declared, portable twins) whose generator reads the avatar inputs
    source_image, source_pose and source_expression."""
    return make_toy_bundle(tmp_path_factory.mktemp("toy_avatar") / "bundle", custom_op=True, avatar_inputs=True)


@pytest.fixture
def bundle_copy(tmp_path):
    """copy(bundle_dir) -> a private copy a test may tamper with."""
    def copy(src: Path) -> Path:
        dst = tmp_path / f"copy_{src.name}"
        shutil.copytree(src, dst)
        return dst
    return copy


@pytest.fixture(scope="session")
def tiny_bundle(bundle_factory) -> Path:
    """The real tiny preset with random weights, custom-op flavour with portable twins."""
    return bundle_factory("tiny", portable=False, seed=0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The hardening tests' inputs (hardening_inputs.make_media): a drawn source photo and driver videos."""
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="module")
def toy(toy_bundle):
    """An Animator on the toy bundle, CPU, one thread."""
    with Animator(toy_bundle, provider="cpu", threads=1) as a:
        yield a
