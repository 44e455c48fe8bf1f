"""Seeded mutations of a valid bundle, fed to everything that reads one.

Each of 250 mutations of the toy bundle's manifest (types swapped, keys removed and added,
strings for numbers, nested nonsense, huge and negative numbers, NaN and infinities, future
format versions, paths leaving the bundle, damaged JSON) goes to ``load_manifest``,
``megaportraits info --bundle``, ``megaportraits benchmark --bundle`` (its quickest options),
``Animator`` and ``megaportraits animate`` (a driver image); 60 damaged and re-signed graph
files go to info, the Animator and benchmark. Every one must end in a one-line message and a
non-zero exit, or run (a harmless mutation runs a frame), and never raise anything but the
SDK's own errors; ``info`` must say "ok" exactly when the Animator opens the bundle. The
commands run in-process (fast); 5 seeded mutations also run as real processes. The first 120
mutations also go to the toy bundle whose generator reads the avatar inputs
(``schema.AVATAR_GENERATOR_INPUTS``), and a third of the damaged graphs are that bundle's. About
10 s on a busy 2-core machine.
"""
from __future__ import annotations

import copy
import json
import random
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from megaportraits import cli
from megaportraits import manifest as mf
from megaportraits.animator import Animator
from megaportraits.errors import BundleError, MegaportraitsError

MUTATIONS = 250
SUBPROCESS_SAMPLE = 5
SEED = 20261201

WEIRD_VALUES = [None, True, False, 0, -1, 1, 3.5, -7.25, 2 ** 63, -(2 ** 63), 10 ** 40, float("nan"),
                float("inf"), float("-inf"), "", "abc", "20", "1e9", "../escape.onnx", "/etc/passwd", [], [1, 2],
                [[[[[]]]]], {}, {"a": {"b": [None, {"c": "d"}]}}, "x" * 5000]
ESCAPES = ["../source.onnx", "/etc/passwd", "sub/driver.onnx", "..", ".", "C:\\\\evil.onnx", "a\0b",
           "../../../../../../tmp/x", "x" * 300, "y" * 5000, "manifest.json", "\u202e.onnx"]


def paths(node, prefix=()):
    """Every (path, value) in a JSON tree, the root excluded."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield prefix + (key,), value
        yield from paths(value, prefix + (key,))


def parent_of(tree, path):
    for key in path[:-1]:
        tree = tree[key]
    return tree


def nested_nonsense(rng: random.Random, depth: int):
    if depth == 0:
        return rng.choice(WEIRD_VALUES[:16])
    return rng.choice([[nested_nonsense(rng, depth - 1)], {"k": nested_nonsense(rng, depth - 1)}])


KINDS = ("swap", "remove", "add", "string_for_number", "nonsense", "extreme", "nan", "future", "escape", "raw")
# Manifest texts json.dumps cannot write: what a hand-edited or damaged file may hold.
RAW_TEXTS = [
    "", "{", "[]", "null", '"manifest"', "\ufeff{}", "{" * 100000 + "}" * 100000, "[" * 5000 + "]" * 5000,
    None,  # the valid manifest with image_size as a 5000-digit integer, longer than Python converts
    b"\xff\xfe\x00{".decode("latin-1"),  # not UTF-8 once written as latin-1 below
]


def mutate(valid: dict, rng: random.Random) -> tuple:
    """One random mutation of ``valid``: (data or raw text, kind, a label saying what it was)."""
    data = copy.deepcopy(valid)
    everything = list(paths(data))
    kind = rng.choice(KINDS + ("swap", "remove", "extreme"))
    if kind == "raw":
        index = rng.randrange(len(RAW_TEXTS))
        text = RAW_TEXTS[index]
        if text is None:
            text = json.dumps(valid).replace('"image_size": 32', '"image_size": ' + "9" * 5000)
        return text, kind, f"raw text #{index}"
    if kind == "future":
        data["format_version"] = rng.choice([2, 99, 10 ** 30, 1.5, "2", -1, 0, None])
        return data, kind, f"format_version={data['format_version']!r}"
    if kind == "escape":
        name = rng.choice(ESCAPES)
        role = rng.choice(["source", "driver", "generator"])
        where = rng.choice(["file", "files", "portable_file"])
        if where != "files":
            data["graphs"][role][where] = name
        data["files"][name] = "0" * 64
        return data, kind, f"{where} of {role} = {name!r}"
    if kind in ("string_for_number", "extreme", "nan"):
        numbers = [(p, v) for p, v in everything if isinstance(v, (int, float)) and not isinstance(v, bool)]
        path, value = rng.choice(numbers)
        new = {"string_for_number": str(value),
               "extreme": rng.choice([10 ** 40, -(10 ** 40), 2 ** 31, 2 ** 64, -1, -(2 ** 31), 0]),
               "nan": rng.choice([float("nan"), float("inf"), float("-inf")])}[kind]
        parent_of(data, path)[path[-1]] = new
        return data, kind, f"{path}: {value!r} -> {new!r}"
    if kind == "add":
        containers = [(p, v) for p, v in everything if isinstance(v, dict)] + [((), data)]
        cpath, container = rng.choice(containers)
        key = rng.choice(["extra", "enhancer", "student", "graphs", "name", "1", ""])
        container[key] = rng.choice(WEIRD_VALUES)
        return data, kind, f"{cpath} + {key!r}"
    path, value = rng.choice(everything)
    parent = parent_of(data, path)
    if kind == "remove":
        if isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
        return data, kind, f"{path}"
    if kind == "nonsense":
        parent[path[-1]] = nested_nonsense(rng, rng.randint(1, 6))
        return data, kind, f"at {path}"
    new = rng.choice([v for v in WEIRD_VALUES if type(v) is not type(value)])
    parent[path[-1]] = new
    return data, kind, f"{path}: {type(value).__name__} -> {type(new).__name__}"


def write(directory: Path, data) -> None:
    path = directory / mf.MANIFEST_NAME
    if isinstance(data, str):
        path.write_text(data, encoding="latin-1" if data.startswith("\xff") else "utf-8")
    else:
        path.write_text(json.dumps(data), encoding="utf-8")


def one_error_line(err: str) -> bool:
    lines = [line for line in err.splitlines() if not line.startswith("megaportraits: warning:")]
    return len(lines) == 1 and lines[0].startswith("megaportraits: error: ") and "Traceback" not in err


@pytest.fixture(scope="module")
def ceilings(tmp_path_factory) -> Path:
    """Machine ceilings for ``benchmark --ceilings`` so no run spends seconds measuring them."""
    path = tmp_path_factory.mktemp("ceilings") / "peaks.json"
    path.write_text(json.dumps({"peaks": [{"threads": 1, "gemm_gflops": 100.0, "gemm_size": 1,
                                           "numpy_gemm_gflops": None, "bandwidth_gbs": 10.0, "copy_gbs": None,
                                           "ort_stream_gbs": 10.0}]}))
    return path


def benchmark_argv(bundle: Path, ceilings: Path) -> list:
    return ["benchmark", "--bundle", str(bundle), "--stages", "driver", "--variants", "portable",
            "--threads", "1", "--runs", "1", "--warmup", "0", "--max-seconds", "0.01", "--ceilings",
            str(ceilings), "--json"]


@pytest.fixture(scope="module")
def portraits(tmp_path_factory) -> Path:
    """A source and a driver image (already face crops) for ``animate``, and where it writes."""
    import cv2

    directory = tmp_path_factory.mktemp("portraits")
    rng = np.random.default_rng(5)
    for name in ("source.png", "driver.png"):
        cv2.imwrite(str(directory / name), (rng.random((48, 48, 3)) * 255).astype(np.uint8))
    return directory


def animate_argv(bundle: Path, portraits: Path) -> list:
    return ["animate", portraits / "source.png", portraits / "driver.png", "-o", portraits / "out.png",
            "--bundle", bundle, "--no-crop", "--no-paste-back", "--provider", "cpu", "--threads", "1"]


def run_cli(capsys, argv) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def animator_opens(bundle: Path) -> tuple[bool, str]:
    """(opened and ran a frame, the error otherwise). Anything but the SDK's errors fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a portable fallback is fine here
            with Animator(bundle, provider="cpu", threads=1, crop=False, paste_back=False) as animator:
                frame = np.random.default_rng(0).random((animator.image_size, animator.image_size, 3))
                avatar = animator.prepare((frame * 255).astype(np.uint8))
                out = animator.animate_frame(avatar, (frame[::-1] * 255).astype(np.uint8))
                assert out.shape[:2] == (animator.image_size, animator.image_size)
        return True, ""
    except MegaportraitsError as e:
        assert "\n" not in str(e), str(e)
        return False, str(e)


# the toy bundle, and (fewer draws) its variant whose generator reads the avatar inputs
# (schema.AVATAR_GENERATOR_INPUTS), so their manifest entries are mutated too
@pytest.mark.parametrize("which, mutations", [("toy_custom_bundle", MUTATIONS), ("toy_avatar_bundle", 120)])
def test_mutated_manifests_give_one_line_or_run_and_info_agrees_with_animate(
        which, mutations, request, bundle_copy, capsys, ceilings, portraits):
    bundle = bundle_copy(request.getfixturevalue(which))
    valid = json.loads((bundle / mf.MANIFEST_NAME).read_text())
    rng = random.Random(SEED)
    counts = {"refused": 0, "ran": 0}
    kinds = set()
    for i in range(mutations):
        data, kind, label = mutate(valid, rng)
        kinds.add(kind)
        write(bundle, data)
        where = f"mutation {i} ({kind}: {label})"
        try:
            mf.load_manifest(bundle)
            loads = True
        except BundleError as e:
            assert "\n" not in str(e) and str(e), where
            loads = False
        code, out, err = run_cli(capsys, ["info", "--bundle", bundle])
        assert code in (0, 1) and "Traceback" not in out + err, f"{where}: info exit {code}\n{out}{err}"
        status = [line for line in out.splitlines() if line.startswith("  status: ")]
        assert len(status) == 1, f"{where}: {out}"
        info_ok = code == 0
        assert status[0] == "  status: ok" if info_ok else status[0].startswith("  status: invalid: "), where
        if not loads:
            assert not info_ok, where
        opened, why = animator_opens(bundle)
        assert info_ok == opened, f"{where}: info {'ok' if info_ok else 'invalid'} but Animator: {why or 'opened'}"
        code, out, err = run_cli(capsys, benchmark_argv(bundle, ceilings))
        if info_ok:
            assert code == 0, f"{where}: benchmark exit {code}: {err}"
            assert json.loads(out)["results"], where
        else:
            assert code == 1 and one_error_line(err), f"{where}: benchmark exit {code}: {err!r}"
        code, _, err = run_cli(capsys, animate_argv(bundle, portraits))
        assert code == (0 if info_ok else 1) and (info_ok or one_error_line(err)), \
            f"{where}: info {'ok' if info_ok else 'invalid'} but animate exit {code}: {err!r}"
        counts["ran" if opened else "refused"] += 1
    # the mutations reach both outcomes and every kind was drawn
    assert counts["refused"] > mutations // 2 and counts["ran"] > 5, counts
    assert kinds == set(KINDS), kinds


def test_a_sample_of_mutations_in_real_processes(toy_custom_bundle, bundle_copy, ceilings):
    """No traceback reaches a real terminal either, and exit codes are the in-process ones."""
    bundle = bundle_copy(toy_custom_bundle)
    valid = json.loads((bundle / mf.MANIFEST_NAME).read_text())
    rng = random.Random(SEED + 1)
    for i in range(SUBPROCESS_SAMPLE):
        data, kind, label = mutate(valid, rng)
        write(bundle, data)
        info = subprocess.run([sys.executable, "-m", "megaportraits", "info", "--bundle", str(bundle)],
                              capture_output=True, text=True, timeout=120)
        bench = subprocess.run([sys.executable, "-m", "megaportraits", *benchmark_argv(bundle, ceilings)],
                               capture_output=True, text=True, timeout=120)
        where = f"mutation {i} ({kind}: {label})"
        assert "Traceback" not in info.stdout + info.stderr + bench.stdout + bench.stderr, where
        assert info.returncode in (0, 1) and (info.returncode == 0) == (bench.returncode == 0), \
            f"{where}: info {info.returncode}, benchmark {bench.returncode}: {bench.stderr}"
        if bench.returncode:
            assert one_error_line(bench.stderr), f"{where}: {bench.stderr!r}"


def test_the_mutator_is_not_vacuous(toy_custom_bundle):
    """Mutations change the manifest, and the unmutated manifest is valid."""
    valid = json.loads((toy_custom_bundle / mf.MANIFEST_NAME).read_text())
    mf.Manifest.from_dict(valid)
    rng = random.Random(SEED)
    changed = 0
    for _ in range(50):
        data, _, _ = mutate(valid, rng)
        changed += (data if isinstance(data, str) else json.dumps(data)) != json.dumps(valid)
    assert changed >= 45
    assert "NaN" in json.dumps({"x": float("nan")})  # written as the NaN literal the SDK must refuse


# ---- the graph files themselves, re-signed after the damage (as an attacker could) ----------------
GRAPH_MUTATIONS = 60


def damage_graph(directory: Path, rng: random.Random) -> str:
    """Damage one graph file of the bundle in one of several ways; return what was done."""
    import onnx

    files = sorted(p.name for p in directory.glob("*.onnx"))
    name = rng.choice(files)
    path = directory / name
    kind = rng.choice(["flip", "truncate", "unknown_op", "drop_node", "dtype", "swap", "custom_domain"])
    if kind in ("flip", "truncate"):
        data = bytearray(path.read_bytes())
        if kind == "flip":
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        else:
            data = data[:rng.randrange(1, len(data))]
        path.write_bytes(bytes(data))
    elif kind == "swap":
        other = directory / rng.choice([f for f in files if f != name])
        a, b = path.read_bytes(), other.read_bytes()
        path.write_bytes(b)
        other.write_bytes(a)
    else:
        model = onnx.load(str(path))
        node = rng.choice(list(model.graph.node))
        if kind == "unknown_op":
            node.op_type = "NoSuchOp"
        elif kind == "drop_node":
            model.graph.node.remove(node)
        elif kind == "custom_domain":
            node.domain = "com.megaportraits"
            model.opset_import.append(onnx.helper.make_opsetid("com.megaportraits", 1))
        else:
            model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
        onnx.save(model, str(path))
    manifest = mf.load_manifest(directory)
    mf.write_manifest(directory, manifest)  # re-sign: the hashes match the damage
    return f"{kind} {name}"


def test_damaged_graph_files_give_one_line_and_info_agrees_with_animate(
        toy_bundle, toy_custom_bundle, toy_avatar_bundle, bundle_copy, capsys, ceilings):
    rng = random.Random(SEED + 2)
    outcomes = {True: 0, False: 0}
    for i in range(GRAPH_MUTATIONS):
        bundle = bundle_copy((toy_bundle, toy_custom_bundle, toy_avatar_bundle)[i % 3])
        label = damage_graph(bundle, rng)
        where = f"graph mutation {i} ({label})"
        code, out, err = run_cli(capsys, ["info", "--bundle", bundle])
        assert code in (0, 1) and "Traceback" not in out + err, f"{where}: {out}{err}"
        opened, why = animator_opens(bundle)
        assert (code == 0) == opened, f"{where}: info exit {code} but Animator: {why or 'opened'}\n{out}"
        code, out, err = run_cli(capsys, benchmark_argv(bundle, ceilings))
        assert code == (0 if opened else 1) and (opened or one_error_line(err)), f"{where}: benchmark {code}: {err}"
        outcomes[opened] += 1
        shutil.rmtree(bundle)
    assert outcomes[False] > GRAPH_MUTATIONS // 3, outcomes
