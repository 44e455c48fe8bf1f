"""megaportraits: one-shot neural head avatars on ONNX Runtime.

Animate one portrait (photo or painting) with the head pose and expression of a driving
video. This package is the runtime SDK: numpy, onnxruntime, opencv and PyAV only, never torch.

    from megaportraits import Animator
    with Animator("bundle_dir") as animator:
        avatar = animator.prepare("portrait.jpg")
        animator.animate_video(avatar, "driver.mp4", "out.mp4")

The heavy modules load on first use, so ``import megaportraits`` stays quick.
"""
__version__ = "0.1.0"

_LAZY = {
    "Animator": "animator", "AnimatorOptions": "animator", "Avatar": "animator", "Performance": "animator",
    "MegaportraitsError": "errors", "InputError": "errors", "NoFaceError": "errors", "BundleError": "errors",
    "ProviderError": "errors", "PortableFallbackWarning": "errors", "AnimationInterrupted": "errors",
    "CustomOpError": "errors", "validate_bundle": "bundle", "BundleReport": "bundle",
    "FaceDetector": "faces", "HaarFaceDetector": "faces",
    "grid_sample_3d": "_native",
}
__all__ = ["__version__", "custom_ops_library", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'megaportraits' has no attribute {name!r}")


def custom_ops_library() -> str:
    """Path of the GridSample3D custom-op library; raises an error saying how to build it."""
    from ._native import custom_ops_library as find

    return find()
