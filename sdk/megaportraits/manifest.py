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
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
CUSTOM_OP_DOMAIN = "com.megaportraits"
CUSTOM_OP_VERSION = 1
ROLES = ("source", "driver", "generator", "enhancer", "student")
REQUIRED_ROLES = ("source", "driver", "generator")
DTYPES = ("float32", "float16", "int64")


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one graph input or output. Dynamic axes are strings ("batch")."""

    name: str
    shape: tuple
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "TensorSpec":
        _require(d, ("name", "shape", "dtype"), where)
        if d["dtype"] not in DTYPES:
            raise BundleError(f"{where}: dtype {d['dtype']!r} is not one of {', '.join(DTYPES)}")
        return cls(name=str(d["name"]), shape=tuple(d["shape"]), dtype=d["dtype"])


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the bundle, and optionally its portable twin (standard ops only)."""

    file: str
    inputs: tuple
    outputs: tuple
    portable_file: str | None = None

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "GraphSpec":
        _require(d, ("file", "inputs", "outputs"), where)
        return cls(
            file=d["file"],
            inputs=tuple(TensorSpec.from_dict(t, f"{where}.inputs") for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t, f"{where}.outputs") for t in d["outputs"]),
            portable_file=d.get("portable_file"),
        )

    def to_dict(self) -> dict:
        d = {
            "file": self.file,
            "inputs": [_tensor_dict(t) for t in self.inputs],
            "outputs": [_tensor_dict(t) for t in self.outputs],
        }
        if self.portable_file:
            d["portable_file"] = self.portable_file
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
            },
            "opset": self.opset,
            "custom_op": self.custom_op,
            "precision": self.precision,
            "graphs": {role: g.to_dict() for role, g in self.graphs.items()},
            "files": dict(self.files),
            "producer": dict(self.producer),
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, d: Any) -> "Manifest":
        if not isinstance(d, dict):
            raise BundleError("manifest.json does not hold a JSON object")
        version = d.get("format_version")
        if not isinstance(version, int):
            raise BundleError("manifest.json has no integer format_version")
        if version > FORMAT_VERSION:
            raise BundleError(
                f"bundle format version {version} is newer than this SDK reads "
                f"(up to {FORMAT_VERSION}); upgrade megaportraits: pip install -U megaportraits")
        if version < 1:
            raise BundleError(f"bundle format version {version} is not valid")
        _require(d, ("model", "graphs", "files", "opset"), "manifest")
        model = d["model"]
        _require(model, ("name", "preset", "image_size"), "manifest.model")
        graphs = {}
        for role, g in d["graphs"].items():
            if role not in ROLES:
                raise BundleError(f"manifest.graphs: unknown role {role!r} (known: {', '.join(ROLES)})")
            graphs[role] = GraphSpec.from_dict(g, f"manifest.graphs.{role}")
        missing = [r for r in REQUIRED_ROLES if r not in graphs]
        if missing:
            raise BundleError(f"manifest.graphs lacks the {', '.join(missing)} graph(s)")
        custom_op = d.get("custom_op")
        if custom_op is not None:
            _require(custom_op, ("domain", "version"), "manifest.custom_op")
        m = cls(
            model_name=model["name"], preset=model["preset"], image_size=int(model["image_size"]),
            graphs=graphs, files=dict(d["files"]), opset=int(d["opset"]), custom_op=custom_op,
            precision=d.get("precision", "fp32"),
            value_range=tuple(model.get("value_range", (0.0, 1.0))),
            channel_order=model.get("channel_order", "RGB"),
            producer=d.get("producer", {}), provenance=d.get("provenance", {}),
            format_version=version,
        )
        m.check_names()
        return m

    # ---- consistency ---------------------------------------------------------------------
    def check_names(self) -> None:
        """Every graph file is hashed, and every hashed name is a plain name inside the bundle."""
        for name in self.files:
            safe_name(name)
        for role, g in self.graphs.items():
            for f in filter(None, (g.file, g.portable_file)):
                safe_name(f)
                if f not in self.files:
                    raise BundleError(f"manifest: graph {role!r} file {f!r} has no sha256 entry in 'files'")

    def graph_file(self, role: str, portable: bool = False) -> str:
        g = self.graphs[role]
        if portable and self.custom_op is not None:
            if not g.portable_file:
                raise BundleError(f"bundle has no portable variant of the {role!r} graph")
            return g.portable_file
        return g.file

    @property
    def has_matte(self) -> bool:
        """True when the generator also renders the person's matte (a second output, ``matte``),
        so the SDK composites its frames onto the source's backdrop (megaportraits.compositing)."""
        return any(t.name == "matte" for t in self.graphs["generator"].outputs)

    @property
    def has_portable(self) -> bool:
        """True when every graph can run without the custom-op library."""
        return self.custom_op is None or all(g.portable_file for g in self.graphs.values())


def _tensor_dict(t: TensorSpec) -> dict:
    return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}


def _require(d: Any, keys: tuple, where: str) -> None:
    if not isinstance(d, dict):
        raise BundleError(f"{where} must be a JSON object")
    missing = [k for k in keys if k not in d]
    if missing:
        raise BundleError(f"{where} lacks the field(s) {', '.join(missing)}")


def safe_name(name: str) -> str:
    """Accept only a plain file name: no directories, no '..', nothing absolute."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name
            or "\\" in name or "\0" in name or os.path.isabs(name) or ":" in name):
        raise BundleError(f"manifest names the file {name!r}, which is not a plain file name "
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
        raise BundleError(f"bundle directory {str(bundle_dir)!r} does not exist")
    path = bundle_dir / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"{str(bundle_dir)!r} is not a model bundle: it has no {MANIFEST_NAME}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e})") from None
    return Manifest.from_dict(data)


def verify_files(bundle_dir: str | os.PathLike, manifest: Manifest, names=None) -> None:
    """Check the sha256 of each listed file (default: all); name the first that differs."""
    bundle_dir = Path(bundle_dir).resolve()
    for name in (names if names is not None else manifest.files):
        path = (bundle_dir / safe_name(name))
        if path.is_symlink() or not path.resolve().is_relative_to(bundle_dir):
            raise BundleError(f"bundle file {name!r} points outside the bundle directory")
        if not path.is_file():
            raise BundleError(f"bundle file {name!r} is missing from {bundle_dir}")
        if sha256_file(path) != manifest.files[name]:
            raise BundleError(f"bundle file {name!r} does not match its sha256 in the manifest "
                              "(corrupted or tampered with); re-export or re-download the bundle")


def write_manifest(bundle_dir: str | os.PathLike, manifest: Manifest) -> Path:
    """Hash every file the manifest names and write ``manifest.json`` atomically."""
    bundle_dir = Path(bundle_dir)
    names = set(manifest.files)
    for g in manifest.graphs.values():
        names.update(filter(None, (g.file, g.portable_file)))
    manifest.files = {n: sha256_file(bundle_dir / safe_name(n)) for n in sorted(names)}
    manifest.check_names()
    text = json.dumps(manifest.to_dict(), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=bundle_dir, prefix=".manifest.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, bundle_dir / MANIFEST_NAME)
    return bundle_dir / MANIFEST_NAME
