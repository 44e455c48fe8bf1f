"""The one place that builds ONNX Runtime sessions: options, the custom-op library, the flavour.

The SDK, its benchmark package, the scripts in benchmarks/ and the exporter's verifier all make
their sessions here, so what is measured and verified is what the Animator runs:

* :func:`session_options`: ``threads`` intra-op threads (0: ONNX Runtime's choice), one
  inter-op thread, sequential execution, every graph optimisation, errors-only logging, and
  idle pool threads that sleep instead of spinning (see the comment inside), with the custom-op
  library registered when one is given;
* :func:`create_session`: a session for a file or serialized model, with one-line errors;
* :func:`custom_op_status`: whether the native GridSample3D library can be used here, and why not;
* :func:`choose_flavour`: which of a bundle's graphs run here (its custom-op graphs, or their
  portable twins of standard ops when the library is unusable): the portable fallback.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from .errors import BundleError, CustomOpError, MegaportraitsError, PortableFallbackWarning
from .schema import GRID_SAMPLE_3D


@dataclass(frozen=True)
class CustomOpStatus:
    """Whether the native custom-op library can be used here, and if not, why."""

    available: bool
    path: str | None = None
    reason: str | None = None


def custom_op_status() -> CustomOpStatus:
    """Find the op library built into this installation (never raises)."""
    try:
        from . import _native
    except ImportError as e:
        return CustomOpStatus(False, reason=f"the native extension is not part of this installation ({e})")
    try:
        return CustomOpStatus(True, path=str(_native.custom_ops_library()))
    except Exception as e:  # the library's own error says how to build it
        return CustomOpStatus(False, reason=one_line(e))


def require_custom_op_library() -> str:
    """The op library's path; :class:`CustomOpError` with the reason when it cannot be used."""
    status = custom_op_status()
    if not status.available:
        raise CustomOpError(f"the custom-op library cannot be used: {status.reason}")
    return status.path


def register_library(options: ort.SessionOptions, library: str) -> None:
    """A seam of its own so tests can simulate a library that fails to load."""
    options.register_custom_ops_library(library)


def session_options(threads: int = 0, custom_op_library: str | None = None, *,
                    profile_prefix: str | None = None) -> ort.SessionOptions:
    """The options of every session the project runs.

    ``custom_op_library``: a path to register (:class:`CustomOpError` when it will not load).
    ``profile_prefix``: turn on ONNX Runtime's profiler, writing to files with this prefix.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise MegaportraitsError(f"threads must be a whole number >= 0 (0: let ONNX Runtime choose), "
                                 f"not {threads!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the CLI's stderr is for the user
    # Each session owns an intra-op pool; a frame runs the driver then the generator, and a
    # spinning idle pool of one steals the cores the other needs (small256, 2 threads:
    # driver + generator 55 ms spinning vs 35 ms not). So idle threads sleep.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # ONNX Runtime's NhwcTransformer moves each int8 convolution to NHWC tensors and leaves
    # Transposes around every op without an NHWC kernel (the InstanceNormalizations between an
    # int8 graph's convolutions), some on float tensors; QLinearConv transposes its uint8 data
    # itself when left in NCHW. small256 int8 generator, 1 thread: 51.4 -> 48.4 ms. Float
    # graphs on the CPU have no op it converts (their convs take the NCHWc path).
    options.add_session_config_entry("optimization.disable_specified_optimizers", "NhwcTransformer")
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if custom_op_library is not None:
        try:
            register_library(options, custom_op_library)
        except Exception as e:
            raise CustomOpError(f"loading {custom_op_library} failed: {one_line(e)}") from None
    return options


def create_session(model: str | os.PathLike | bytes, providers: list,
                   options: ort.SessionOptions | None = None, *, what: str | None = None) -> ort.InferenceSession:
    """A session for a model file or serialized model. ONNX Runtime's refusal becomes one
    :class:`BundleError` line naming ``what`` (default: the file's name, or "the model")."""
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else model
    try:
        return ort.InferenceSession(source, sess_options=options if options is not None else session_options(),
                                    providers=list(providers))
    except MemoryError:
        raise  # not the model's fault: the CLI says "out of memory"
    except Exception as e:
        label = what or (repr(Path(source).name) if isinstance(source, str) else "the model")
        raise BundleError(f"ONNX Runtime cannot load {label}: {one_line(e)}") from None


# ---- which graphs of a bundle run here -----------------------------------------------------
@dataclass(frozen=True)
class Flavour:
    """The graphs that run here: ``portable`` twins or the custom-op graphs (with ``library``).

    ``fallback_reason``: why the custom-op graphs of a bundle that has them are not used (the
    portable fallback; :func:`warn_fallback` says so). ``problem``: nothing can run here.
    """

    portable: bool
    library: str | None = None
    fallback_reason: str | None = None
    problem: str | None = None


def choose_flavour(manifest, portable: bool = False) -> Flavour:
    """Decide from the manifest and this installation's op library (never raises)."""
    if manifest.custom_op is None:
        return Flavour(portable=True)
    if portable:
        if not manifest.has_portable:
            return Flavour(True, problem="portable graphs were requested but this bundle has none; "
                                         "re-export with --portable")
        return Flavour(portable=True)
    domain, version = manifest.custom_op.get("domain"), manifest.custom_op.get("version")
    if domain != GRID_SAMPLE_3D.domain or not isinstance(version, int) or version > GRID_SAMPLE_3D.version:
        return fall_back(manifest, f"it uses custom op {domain} v{version}, which this SDK does not provide")
    status = custom_op_status()
    if status.available:
        return Flavour(portable=False, library=status.path)
    return fall_back(manifest, status.reason)


def fall_back(manifest, reason: str) -> Flavour:
    """The portable twins instead of the custom-op graphs, or the problem when there are none."""
    if not manifest.has_portable:
        return Flavour(True, problem=f"this bundle needs the custom-op library, which cannot be used: {reason}; "
                                     "build it, or use a bundle exported with --portable")
    return Flavour(portable=True, fallback_reason=reason)


def warn_fallback(reason: str, stacklevel: int = 3) -> None:
    warnings.warn(f"custom-op library unavailable ({reason}); using the bundle's portable graphs (slower)",
                  PortableFallbackWarning, stacklevel=stacklevel)


def one_line(error: BaseException) -> str:
    """An exception's text on one line, at most 300 characters."""
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."
