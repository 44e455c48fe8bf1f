"""The model bundle's manifest: the one definition of its schema.

A bundle is a directory holding ``manifest.json`` and the ONNX graphs it names. The exporter
(``megaportraits_export``) writes manifests with :func:`write_manifest`; the SDK reads them
with :func:`load_manifest`. Keeping both sides on this module means the format has a single
source of truth, and a bundle that passes :func:`verify_files` is exactly what was exported.

A bundle is untrusted input: every file name in it is checked to stay inside the bundle's
directory before anything is opened.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError
from .schema import STUDENT, STUDENT_IO, STUDENT_ROLES, BASE_ROLES, ENHANCER, LATER_ROLES, MATTE_OUTPUT, ROLES, SYNTHETIC_DATA
from .schema import FAMILIES, FAMILY_GRAPH_IO, MEGAPORTRAITS, MOTION_REPRESENTATIONS

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
DTYPES = ("float32", "float16", "int64")
PRECISIONS = ("fp32", "fp16", "int8")  # the lowest precision any graph of the bundle has
MANIFEST_ROLES = ROLES + LATER_ROLES  # every role a manifest may name
IMAGE_SIZES = (16, 4096)  # the smallest and largest image side this SDK supports
_MAX_DIM = 1 << 20  # no tensor axis of a real bundle is longer
_MAX_OPSET = 1000
_MAX_MANIFEST_BYTES = 16 << 20
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one graph input or output. Dynamic axes are strings ("batch")."""

    name: str
    shape: tuple
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "TensorSpec":
        _require(d, ("name", "shape", "dtype"), where, "a tensor {name, shape, dtype}")
        shape = _list(d["shape"], f"{where}.shape", "a list of axis lengths")
        for i, dim in enumerate(shape):
            if isinstance(dim, str):
                if not dim:
                    raise _wrong(f"{where}.shape[{i}]", dim, "a whole number or the name of a dynamic axis")
            else:
                _whole(dim, f"{where}.shape[{i}]", 0, _MAX_DIM, "an axis length or the name of a dynamic axis")
        return cls(name=_text(d["name"], f"{where}.name"), shape=tuple(shape),
                   dtype=_one_of(d["dtype"], f"{where}.dtype", DTYPES))


@dataclass(frozen=True)
class GraphFlavour:
    """Another precision of a graph, carried beside its main file: the same inputs and outputs
    (float32), its own file and portable twin (``export --precision fp32,int8``)."""

    precision: str
    file: str
    portable_file: str | None = None

    def to_dict(self) -> dict:
        return {"file": self.file, **({"portable_file": self.portable_file} if self.portable_file else {})}


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the bundle, and optionally its portable twin (standard ops only).
    ``precision``: fp32, fp16 or int8 (both files have the same; inputs and outputs stay float32).
    ``flavours``: the same graph in other precisions (:class:`GraphFlavour`), which the SDK picks
    from by provider and option (:mod:`megaportraits.precision`); a bundle without them (every
    bundle written before them) has one flavour per graph, its main file."""

    file: str
    inputs: tuple
    outputs: tuple
    portable_file: str | None = None
    precision: str = "fp32"
    flavours: tuple = ()  # GraphFlavour, none of them of ``precision``

    @property
    def precisions(self) -> tuple:
        """Every precision this graph is carried in, its main file's first."""
        return (self.precision,) + tuple(f.precision for f in self.flavours)

    def files_of(self, precision: str | None = None) -> tuple:
        """(file, portable_file) of the graph in ``precision`` (None: the main file's)."""
        if precision is None or precision == self.precision:
            return self.file, self.portable_file
        for flavour in self.flavours:
            if flavour.precision == precision:
                return flavour.file, flavour.portable_file
        raise BundleError(f"this bundle has no {precision} flavour of the graph {self.file!r} "
                          f"(it has {', '.join(self.precisions)})")

    def all_files(self) -> list:
        """Every graph file of every flavour (portable twins included)."""
        return [f for pair in [(self.file, self.portable_file)] + [(f.file, f.portable_file) for f in self.flavours]
                for f in pair if f]

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "GraphSpec":
        _require(d, ("file", "inputs", "outputs"), where, "a graph {file, inputs, outputs}")
        portable = d.get("portable_file")
        specs = {}
        for side in ("inputs", "outputs"):
            tensors = _list(d[side], f"{where}.{side}", "a list of tensors")
            specs[side] = tuple(TensorSpec.from_dict(t, f"{where}.{side}[{i}]") for i, t in enumerate(tensors))
            names = [t.name for t in specs[side]]
            if len(set(names)) != len(names):
                raise BundleError(f"manifest key '{where}.{side}' names a tensor twice ({names}); "
                                  "expected distinct names")
        precision = _one_of(d.get("precision", "fp32"), f"{where}.precision", PRECISIONS)
        return cls(file=_text(d["file"], f"{where}.file"), inputs=specs["inputs"], outputs=specs["outputs"],
                   portable_file=None if portable is None else _text(portable, f"{where}.portable_file"),
                   precision=precision, flavours=_flavours(d.get("flavours", {}), f"{where}.flavours", precision))

    def to_dict(self) -> dict:
        d = {
            "file": self.file,
            "inputs": [_tensor_dict(t) for t in self.inputs],
            "outputs": [_tensor_dict(t) for t in self.outputs],
        }
        if self.portable_file:
            d["portable_file"] = self.portable_file
        if self.precision != "fp32":  # fp32 manifests stay as they were
            d["precision"] = self.precision
        if self.flavours:
            d["flavours"] = {f.precision: f.to_dict() for f in self.flavours}
        return d


def _flavours(value: Any, where: str, main: str) -> tuple:
    """``{precision: {file, portable_file?}}`` -> GraphFlavour tuple, in PRECISIONS order."""
    if not isinstance(value, dict):
        raise _wrong(where, value, "an object mapping precision -> {file, portable_file}")
    flavours = []
    for precision in value:
        _one_of(precision, f"{where} (a precision)", PRECISIONS)
        if precision == main:
            raise BundleError(f"manifest key '{where}.{precision}' repeats the graph's own precision; a flavour "
                              "is another precision of the graph")
    for precision in (p for p in PRECISIONS if p in value):
        entry = value[precision]
        _require(entry, ("file",), f"{where}.{precision}", "a flavour {file, portable_file}")
        portable = entry.get("portable_file")
        flavours.append(GraphFlavour(precision, _text(entry["file"], f"{where}.{precision}.file"),
                                     None if portable is None else _text(portable, f"{where}.{precision}.portable_file")))
    return tuple(flavours)


@dataclass(frozen=True)
class CropSpec:
    """How a role's input is cut from a frame around the face (LivePortrait's convention): the
    crop's side is ``scale`` times the face's size, its centre moved by ``vx_ratio`` and
    ``vy_ratio`` times the side (+x right, +y down: a negative ``vy_ratio`` takes in the hair)."""

    scale: float
    vx_ratio: float = 0.0
    vy_ratio: float = 0.0

    def to_dict(self) -> dict:
        return {"scale": self.scale, "vx_ratio": self.vx_ratio, "vy_ratio": self.vy_ratio}


@dataclass(frozen=True)
class RoleSpec:
    """Per role, what a family may set apart from the bundle's ``image_size``: the side of the
    image the graph reads and of the image it renders, and how its input is cropped."""

    input_size: int | None = None
    output_size: int | None = None
    crop: CropSpec | None = None

    def to_dict(self) -> dict:
        d = {k: v for k, v in (("input_size", self.input_size), ("output_size", self.output_size)) if v is not None}
        if self.crop is not None:
            d["crop"] = self.crop.to_dict()
        return d


@dataclass
class Manifest:
    """Everything the SDK needs to run a bundle, and nothing it has to guess."""

    model_name: str
    preset: str
    image_size: int
    graphs: dict  # role -> GraphSpec
    files: dict  # file name -> sha256 hex digest
    opset: int = 20
    custom_op: dict | None = None  # {"domain": ..., "version": ...}; None: portable-only bundle
    precision: str = "fp32"
    value_range: tuple = (0.0, 1.0)
    channel_order: str = "RGB"
    producer: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # The model family (megaportraits.schema.FAMILIES): which networks made the bundle, so which
    # tensor names its graphs have and how the SDK composes motion between them.
    family: str = MEGAPORTRAITS
    roles: dict = field(default_factory=dict)  # role -> RoleSpec, where a family needs one
    # a distilled student's bundle (its one graph is 'student'): its avatars, in avatar_index
    # order, each {name, image, crop: [x, y, side], backdrop: file or null}, and the teacher it
    # was distilled from {manifest_sha256, model_name, preset}; None for any other bundle
    student: dict | None = None
    # the side of the enhancer's output (model.enhanced_size) when the bundle has an enhancer
    # graph; image_size stays the base model's side
    enhanced_size: int | None = None

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format_version": self.format_version,
            "model": {
                "name": self.model_name,
                "preset": self.preset,
                "image_size": self.image_size,
                "value_range": list(self.value_range),
                "channel_order": self.channel_order,
                "layout": "NCHW",
                "family": self.family,
                "motion": MOTION_REPRESENTATIONS[self.family],
                **({"enhanced_size": self.enhanced_size} if self.enhanced_size is not None else {}),
            },
            "opset": self.opset,
            "custom_op": self.custom_op,
            "precision": self.precision,
            "graphs": {role: g.to_dict() for role, g in self.graphs.items()},
            "files": dict(self.files),
            "producer": dict(self.producer),
            "provenance": dict(self.provenance),
            **({"roles": {role: r.to_dict() for role, r in self.roles.items()}} if self.roles else {}),
            **({"student": self.student} if self.student is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Any) -> "Manifest":
        """Check every field's presence, type and range; :class:`BundleError` names the first
        key that is wrong, what it holds and what is expected. Unknown keys are ignored."""
        if not isinstance(d, dict):
            raise _wrong("(the whole file)", d, "a JSON object")
        if "format_version" not in d:
            raise BundleError("manifest.json has no format_version; expected a whole number (this SDK reads "
                              f"{FORMAT_VERSION})")
        version = _whole(d["format_version"], "format_version", None, None, "a whole number")
        if version > FORMAT_VERSION:
            raise BundleError(
                f"bundle format version {version} is newer than this SDK reads "
                f"(up to {FORMAT_VERSION}); upgrade megaportraits: pip install -U megaportraits")
        if version < 1:
            raise BundleError(f"bundle format version {version} is not valid; expected 1 to {FORMAT_VERSION}")
        _require(d, ("model", "graphs", "files", "opset"), "(the whole file)",
                 "an object with format_version, model, graphs, files and opset")
        model = d["model"]
        _require(model, ("name", "preset", "image_size"), "model", "an object {name, preset, image_size, ...}")
        graphs = _graphs(d["graphs"])
        m = cls(
            model_name=_text(model["name"], "model.name"),
            preset=_text(model["preset"], "model.preset"),
            image_size=_whole(model["image_size"], "model.image_size", *IMAGE_SIZES, "an image side in pixels"),
            graphs=graphs, files=_files(d["files"]),
            opset=_whole(d["opset"], "opset", 1, _MAX_OPSET, "an ONNX opset version"),
            custom_op=_custom_op(d.get("custom_op")),
            precision=_one_of(d.get("precision", "fp32"), "precision", PRECISIONS),
            value_range=_value_range(model.get("value_range", [0.0, 1.0])),
            channel_order=_text(model.get("channel_order", "RGB"), "model.channel_order"),
            producer=_object(d.get("producer", {}), "producer"),
            provenance=_object(d.get("provenance", {}), "provenance"),
            format_version=version,
            family=_family(model),
            roles=_roles(d.get("roles", {}), graphs),
            student=_student(d.get("student"), graphs),
            enhanced_size=None if model.get("enhanced_size") is None else _whole(
                model["enhanced_size"], "model.enhanced_size", *IMAGE_SIZES, "the enhancer's output side in pixels"),
        )
        if (m.enhanced_size is None) != (ENHANCER not in graphs):
            raise BundleError("manifest: model.enhanced_size and an 'enhancer' graph come together (the "
                              "enhancer's output side); give both or neither")
        if "layout" in model and model["layout"] != "NCHW":
            raise _wrong("model.layout", model["layout"], "the string 'NCHW'")
        m.check_names()
        return m

    # ---- consistency ---------------------------------------------------------------------
    def check_names(self) -> None:
        """Every graph file is hashed, and every hashed name is a plain name inside the bundle."""
        for name in self.files:
            safe_name(name)
        for role, g in self.graphs.items():
            for f in g.all_files():
                safe_name(f)
                if f not in self.files:
                    raise BundleError(f"manifest: graph {role!r} file {f!r} has no sha256 entry in 'files'")
        for avatar in (self.student or {}).get("avatars", ()):
            for f in filter(None, (avatar["image"], avatar.get("backdrop"))):
                if f not in self.files:
                    raise BundleError(f"manifest: avatar {avatar['name'][:60]!r} file {f!r} has no sha256 entry "
                                      "in 'files'")

    def graph_file(self, role: str, portable: bool = False, precision: str | None = None) -> str:
        """The file of the ``role`` graph: its portable twin when asked, in ``precision`` (None:
        the main file's precision; see :attr:`GraphSpec.flavours`)."""
        file, twin = self.graphs[role].files_of(precision)
        if portable and self.custom_op is not None:
            if not twin:
                raise BundleError(f"bundle has no portable variant of the {role!r} graph")
            return twin
        return file

    @property
    def graph_io(self) -> dict:
        """role -> GraphIO: the tensor names of this family's graphs (a student bundle: its one graph)."""
        if self.is_student:
            return {STUDENT: STUDENT_IO}
        return FAMILY_GRAPH_IO[self.family]

    def input_size(self, role: str) -> int:
        """Side of the image the role's graph reads (default: ``image_size``)."""
        spec = self.roles.get(role)
        return spec.input_size if spec is not None and spec.input_size is not None else self.image_size

    def output_size(self, role: str) -> int:
        """Side of the image the role's graph renders (default: ``image_size``; the enhancer's:
        ``enhanced_size``)."""
        spec = self.roles.get(role)
        if spec is not None and spec.output_size is not None:
            return spec.output_size
        return self.enhanced_size if role == ENHANCER and self.enhanced_size is not None else self.image_size

    def crop(self, role: str) -> CropSpec | None:
        """How the role's input is cropped, when the family says so (else the SDK's default)."""
        spec = self.roles.get(role)
        return spec.crop if spec is not None else None

    @property
    def has_matte(self) -> bool:
        """True when the generator also renders the person's matte (a second output, ``matte``),
        so the SDK composites its frames onto the source's backdrop (megaportraits.compositing)."""
        rendering = self.graphs[STUDENT if self.is_student else "generator"]
        return any(t.name == MATTE_OUTPUT for t in rendering.outputs)

    @property
    def is_student(self) -> bool:
        """True for a distilled student's bundle (one 'student' graph; avatars in ``student``)."""
        return set(self.graphs) == set(STUDENT_ROLES)

    def avatar_names(self) -> list:
        """A student bundle's avatar names, in avatar_index order (empty for other bundles)."""
        return [a["name"] for a in (self.student or {}).get("avatars", ())]

    @property
    def trained_on_synthetic_data(self) -> bool:
        """True when the training provenance says the model saw only synthetic rendered heads
        (``provenance.data.kind == "synthetic"``, as the bundled demo model): on a real photo it
        renders a rough face, and a real model comes from converted official weights or from
        training on real talking-head video."""
        data = self.provenance.get("data")
        return isinstance(data, dict) and data.get("kind") == SYNTHETIC_DATA

    @property
    def has_portable(self) -> bool:
        """True when every graph can run without the custom-op library."""
        return self.custom_op is None or all(
            g.portable_file and all(f.portable_file for f in g.flavours) for g in self.graphs.values())


def _tensor_dict(t: TensorSpec) -> dict:
    return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}


# ---- field checks: each raises BundleError naming the key, what it holds, what is expected ----
def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        kind = "an object" if isinstance(value, dict) else "a list"
        try:
            text = json.dumps(value)
        except (ValueError, RecursionError):
            return kind
        return f"{kind} {text}" if len(text) <= 40 else kind
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, int):
        text = str(value) if abs(value) < 10 ** 30 else f"a {len(str(abs(value)))}-digit number"
        return text
    if isinstance(value, float):
        return f"{value!r}"
    return type(value).__name__


def _wrong(key: str, value: Any, expected: str) -> BundleError:
    where = "manifest.json" if key.startswith("(") else f"manifest key '{key}'"
    return BundleError(f"{where} holds {_describe(value)}; expected {expected}")


def _require(d: Any, keys: tuple, where: str, expected: str) -> None:
    if not isinstance(d, dict):
        raise _wrong(where, d, f"{expected} (a JSON object)" if "object" not in expected else expected)
    missing = [k for k in keys if k not in d]
    if missing:
        prefix = "" if where.startswith("(") else f"{where}."
        raise BundleError(f"manifest lacks the key(s) {', '.join(repr(prefix + k) for k in missing)}; expected "
                          f"{expected}")


def _whole(value: Any, key: str, low: int | None, high: int | None, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(key, value, what + " (a whole number)")
    if (low is not None and value < low) or (high is not None and value > high):
        raise _wrong(key, value, f"{what} from {low} to {high}")
    return value


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise _wrong(key, value, "a non-empty string")
    return value


def _one_of(value: Any, key: str, allowed: tuple) -> str:
    if value not in allowed or not isinstance(value, str):
        raise _wrong(key, value, "one of " + ", ".join(repr(a) for a in allowed))
    return value


def _list(value: Any, key: str, expected: str) -> list:
    if not isinstance(value, list):
        raise _wrong(key, value, expected)
    return value


def _object(value: Any, key: str) -> dict:
    if not isinstance(value, dict):
        raise _wrong(key, value, "an object")
    return value


def _graphs(value: Any) -> dict:
    if not isinstance(value, dict):
        raise _wrong("graphs", value, "an object mapping role -> graph")
    graphs = {}
    for role, g in value.items():
        if role not in MANIFEST_ROLES:
            raise BundleError(f"manifest key 'graphs' names the unknown role {role[:40]!r}; expected roles among "
                              f"{', '.join(MANIFEST_ROLES)}")
        graphs[role] = GraphSpec.from_dict(g, f"graphs.{role}")
    if set(graphs) == set(STUDENT_ROLES):  # a distilled student's bundle: its one graph
        return graphs
    missing = [r for r in BASE_ROLES if r not in graphs]
    if missing:
        raise BundleError(f"manifest key 'graphs' lacks the {', '.join(missing)} graph(s); expected "
                          f"{', '.join(BASE_ROLES)}")
    return graphs


def _sha256(value: Any, key: str) -> str:
    if not isinstance(value, str) or len(value) != 64 or not set(value) <= _HEX:
        raise _wrong(key, value, "a sha256 hex digest (64 lowercase hex digits)")
    return value


def _files(value: Any) -> dict:
    if not isinstance(value, dict):
        raise _wrong("files", value, "an object mapping file name -> sha256 hex digest")
    for name, digest in value.items():
        _sha256(digest, f"files.{name[:60]}")
    return dict(value)


def _custom_op(value: Any) -> dict | None:
    if value is None:
        return None
    _require(value, ("domain", "version"), "custom_op", "null or an object {domain, version}")
    _text(value["domain"], "custom_op.domain")
    _whole(value["version"], "custom_op.version", 1, 1 << 31, "the custom op's version")
    return dict(value)


def _family(model: dict) -> str:
    family = _one_of(model.get("family", MEGAPORTRAITS), "model.family", FAMILIES)
    motion = model.get("motion", MOTION_REPRESENTATIONS[family])
    if motion != MOTION_REPRESENTATIONS[family]:
        raise _wrong("model.motion", motion, f"{MOTION_REPRESENTATIONS[family]!r}, the motion representation of "
                                              f"the {family!r} family")
    return family


def _ratio(value: Any, key: str, positive: bool = False) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or (positive and not 0 < value <= 100) or (not positive and not -10 <= value <= 10)):
        raise _wrong(key, value, "a positive number up to 100" if positive else "a number from -10 to 10")
    return float(value)


def _roles(value: Any, graphs: dict) -> dict:
    roles = {}
    for role, spec in _object(value, "roles").items():
        where = f"roles.{role}"
        if role not in graphs:
            raise _wrong("roles", sorted(value), f"roles the manifest has graphs for ({', '.join(graphs)})")
        spec = _object(spec, where)
        sizes = {k: _whole(spec[k], f"{where}.{k}", *IMAGE_SIZES, "an image side in pixels")
                 for k in ("input_size", "output_size") if k in spec}
        crop = None
        if "crop" in spec:
            c = _object(spec["crop"], f"{where}.crop")
            _require(c, ("scale",), f"{where}.crop", "an object {scale, vx_ratio, vy_ratio}")
            crop = CropSpec(_ratio(c["scale"], f"{where}.crop.scale", positive=True),
                            _ratio(c.get("vx_ratio", 0.0), f"{where}.crop.vx_ratio"),
                            _ratio(c.get("vy_ratio", 0.0), f"{where}.crop.vy_ratio"))
        roles[role] = RoleSpec(crop=crop, **sizes)
    return roles


def _value_range(value: Any) -> tuple:
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            or not value[0] < value[1]):
        raise _wrong("model.value_range", value, "a list [low, high] of two finite numbers, low < high")
    return (float(value[0]), float(value[1]))


def _student(value: Any, graphs: dict) -> dict | None:
    """The ``student`` section: present exactly when the bundle's one graph is the student."""
    is_student = set(graphs) == set(STUDENT_ROLES)
    if value is None:
        if is_student:
            raise BundleError("manifest: a student bundle needs a 'student' section {avatars, teacher}")
        return None
    if not is_student:
        raise BundleError("manifest: a 'student' section belongs only to a bundle whose one graph is 'student'")
    _require(value, ("avatars", "teacher"), "student", "an object {avatars, teacher}")
    teacher = value["teacher"]
    _require(teacher, ("manifest_sha256",), "student.teacher", "an object {manifest_sha256, ...}")
    _sha256(teacher["manifest_sha256"], "student.teacher.manifest_sha256")
    avatars = _list(value["avatars"], "student.avatars", "a list of avatars")
    if not avatars:
        raise _wrong("student.avatars", avatars, "at least one avatar")
    names = set()
    for i, avatar in enumerate(avatars):
        where = f"student.avatars[{i}]"
        _require(avatar, ("name", "image", "crop"), where, "an avatar {name, image, crop, backdrop}")
        name = _text(avatar["name"], f"{where}.name")
        if name in names:
            raise BundleError(f"manifest: two avatars are named {name[:60]!r}; expected distinct names")
        names.add(name)
        safe_name(_text(avatar["image"], f"{where}.image"))
        if avatar.get("backdrop") is not None:
            safe_name(_text(avatar["backdrop"], f"{where}.backdrop"))
        crop = _list(avatar["crop"], f"{where}.crop", "[x, y, side] of the face crop in the image")
        if len(crop) != 3:
            raise _wrong(f"{where}.crop", crop, "[x, y, side] of the face crop in the image")
        _whole(crop[0], f"{where}.crop[0]", -_MAX_DIM, _MAX_DIM, "a pixel column")
        _whole(crop[1], f"{where}.crop[1]", -_MAX_DIM, _MAX_DIM, "a pixel row")
        _whole(crop[2], f"{where}.crop[2]", 2, _MAX_DIM, "the crop's side in pixels")
    return dict(value)


def safe_name(name: str) -> str:
    """Accept only a plain file name: no directories, no '..', nothing absolute, not the
    manifest itself, and short enough for any file system (255 bytes)."""
    if (not isinstance(name, str) or not name or name in (".", "..", MANIFEST_NAME) or "/" in name
            or "\\" in name or "\0" in name or os.path.isabs(name) or ":" in name
            or len(name.encode("utf-8", "surrogatepass")) > 255):
        shown = repr(name[:60] + "...") if isinstance(name, str) and len(name) > 60 else repr(name)
        raise BundleError(f"manifest names the file {shown}, which is not a plain file name "
                          "inside the bundle directory; the bundle is refused")
    return name


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_manifest(bundle_dir: str | os.PathLike) -> Manifest:
    """Read and validate ``manifest.json``; raises :class:`BundleError` with the reason."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        if bundle_dir.exists():
            raise BundleError(f"{str(bundle_dir)!r} is a file, not a bundle directory; pass the directory "
                              f"that holds {MANIFEST_NAME}")
        raise BundleError(f"bundle directory {str(bundle_dir)!r} does not exist")
    path = bundle_dir / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{str(bundle_dir)!r} is not a model bundle: it has no {MANIFEST_NAME}")
    try:
        if path.stat().st_size > _MAX_MANIFEST_BYTES:
            raise BundleError(f"{path} is {path.stat().st_size >> 20} MiB, far larger than any manifest; "
                              "the bundle is refused")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise BundleError(f"cannot read {path} ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise BundleError(f"{path} is not valid JSON (not UTF-8 text: {e.reason})") from None
    except RecursionError:
        raise BundleError(f"{path} is not a manifest: its JSON is nested deeper than this SDK reads") from None
    except ValueError as e:  # json.JSONDecodeError, and integers longer than Python converts
        raise BundleError(f"{path} is not valid JSON ({' '.join(str(e).split())[:200]})") from None
    return Manifest.from_dict(data)


def verify_files(bundle_dir: str | os.PathLike, manifest: Manifest, names=None) -> None:
    """Check the sha256 of each listed file (default: all); name the first that differs."""
    bundle_dir = Path(bundle_dir).resolve()
    for name in (names if names is not None else manifest.files):
        path = (bundle_dir / safe_name(name))
        try:
            if path.is_symlink() or not path.resolve().is_relative_to(bundle_dir):
                raise BundleError(f"bundle file {name!r} points outside the bundle directory")
            if not path.is_file():
                raise BundleError(f"bundle file {name!r} is missing from {bundle_dir}")
            digest = sha256_file(path)
        except OSError as e:
            raise BundleError(f"cannot read bundle file {name!r} ({e.strerror or e})") from None
        if digest != manifest.files[name]:
            raise BundleError(f"bundle file {name!r} does not match its sha256 in the manifest "
                              "(corrupted or tampered with); re-export or re-download the bundle")


def write_manifest(bundle_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """Hash every file the manifest names and write ``manifest.json`` atomically."""
    bundle_dir = Path(bundle_dir)
    names = set(manifest.files)
    for g in manifest.graphs.values():
        names.update(g.all_files())
    manifest.files = {n: sha256_file(bundle_dir / safe_name(n)) for n in sorted(names)}
    manifest.check_names()
    text = json.dumps(manifest.to_dict(), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=bundle_dir, prefix=".manifest.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, bundle_dir / MANIFEST_NAME)
    return bundle_dir / MANIFEST_NAME
