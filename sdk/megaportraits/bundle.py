"""Opening a model bundle: validate everything, then create one ONNX Runtime session per graph.

The order matters because a bundle is untrusted input. Before any session exists: the manifest
is parsed and checked against this SDK's contract (roles, tensor names), every file's sha256 is
checked, and every graph is scanned for external-data references, each of which must be a plain
file name inside the bundle that the manifest hashes. Only then does ONNX Runtime open a file.

Graphs that use the custom op (``com.megaportraits::GridSample3D``) need the native library;
when it cannot be loaded, the bundle's portable graphs (standard ONNX GridSample) are used
instead, with a one-line :class:`PortableFallbackWarning`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

from . import manifest as mf
from .errors import BundleError, PortableFallbackWarning
from .onnx_refs import ModelFileError, external_data_refs
from .providers import resolve_providers

DEMO_BUNDLE = Path(__file__).resolve().parent / "assets" / "demo_bundle"
GRAPH_IO = {  # docs/interfaces.md: the names every bundle's graphs must use
    "source": (("source_image",), ("canonical_volume", "global_descriptor", "pose", "expression")),
    "driver": (("driver_image",), ("pose", "expression")),
    "generator": (("canonical_volume", "global_descriptor", "pose", "expression"), ("image",)),
}


@dataclass(frozen=True)
class CustomOpStatus:
    """Whether the native custom-op library can be used here, and if not, why."""

    available: bool
    path: str | None = None
    reason: str | None = None


def custom_op_status() -> CustomOpStatus:
    try:
        from . import _native
    except ImportError as e:
        return CustomOpStatus(False, reason=f"the native extension is not part of this installation ({e})")
    try:
        return CustomOpStatus(True, path=str(_native.custom_ops_library()))
    except Exception as e:  # the library's own error says how to build it
        return CustomOpStatus(False, reason=_one_line(e))


@dataclass
class Bundle:
    """A validated bundle with its sessions open. ``portable`` tells which flavour runs."""

    directory: Path
    manifest: mf.Manifest
    providers: list
    portable: bool
    sessions: dict = field(default_factory=dict)
    custom_op_library: str | None = None

    @property
    def image_size(self) -> int:
        return self.manifest.image_size

    def graph_path(self, role: str) -> Path:
        return self.directory / self.manifest.graph_file(role, portable=self.portable)


def open_bundle(directory: str | Path | None = None,
                provider: str = "auto",
                threads: int = 0,
                portable: bool = False,
                roles: tuple = ("source", "driver", "generator")) -> Bundle:
    """Validate the bundle at ``directory`` (default: the bundled demo model) and open its
    sessions. Raises :class:`BundleError` or :class:`ProviderError` with the reason."""
    directory = _bundle_directory(directory)
    manifest = _load_manifest(directory)
    check_contract(manifest)
    providers = resolve_providers(provider)
    use_portable, library = _choose_flavour(manifest, portable)
    bundle = Bundle(directory, manifest, providers, use_portable, custom_op_library=library)
    _verify(bundle, roles)
    options = _session_options(threads)
    if library is not None and not _register(options, library, manifest):
        bundle.portable, bundle.custom_op_library = True, None
        _verify(bundle, roles)
        options = _session_options(threads)
    for role in roles:
        bundle.sessions[role] = _open_session(bundle, role, options)
    return bundle


def _bundle_directory(directory) -> Path:
    if directory is None:
        if not (DEMO_BUNDLE / mf.MANIFEST_NAME).is_file():
            raise BundleError(f"the bundled demo model is not installed (expected in {DEMO_BUNDLE}); "
                              "pass a bundle directory with --bundle DIR (Animator(bundle=DIR))")
        return DEMO_BUNDLE
    return Path(directory).resolve()


def _load_manifest(directory: Path) -> mf.Manifest:
    try:
        return mf.load_manifest(directory)
    except mf.BundleError as e:
        raise BundleError(str(e)) from None
    except (TypeError, ValueError, AttributeError) as e:  # wrong JSON types inside the manifest
        raise BundleError(f"{directory / mf.MANIFEST_NAME} is malformed ({e})") from None


def check_contract(manifest: mf.Manifest) -> None:
    """The bundle speaks this SDK's language: image format and graph tensor names."""
    if not isinstance(manifest.image_size, int) or not 16 <= manifest.image_size <= 4096:
        raise BundleError(f"manifest image_size {manifest.image_size!r} is not a size this SDK supports")
    if tuple(manifest.value_range) != (0.0, 1.0) or manifest.channel_order != "RGB":
        raise BundleError(f"bundle expects {manifest.channel_order} images in {list(manifest.value_range)}; "
                          "this SDK feeds RGB in [0, 1]: re-export the bundle")
    for role, (inputs, outputs) in GRAPH_IO.items():
        graph = manifest.graphs[role]
        got_in = tuple(t.name for t in graph.inputs)
        got_out = tuple(t.name for t in graph.outputs)
        if set(got_in) != set(inputs) or not set(outputs) <= set(got_out):
            raise BundleError(f"the {role!r} graph has inputs {list(got_in)} and outputs {list(got_out)}, "
                              f"but this SDK needs {list(inputs)} -> {list(outputs)}; the bundle is incompatible")


def _choose_flavour(manifest: mf.Manifest, portable: bool) -> tuple[bool, str | None]:
    """(use the portable graphs?, custom-op library path or None)."""
    if manifest.custom_op is None:
        return True, None
    if portable:
        if not manifest.has_portable:
            raise BundleError("portable graphs were requested but this bundle has none; re-export with --portable")
        return True, None
    domain, version = manifest.custom_op.get("domain"), manifest.custom_op.get("version")
    if domain != mf.CUSTOM_OP_DOMAIN or not isinstance(version, int) or version > mf.CUSTOM_OP_VERSION:
        reason = f"it uses custom op {domain} v{version}, which this SDK does not provide"
    else:
        status = custom_op_status()
        if status.available:
            return False, status.path
        reason = status.reason
    return _fall_back(manifest, reason), None


def _fall_back(manifest: mf.Manifest, reason: str) -> bool:
    if not manifest.has_portable:
        raise BundleError(f"this bundle needs the custom-op library, which cannot be used: {reason}; "
                          "build it, or use a bundle exported with --portable")
    warnings.warn(f"custom-op library unavailable ({reason}); using the bundle's portable graphs (slower)",
                  PortableFallbackWarning, stacklevel=4)
    return True


def _register(options: ort.SessionOptions, library: str, manifest: mf.Manifest) -> bool:
    """Register the op library; on failure, fall back (True if registered)."""
    try:
        register_library(options, library)
        return True
    except Exception as e:
        _fall_back(manifest, f"loading {library} failed: {_one_line(e)}")
        return False


def register_library(options: ort.SessionOptions, library: str) -> None:
    """A seam of its own so tests can simulate a library that fails to load."""
    options.register_custom_ops_library(library)


def _verify(bundle: Bundle, roles: tuple) -> None:
    """Hashes of every file in use, and containment of every external-data reference."""
    manifest = bundle.manifest
    graph_files = [manifest.graph_file(role, portable=bundle.portable) for role in roles]
    try:
        mf.verify_files(bundle.directory, manifest, names=list(dict.fromkeys(graph_files)))
    except mf.BundleError as e:
        raise BundleError(str(e)) from None
    for name in dict.fromkeys(graph_files):
        try:
            refs = external_data_refs(bundle.directory / name)
        except ModelFileError as e:
            raise BundleError(f"bundle file {name!r} is not a valid ONNX model ({e})") from None
        for location in dict.fromkeys(r.location for r in refs):
            try:
                mf.safe_name(location)
            except mf.BundleError:
                raise BundleError(f"bundle file {name!r} refers to external data {location!r} outside the "
                                  "bundle directory; the bundle is refused") from None
            if location not in manifest.files:
                raise BundleError(f"bundle file {name!r} uses external data {location!r} that the manifest "
                                  "does not hash; the bundle is refused")
            try:
                mf.verify_files(bundle.directory, manifest, names=[location])
            except mf.BundleError as e:
                raise BundleError(str(e)) from None


def _session_options(threads: int) -> ort.SessionOptions:
    if not isinstance(threads, int) or threads < 0:
        raise BundleError(f"threads must be a whole number >= 0 (0: let ONNX Runtime choose), not {threads!r}")
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
    return options


def _open_session(bundle: Bundle, role: str, options: ort.SessionOptions) -> ort.InferenceSession:
    path = bundle.graph_path(role)
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=bundle.providers)
    except Exception as e:
        raise BundleError(f"ONNX Runtime cannot load the {role!r} graph {path.name!r}: {_one_line(e)}") from None
    inputs, outputs = GRAPH_IO[role]
    got_in = {i.name for i in session.get_inputs()}
    got_out = {o.name for o in session.get_outputs()}
    if got_in != set(inputs) or not set(outputs) <= got_out:
        raise BundleError(f"the {role!r} graph file {path.name!r} has inputs {sorted(got_in)} and outputs "
                          f"{sorted(got_out)}, not what its manifest entry says; the bundle is incompatible")
    return session


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."
