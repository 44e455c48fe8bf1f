"""The layering as it is meant: the SDK (``megaportraits``) never imports torch or the export
side (``megaportraits_export``); the export side uses only the SDK's public modules and names.

Two independent checks of the first rule: every SDK module is imported in a fresh interpreter
where importing torch or megaportraits_export raises, and every import statement in the SDK's
source (inside functions too) is read from its syntax tree. The second rule is read from the
export side's syntax trees: no ``megaportraits._module``, no ``from megaportraits.x import _name``,
no ``sdk_module._name`` attribute on an SDK module.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SDK = ROOT / "sdk" / "megaportraits"
EXPORT = ROOT / "export" / "megaportraits_export"
FORBIDDEN_IN_SDK = ("torch", "torchvision", "megaportraits_export")


def sdk_modules() -> list:
    """Dotted names of every SDK module except the ``__main__`` entry points (they run)."""
    names = []
    for path in sorted(SDK.rglob("*.py")):
        parts = path.relative_to(SDK.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def imported_modules(tree: ast.AST, package: str) -> list:
    """(line, absolute module name, imported names) of every import in a syntax tree."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.append((node.lineno, module, tuple(a.name for a in node.names)))
    return found


def package_of(path: Path, root: Path) -> str:
    """The package a file's relative imports start from ('' for a file outside ``root``)."""
    try:
        return ".".join(path.relative_to(root.parent).parts[:-1])
    except ValueError:
        return ""


def test_importing_every_sdk_module_never_imports_torch_or_the_export_side():
    blocker = f"""
import importlib, importlib.abc, json, sys
BLOCKED = {FORBIDDEN_IN_SDK!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked by the layering test: {{name}}")
        return None
sys.meta_path.insert(0, Block())
failed = {{}}
for name in {sdk_modules()!r}:
    try:
        importlib.import_module(name)
    except Exception as e:
        failed[name] = f"{{type(e).__name__}}: {{e}}"
print(json.dumps({{"failed": failed, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}}))
"""
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"failed": {}, "loaded": []}, report
    assert len(sdk_modules()) >= 25 and "megaportraits.benchmark.stages" in sdk_modules()  # the walk found them


def test_no_sdk_source_file_imports_torch_or_the_export_side():
    offenders = []
    for path in sorted(SDK.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for line, module, _ in imported_modules(tree, package_of(path, SDK)):
            if module and module.split(".")[0] in FORBIDDEN_IN_SDK:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert offenders == []


def test_the_scanner_sees_imports_inside_functions():
    """Not vacuous: a lazy import in a function body is an import too."""
    tree = ast.parse("def f():\n    import torch\n    from megaportraits_export.model import X\n")
    assert [m for _, m, _ in imported_modules(tree, "megaportraits")] == ["torch", "megaportraits_export.model"]
    tree = ast.parse("from ._native import grid_sample_3d\nfrom .. import manifest\n")
    assert [m for _, m, _ in imported_modules(tree, "megaportraits.benchmark")] == \
        ["megaportraits.benchmark._native", "megaportraits"]


def private_sdk_uses(path: Path) -> list:
    """Where an export-side file reaches into the SDK's private modules or names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    uses, sdk_aliases = [], set()
    for line, module, names in imported_modules(tree, package_of(path, EXPORT)):
        if not module or module.split(".")[0] != "megaportraits":
            continue
        if any(part.startswith("_") and part != "__version__" for part in module.split(".")[1:]):
            uses.append(f"{line}: imports {module}")
        for name in names:
            if name.startswith("_") and name != "__version__":
                uses.append(f"{line}: imports {name} from {module}")
    for node in ast.walk(tree):  # names bound to SDK modules: import megaportraits.x as y / from megaportraits import x
        if isinstance(node, ast.Import):
            sdk_aliases |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.split(".")[0] == "megaportraits"}
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "megaportraits":
            sdk_aliases |= {a.asname or a.name for a in node.names}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, (ast.Name, ast.Attribute))):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in sdk_aliases:
                uses.append(f"{node.lineno}: uses {ast.unparse(node)}")
    return uses


def test_the_export_side_uses_only_the_sdks_public_modules():
    assert EXPORT.is_dir(), EXPORT  # a checkout without it must not pass by scanning nothing
    offenders = [f"{path.relative_to(ROOT)}:{use}" for path in sorted(EXPORT.rglob("*.py"))
                 for use in private_sdk_uses(path)]
    assert offenders == []


def test_the_private_use_scanner_finds_each_kind(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import megaportraits._native\n"
                      "from megaportraits.bundle import _verify, open_bundle\n"
                      "from megaportraits import bundle as b\n"
                      "b._one_line(None)\n"
                      "from megaportraits import __version__\n"
                      "import numpy as np\nnp._private\n")
    uses = private_sdk_uses(sample)
    assert uses == ["1: imports megaportraits._native", "2: imports _verify from megaportraits.bundle",
                    "4: uses b._one_line"], uses


@pytest.mark.parametrize("module", ["errors", "schema"])
def test_the_base_modules_import_nothing_else_from_the_sdk(module):
    """errors.py and schema.py sit under everything: any SDK module may import them."""
    path = SDK / f"{module}.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    sdk_imports = [m for _, m, _ in imported_modules(tree, "megaportraits") if m and m.startswith("megaportraits")]
    assert sdk_imports == []


def test_one_bundle_error():
    from megaportraits import errors, manifest

    assert manifest.BundleError is errors.BundleError
    assert issubclass(errors.BundleError, errors.MegaportraitsError) and issubclass(errors.BundleError, ValueError)
