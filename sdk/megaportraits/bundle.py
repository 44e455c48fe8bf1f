"""Opening a model bundle: validate everything, then create one ONNX Runtime session per graph.

The order matters because a bundle is untrusted input. :func:`validate_bundle` checks the whole
directory before any session exists: the manifest is parsed and checked against this SDK's
contract (roles, tensor names, image format), every file's sha256 is checked, every graph file
is read at the protobuf level (its inputs and outputs must be the ones its manifest entry
declares, its image sizes the manifest's ``image_size``, its operators the ones the manifest's
``custom_op`` allows), and every external-data reference must be a plain file name inside the
bundle that the manifest hashes. Only then does :func:`open_bundle` let ONNX Runtime open a file.

``megaportraits info``, ``megaportraits benchmark``, the :class:`~megaportraits.Animator` (via
:func:`open_bundle`) and the exporter's verifier all call :func:`validate_bundle` (info and
benchmark with ``open_sessions``: ONNX Runtime opens the graphs too), so "ok" from one means
the others run the bundle.

Graphs that use the custom op need the native library; when it cannot be loaded, the bundle's
portable graphs (standard ONNX GridSample) are used instead, with a one-line
:class:`PortableFallbackWarning` (:mod:`megaportraits.sessions` decides).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort

from . import manifest as mf
from .errors import BundleError, CustomOpError
from .onnx_refs import ModelFileError, read_model
from .precision import choose_precisions
from .providers import resolve_providers
from .schema import BASE_MATTE, BASE_ROLES, ENHANCER, ENHANCER_IO, GRAPH_IO, GRID_SAMPLE_3D, IMAGE_TENSORS, LIBRARY_OPS
from .schema import AVATAR_GENERATOR_INPUTS, GENERATOR, MEGAPORTRAITS, SOURCE, STUDENT_ROLES
from .sessions import (CustomOpStatus, Flavour, choose_flavour, create_session, custom_op_status,  # noqa: F401
                       fall_back, session_options, warn_fallback)

DEMO_BUNDLE = Path(__file__).resolve().parent / "assets" / "demo_bundle"
# what the package may carry in assets/ all together (demo bundle, demo student, demo clips): the
# wheel is installed by every user, whether they run the demo or not
ASSET_BUDGET_BYTES = 40 * 1024 * 1024


# ---- where the bundle is -----------------------------------------------------------------
def demo_bundle_installed() -> bool:
    return (DEMO_BUNDLE / mf.MANIFEST_NAME).is_file()


def find_bundle(directory: str | Path | None = None) -> Path:
    """The bundle directory: ``directory``, or the bundled demo model when None. Raises the one
    :class:`BundleError` for a demo model that is not installed."""
    if directory is None:
        if not demo_bundle_installed():
            raise BundleError(f"the bundled demo model is not installed (expected in {DEMO_BUNDLE}); use an "
                              "exported bundle: megaportraits animate SOURCE DRIVER -o OUT --bundle DIR "
                              "(Animator(bundle=DIR) in Python)")
        return DEMO_BUNDLE
    return Path(directory).resolve()


# ---- validation --------------------------------------------------------------------------
@dataclass(frozen=True)
class BundleReport:
    """What :func:`validate_bundle` found. ``ok`` exactly when :func:`open_bundle` would open
    the bundle here (without ``open_sessions``: barring ONNX Runtime refusing a well-formed
    graph, which only a session can tell). ``problems`` are one-line messages, the first one
    the most basic; ``manifest`` is None when it could not be read; ``flavour`` says which
    graphs would run here."""

    directory: Path
    manifest: mf.Manifest | None = None
    problems: tuple = ()
    flavour: Flavour | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def runs_with(self) -> str:
        if not self.ok or self.flavour is None:
            return "nothing: the bundle is invalid"
        if self.manifest.custom_op is None:
            return "portable graphs (no custom op needed)"
        if not self.flavour.portable:
            return "custom-op graphs"
        if self.flavour.fallback_reason is not None:
            return "portable graphs (custom-op library unavailable)"
        return "portable graphs (requested)"

    def raise_for_problems(self) -> None:
        """Raise :class:`BundleError` with the first problem (and how many more there are)."""
        if self.problems:
            more = len(self.problems) - 1
            raise BundleError(self.problems[0] + (f" (and {more} more problem(s): megaportraits info "
                                                  "--bundle DIR lists them)" if more else ""))


def validate_bundle(directory: str | Path | None = None, portable: bool = False,
                    open_sessions: bool = False) -> BundleReport:
    """Check the bundle at ``directory`` (default: the bundled demo model) completely, without
    creating an inference session. Never raises for a bad bundle: the report lists what is
    wrong (``report.raise_for_problems()`` turns it into a :class:`BundleError`). ``portable``:
    the caller will ask for the portable graphs. ``open_sessions``: once everything else is
    right, also let ONNX Runtime open each graph that would run (on the CPU, then closed), so
    that "ok" covers a well-formed graph ONNX Runtime still refuses (``megaportraits info``)."""
    try:
        directory = find_bundle(directory)
        manifest = mf.load_manifest(directory)
    except BundleError as e:
        return BundleReport(Path(directory) if directory is not None else DEMO_BUNDLE, problems=(str(e),))
    problems = contract_problems(manifest)
    problems += _file_problems(directory, manifest)
    flavour = choose_flavour(manifest, portable)
    if flavour.problem:
        problems.append(flavour.problem)
    report = BundleReport(directory, manifest, tuple(dict.fromkeys(problems)), flavour)
    if open_sessions and report.ok:
        try:
            roles = STUDENT_ROLES if manifest.is_student else BASE_ROLES  # a student bundle: its one graph
            _, flavour = _open_sessions(report, ["CPUExecutionProvider"], threads=1, roles=roles)
            report = dataclasses.replace(report, flavour=flavour)
        except BundleError as e:
            report = dataclasses.replace(report, problems=(str(e),))
    return report


def contract_problems(manifest: mf.Manifest) -> list:
    """Where the manifest does not speak this SDK's language: image format, graph tensor names
    (its fields' types and ranges, image_size included, are the manifest module's check)."""
    problems = []
    if tuple(manifest.value_range) != (0.0, 1.0) or manifest.channel_order != "RGB":
        problems.append(f"bundle expects {manifest.channel_order} images in {list(manifest.value_range)}; "
                        "this SDK feeds RGB in [0, 1]: re-export the bundle")
    for role, io in manifest.graph_io.items():  # the family's tensor names
        graph = manifest.graphs[role]
        got_in = tuple(t.name for t in graph.inputs)
        got_out = tuple(t.name for t in graph.outputs)
        allowed_in = set(io.inputs) | set(io.optional_inputs)
        allowed_out = set(io.outputs) | set(io.optional_outputs)
        if (not set(io.inputs) <= set(got_in) or not set(got_in) <= allowed_in
                or not set(io.outputs) <= set(got_out) or not set(got_out) <= allowed_out):
            optional = [f"inputs {list(io.optional_inputs)}"] * bool(io.optional_inputs) + \
                       [f"outputs {list(io.optional_outputs)}"] * bool(io.optional_outputs)
            problems.append(f"the {role!r} graph has inputs {list(got_in)} and outputs {list(got_out)}, but this "
                            f"SDK needs {list(io.inputs)} -> {list(io.outputs)}"
                            + (f" (optionally also {' and '.join(optional)})" if optional else "")
                            + "; the bundle is incompatible")
    if not manifest.is_student and manifest.family == MEGAPORTRAITS:
        problems += _avatar_input_problems(manifest)
    if ENHANCER in manifest.graphs:
        problems += _enhancer_problems(manifest)
    return problems


def _avatar_input_problems(manifest: mf.Manifest) -> list:
    """Each optional generator input the generator declares is fed from the avatar
    (``schema.AVATAR_GENERATOR_INPUTS``): the source graph must output what it reads, with the
    same dtype and shape (the source crop excepted: the SDK feeds the crop it fed the source graph)."""
    problems = []
    source = {t.name: t for t in manifest.graphs[SOURCE].outputs + manifest.graphs[SOURCE].inputs}
    for spec in manifest.graphs[GENERATOR].inputs:
        origin = AVATAR_GENERATOR_INPUTS.get(spec.name)
        if origin is None or origin not in source:
            if origin is not None:
                problems.append(f"the 'generator' graph reads {spec.name!r} from the avatar, but the 'source' graph "
                                f"has no output {origin!r}; the bundle is incompatible")
            continue
        fed = source[origin]
        floats = {fed.dtype, spec.dtype} <= {"float32", "float16"}  # the SDK casts, as for the volume
        if (fed.dtype != spec.dtype and not floats) or not _same_shape(fed.shape, spec.shape):
            problems.append(f"the 'generator' graph's input {spec.name!r} is {spec.dtype} {list(spec.shape)}, but the "
                            f"'source' graph's {origin!r} that feeds it is {fed.dtype} {list(fed.shape)}; the bundle "
                            "is incompatible")
    return problems


def _enhancer_problems(manifest: mf.Manifest) -> list:
    """The enhancer reads what the generator renders (with the matte exactly when it has one)
    and returns the same tensors at model.enhanced_size."""
    graph = manifest.graphs[ENHANCER]
    matte = manifest.has_matte
    want_in = ENHANCER_IO.inputs + ((BASE_MATTE,) if matte else ())
    want_out = ENHANCER_IO.outputs + (ENHANCER_IO.optional_outputs if matte else ())
    got_in, got_out = tuple(t.name for t in graph.inputs), tuple(t.name for t in graph.outputs)
    if set(got_in) != set(want_in) or set(got_out) != set(want_out):
        return [f"the 'enhancer' graph has inputs {list(got_in)} and outputs {list(got_out)}, but for this "
                f"{'matte ' if matte else ''}model the SDK needs {list(want_in)} -> {list(want_out)}; "
                "the bundle is incompatible"]
    if manifest.enhanced_size <= manifest.image_size:
        return [f"manifest model.enhanced_size {manifest.enhanced_size} is not above image_size "
                f"{manifest.image_size}; an enhancer raises the resolution"]
    return []


def image_side(manifest: mf.Manifest, role: str, tensor: str) -> int | None:
    """The side a graph's image tensor has: the enhancer's outputs are at model.enhanced_size, every
    other image (the enhancer's inputs included) at model.image_size; None: not an image tensor."""
    if role == ENHANCER:
        if tensor in ENHANCER_IO.inputs or tensor == BASE_MATTE:
            return manifest.image_size
        return manifest.enhanced_size if tensor in ENHANCER_IO.outputs + ENHANCER_IO.optional_outputs else None
    if tensor not in IMAGE_TENSORS:
        return None
    outputs = {t.name for t in manifest.graphs[role].outputs}  # a family may size roles apart
    return manifest.output_size(role) if tensor in outputs else manifest.input_size(role)


def _file_problems(directory: Path, manifest: mf.Manifest) -> list:
    """Hashes of every file, then each graph file's contents against its manifest entry."""
    problems, intact = [], set()
    for name in manifest.files:
        try:
            mf.verify_files(directory, manifest, names=[name])
            intact.add(name)
        except BundleError as e:
            problems.append(str(e))
    read = set()  # a graph without the custom op is its own twin: read it once
    for role, spec in manifest.graphs.items():
        pairs = [(spec.file, spec.portable_file)] + [(f.file, f.portable_file) for f in spec.flavours]
        for name, twin in [(file, False) for file, _ in pairs] + [(twin, True) for _, twin in pairs]:
            if name is not None and name in intact and (role, name) not in read:
                read.add((role, name))
                problems += _graph_problems(directory, manifest, role, spec, name, twin=twin)
    return problems


def _graph_problems(directory: Path, manifest: mf.Manifest, role: str, spec: mf.GraphSpec, name: str,
                    twin: bool) -> list:
    path = directory / name
    try:
        refs, interface = read_model(path)
    except ModelFileError as e:
        return [f"bundle file {name!r} is not a valid ONNX model ({e})"]
    except OSError as e:
        return [f"cannot read bundle file {name!r} ({e.strerror or e})"]
    problems = []
    for location in dict.fromkeys(r.location for r in refs):
        try:
            mf.safe_name(location)
        except BundleError:
            problems.append(f"bundle file {name!r} refers to external data {location!r} outside the "
                            "bundle directory; the bundle is refused")
            continue
        if location not in manifest.files:
            problems.append(f"bundle file {name!r} uses external data {location!r} that the manifest "
                            "does not hash; the bundle is refused")
    declared = ({t.name: t.dtype for t in spec.inputs}, {t.name: t.dtype for t in spec.outputs})
    found = ({v.name: v.dtype for v in interface.inputs}, {v.name: v.dtype for v in interface.outputs})
    if declared != found:
        problems.append(f"the {role!r} graph file {name!r} has inputs {_names(found[0])} and outputs "
                        f"{_names(found[1])}, not what its manifest entry says ({_names(declared[0])} -> "
                        f"{_names(declared[1])}); the bundle is incompatible")
    specs = {t.name: t for t in spec.inputs + spec.outputs}
    for value in interface.inputs + interface.outputs:
        if value.name in specs and not _same_shape(specs[value.name].shape, value.shape):
            problems.append(f"the {role!r} graph file {name!r} gives {value.name} the shape {list(value.shape)}, "
                            f"but its manifest entry says {list(specs[value.name].shape)}; the bundle is incompatible")
    for value in interface.inputs + interface.outputs:
        expected = image_side(manifest, role, value.name)
        if expected is not None and value.shape and len(value.shape) == 4:
            side = [d for d in value.shape[2:] if isinstance(d, int)]
            if any(d != expected for d in side):
                key = "enhanced_size" if role == ENHANCER and expected != manifest.image_size else "image_size"
                problems.append(f"manifest {key} {expected} does not match the {role!r} graph "
                                f"file {name!r}, whose {value.name} is {value.shape[2]}x{value.shape[3]}; "
                                "the bundle is incompatible")
    problems += _operator_problems(manifest, role, name, interface, twin)
    return problems


def _operator_problems(manifest: mf.Manifest, role: str, name: str, interface, twin: bool) -> list:
    custom = sorted(op for domain, op in interface.ops if domain == GRID_SAMPLE_3D.domain)
    if not custom:
        return []
    if twin:
        return [f"the portable twin {name!r} of the {role!r} graph uses the custom op "
                f"{GRID_SAMPLE_3D.domain}::{custom[0]}, so it cannot run without the library; re-export the bundle"]
    if manifest.custom_op is None:
        return [f"the {role!r} graph file {name!r} uses the custom op {GRID_SAMPLE_3D.domain}::{custom[0]}, but "
                "the manifest's custom_op is null; re-export the bundle"]
    unknown = [op for op in custom if op not in {library_op.name for library_op in LIBRARY_OPS}]
    if unknown:
        return [f"the {role!r} graph file {name!r} uses {GRID_SAMPLE_3D.domain}::{unknown[0]}, which the "
                "custom-op library does not provide; the bundle is incompatible"]
    return []


def _same_shape(declared: tuple, found: tuple | None) -> bool:
    """Axis by axis: lengths equal where both are fixed, dynamic (named) where either is; a
    file that leaves its shape unknown agrees with anything."""
    if found is None:
        return True
    if len(declared) != len(found):
        return False
    return all(a == b if isinstance(a, int) and isinstance(b, int) else
               not isinstance(a, int) and not isinstance(b, int) or b is None for a, b in zip(declared, found))


def _names(tensors: dict) -> list:
    return sorted(tensors)


# ---- opening -----------------------------------------------------------------------------
@dataclass
class Bundle:
    """A validated bundle with its sessions open. ``portable`` tells which flavour runs."""

    directory: Path
    manifest: mf.Manifest
    providers: list
    portable: bool
    sessions: dict = field(default_factory=dict)
    custom_op_library: str | None = None
    precisions: dict = field(default_factory=dict)  # role -> the flavour that runs (absent: the main file's)

    @property
    def image_size(self) -> int:
        return self.manifest.image_size

    def precision(self, role: str) -> str:
        """The precision the ``role`` graph runs in."""
        return self.precisions.get(role) or self.manifest.graphs[role].precision

    def graph_path(self, role: str) -> Path:
        return self.directory / self.manifest.graph_file(role, portable=self.portable,
                                                         precision=self.precisions.get(role))


def open_bundle(directory: str | Path | None = None,
                provider: str = "auto",
                threads: int = 0,
                portable: bool = False,
                roles: tuple = BASE_ROLES,
                precision: str = "auto") -> Bundle:
    """Validate the bundle at ``directory`` (default: the bundled demo model) and open its
    sessions, each graph in the precision :func:`megaportraits.precision.choose_precisions`
    picks for the provider and ``precision`` (auto | fp32 | fp16 | int8). Raises
    :class:`BundleError` or :class:`ProviderError` with the reason."""
    report = validate_bundle(directory, portable=portable)
    report.raise_for_problems()
    providers = resolve_providers(provider)
    choice = choose_precisions(report.manifest, providers, precision,  # e.g. fp16 graphs on the CPU
                               custom_op_graphs=not report.flavour.portable, library=report.flavour.library)
    choice.raise_for_problem()
    bundle, flavour = _open_sessions(report, providers, threads, roles, choice.graphs)
    if flavour.fallback_reason is not None:
        warn_fallback(flavour.fallback_reason)
    return bundle


def _open_sessions(report: BundleReport, providers: list, threads: int, roles: tuple,
                   precisions: dict | None = None) -> tuple:
    """(the Bundle with a session per role, the flavour that runs: the portable twins when
    registering the op library fails). ``precisions``: role -> flavour (default: main files)."""
    manifest, flavour = report.manifest, report.flavour
    try:
        options = session_options(threads, flavour.library)
    except CustomOpError as e:
        flavour = fall_back(manifest, str(e))
        if flavour.problem:
            raise BundleError(flavour.problem) from None
        options = session_options(threads)
    bundle = Bundle(report.directory, manifest, providers, flavour.portable, custom_op_library=flavour.library,
                    precisions=dict(precisions or {}))
    for role in roles:
        bundle.sessions[role] = _open_session(bundle, role, options)
    return bundle, flavour


def open_role(bundle: Bundle, role: str, threads: int = 0) -> ort.InferenceSession:
    """Open one more graph of an open bundle (the enhancer, when the Animator runs it), with the
    same session options and flavour as the base graphs."""
    bundle.sessions[role] = _open_session(bundle, role, session_options(threads, bundle.custom_op_library))
    return bundle.sessions[role]


def _open_session(bundle: Bundle, role: str, options: ort.SessionOptions) -> ort.InferenceSession:
    path = bundle.graph_path(role)
    session = create_session(path, bundle.providers, options, what=f"the {role!r} graph {path.name!r}")
    io = bundle.manifest.graph_io.get(role)
    if io is not None:  # validated from the file already; ONNX Runtime must agree
        got_in = {i.name for i in session.get_inputs()}
        got_out = {o.name for o in session.get_outputs()}
        declared = {t.name for t in bundle.manifest.graphs[role].inputs}
        if got_in != declared or not set(io.inputs) <= got_in or not set(io.outputs) <= got_out:
            raise BundleError(f"the {role!r} graph file {path.name!r} has inputs {sorted(got_in)} and outputs "
                              f"{sorted(got_out)}, not what its manifest entry says; the bundle is incompatible")
    return session
