"""No file of the repository points its reader at a document outside it: the design lives in
docs/design.md, the paper is cited as the paper. A pointer to a page the reader cannot open
leaves the contract it names unchecked."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("sdk", "export", "cpp_ext", "docs", "benchmarks", "tools", "configs", "tests", ".ci")
TOP_FILES = ("README.md", "setup.py", "pyproject.toml")
SUFFIXES = {".py", ".md", ".cc", ".h", ".cu", ".cuh", ".toml", ".cfg", ".txt", ".sh", ".map"}
# Spelled in pieces so that this file does not cite them itself.
OUTSIDE = ("DESIGN" + ".md", "REFERENCE" + ".md", "../" + "shared", "/work/" + "shared")


def repository_text_files():
    for name in TOP_FILES:
        if (REPO / name).is_file():
            yield REPO / name
    for part in PARTS:
        for path in sorted((REPO / part).rglob("*")):
            if path.is_file() and (path.suffix in SUFFIXES or path.name == "run") and ".venv" not in path.parts:
                yield path


def test_no_file_cites_a_document_outside_the_repository():
    citing = []
    for path in repository_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if any(name in line for name in OUTSIDE):
                citing.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert not citing, "cite docs/design.md or the paper instead:\n" + "\n".join(citing)


def test_the_check_sees_the_files_it_guards():
    seen = {path.relative_to(REPO).as_posix() for path in repository_text_files()}
    assert {"docs/design.md", "sdk/megaportraits/schema.py", "cpp_ext/ort_custom_op.cc",
            "export/megaportraits_export/warp.py", "README.md"} <= seen
