"""Optional packages the benchmark needs, each imported on first use with a clear message.

The SDK itself runs on numpy, onnxruntime and opencv; counting FLOPs (``onnx``) and drawing the
chart (``matplotlib``) are for people profiling it, so they live in the ``[dev]`` extra.
"""
from __future__ import annotations

import importlib

from ..errors import MegaportraitsError


class MissingDependency(MegaportraitsError, ImportError):
    """An optional package that one benchmark feature needs is not installed."""


def _require(module: str, feature: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependency(
            f"{feature} needs the '{module}' package, which is not installed; "
            f"install it with: pip install 'megaportraits[dev]'  (or: pip install {module})") from None


def require_onnx():
    """``onnx``: counting FLOPs and building the small graphs that measure the machine."""
    return _require("onnx", "counting FLOPs from ONNX graphs")


def require_pyplot():
    """``matplotlib.pyplot`` on a non-interactive backend, for the PNG chart."""
    matplotlib = _require("matplotlib", "the PNG chart (--png)")
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")
