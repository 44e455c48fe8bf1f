"""The native GridSample3D kernel: where its ONNX Runtime library is, and a numpy front end.

Both come from cpp_ext/ and are built into this package by ``pip install``: the custom-op
library ``libmegaportraits_ops.so`` (loaded by onnxruntime through
``SessionOptions.register_custom_ops_library``) and the pybind11 module ``_grid_sample_3d``
(the same kernel, called directly on numpy arrays). The library is optional at build time (it
needs ONNX Runtime's headers), so its absence is reported here, with the fix, when asked for.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

LIBRARY_NAME = "libmegaportraits_ops.so"
#: The oldest onnxruntime the library supports (its ORT API version 17).
MIN_ONNXRUNTIME = "1.17"


class NativeLibraryMissing(RuntimeError):
    """The custom-op library was not built into this installation."""


_HOW_TO_BUILD = (
    "it is built by `pip install` only when ONNX Runtime's C headers are found: run "
    "tools/fetch_onnxruntime_headers.sh in the source tree (or set ONNXRUNTIME_DIR to an onnxruntime "
    "release, or install libonnxruntime-dev), then reinstall with `pip install .` (see docs/building.md)"
)


def custom_ops_library() -> str:
    """Path of the ONNX Runtime custom-op library providing ``schema.GRID_SAMPLE_3D``
    (com.megaportraits::GridSample3D v1; cpp_ext/ort_custom_op.cc keeps the C++ copy).

    Register it with ``onnxruntime.SessionOptions().register_custom_ops_library(path)``; needs
    onnxruntime >= 1.17.

    Raises:
        NativeLibraryMissing: the library was not built into this installation; the message
            says how to build it.
    """
    path = Path(__file__).resolve().with_name(LIBRARY_NAME)
    if not path.is_file():
        raise NativeLibraryMissing(f"{path} does not exist: {_HOW_TO_BUILD}")
    return str(path)


def grid_sample_3d(
    x: np.ndarray,
    grid: np.ndarray,
    mode: str = "linear",
    padding_mode: str = "zeros",
    align_corners: bool | int = False,
    num_threads: int = 0,
) -> np.ndarray:
    """Sample volume ``x`` (N, C, D, H, W) at ``grid`` (N, D', H', W', 3) -> (N, C, D', H', W').

    Exactly ONNX GridSample-20 / ``torch.nn.functional.grid_sample`` on 5-D float32 input:
    ``grid[..., 0:3]`` is (x, y, z) normalised to [-1, 1]; ``mode`` is "linear" (trilinear) or
    "nearest" (half to even); ``padding_mode`` is "zeros", "border" or "reflection".
    Non-finite grid values are defined: with "zeros" they sample 0, with "border"/"reflection"
    +inf and NaN take the last voxel along that axis, -inf the first ("border") or last
    ("reflection"), as torch's CPU kernel does. Runs on ``num_threads`` threads (0: all cores)
    with the GIL released.

    Raises:
        TypeError: ``x`` or ``grid`` is not float32.
        ValueError: a wrong rank or shape, or an unknown mode / padding_mode.
    """
    from . import _grid_sample_3d  # the pybind11 module; always built by pip install

    return _grid_sample_3d.grid_sample_3d(
        np.ascontiguousarray(x),
        np.ascontiguousarray(grid),
        mode,
        padding_mode,
        int(bool(align_corners)),
        int(num_threads),
    )
