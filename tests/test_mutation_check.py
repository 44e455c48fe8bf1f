"""tools/mutation_check.py stays usable: every mutation's text still occurs exactly once in the
code it targets (so a refactor that moves it fails here, in seconds, naming the mutation),
and the list covers the three parts. Running the mutations themselves takes minutes: see the
script's docstring."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "tools" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_every_mutation_still_finds_its_code_exactly_once(tool):
    for mutation in tool.MUTATIONS:
        path, old, new = tool.locate(ROOT, mutation)  # exits with a one-line message if the code moved
        text = path.read_text()
        assert new != old and text.replace(old, new) != text


def test_the_list_covers_sdk_export_and_the_kernel(tool):
    names = [m.name for m in tool.MUTATIONS]
    assert len(names) == len(set(names)) >= 10
    parts = {m.path.split("/")[0] for m in tool.MUTATIONS}
    assert parts == {"sdk", "export", "cpp_ext"}
    for mutation in tool.MUTATIONS:
        files = [t for t in mutation.tests if t.startswith("tests/")]
        assert files and all((ROOT / f).is_file() for f in files), mutation.name


def test_a_moved_anchor_is_one_clear_line(tool, tmp_path):
    (tmp_path / "a.py").write_text("x = 1\nx = 1\n")
    twice = tool.Mutation("twice", "a.py", "x = 1", "x = 2", ("tests/x.py",))
    with pytest.raises(SystemExit, match=r"^error: mutation 'twice': its text occurs 2 times in 1 file\(s\) "
                                         r"matching a.py, expected once; the code moved or changed"):
        tool.locate(tmp_path, twice)
    with pytest.raises(SystemExit, match="occurs 0 times in b.py \\(no such file\\)"):
        tool.locate(tmp_path, tool.Mutation("gone", "b.py", "x", "y", ("tests/x.py",)))
    # a variant is used when the first spelling is gone
    moved = tool.Mutation("moved", "*.py", "y = 1", "y = 2", ("tests/x.py",), variants=(("x = 1\nx", "x = 3\nx"),))
    assert tool.locate(tmp_path, moved) == (tmp_path / "a.py", "x = 1\nx", "x = 3\nx")
