"""megaportraits: one-shot neural head avatars on ONNX Runtime.

Animate one portrait (photo or painting) with the head pose and expression of a driving
video. This package is the runtime SDK: numpy, onnxruntime and opencv only, never torch.
"""
__version__ = "0.1.0"

from ._native import custom_ops_library, grid_sample_3d  # noqa: E402,F401  (native GridSample3D)
