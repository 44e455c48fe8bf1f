"""Mutation check: known-bad edits to a copy of the code, each of which the tests must catch.

Why: a green suite proves little if its inputs or tolerances hide the bugs its tests are named
after (issue 19 found several). This script keeps that honest. It copies the repository (the
files ``git ls-files`` lists, tracked and untracked-but-not-ignored) into a temporary
directory, and for each mutation in :data:`MUTATIONS`

1. replaces one exact piece of text in one file (it must occur exactly once: if the code moved,
   the script says so and fails, so the list is kept up to date rather than silently skipped);
2. for a C++ mutation, rebuilds the copy's ONNX Runtime custom-op library with g++ (about 2 s;
   the tests that exercise the kernel through ONNX Runtime then see the mutated kernel);
3. runs that mutation's tests in the copy (a few files, often a ``-k`` selection), with the
   copy's ``sdk/`` and ``export/`` first on PYTHONPATH and the project's interpreter;
4. restores the file (and the library) and records whether the tests failed: "caught".

Before the mutations, every selection is run once on the unmutated copy (a mutation "caught"
by a test that fails anyway would prove nothing); ``--no-baseline`` skips that.

Prints a table (mutation, caught?, seconds) and the total time; exits 1 if any mutation
survives or any baseline fails, 2 if an anchor no longer matches.

Run it from the repository root, on a quiet machine (one torch thread):

    .venv/bin/python tools/mutation_check.py            # all 27: ~940 s on the shared 2-core machine
                                                        # (load ~11), 447 s of it the two exports of
                                                        # the tiny model for the export mutation
    .venv/bin/python tools/mutation_check.py -k euro -k vgg   # names containing "euro" or "vgg"
    .venv/bin/python tools/mutation_check.py --list     # the mutations and their tests

It is not part of CI (it runs each selection twice); run it after changing a test named here
or the code a mutation anchors on.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NATIVE_DIR = Path("sdk/megaportraits")
ORT_LIBRARY = NATIVE_DIR / "libmegaportraits_ops.so"
ORT_HEADERS = Path("third_party/onnxruntime/include")
TEST_TIMEOUT_S = 900


@dataclasses.dataclass(frozen=True)
class Mutation:
    """One known-bad edit: ``old`` (exactly once in ``path``, a path or a glob relative to the
    repository) becomes ``new``; ``tests`` are pytest arguments (files, ``-k`` expressions) that
    must then fail. ``variants``: other (old, new) spellings of the same edit, tried in order
    when ``old`` is not found (code being moved or restyled)."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    variants: tuple[tuple[str, str], ...] = ()

    @property
    def native(self) -> bool:
        return self.path.startswith("cpp_ext/")


MUTATIONS = (
    # ---- export/: losses (the four of issue 19 first) ----------------------------------------
    Mutation("VGG19 layer weights all zero",
             "export/megaportraits_export/losses/perceptual.py",
             "VGG19_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)",
             "VGG19_LAYER_WEIGHTS = (0.0, 0.0, 0.0, 0.0, 0.0)",
             ("tests/export/test_losses.py",)),
    Mutation("multiscale_l1 is a plain L1",
             "export/megaportraits_export/losses/perceptual.py",
             "    total = F.l1_loss(prediction, target)\n    for _ in range(scales - 1):",
             "    return F.l1_loss(prediction, target)\n    total = 0\n    for _ in range(scales - 1):",
             ("tests/export/test_losses.py",)),
    Mutation("feature matching: first layer of the first scale only",
             "export/megaportraits_export/losses/discriminator.py",
             "    return torch.stack(per_scale).mean()",
             "    return F.l1_loss(fake[0][0], real[0][0].detach())",
             ("tests/export/test_losses.py",)),
    Mutation("CosFace margin on the negatives too",
             "export/megaportraits_export/losses/cycle.py",
             "negative_logits = torch.stack([scale * cosine(pair) for pair in negatives], dim=1)",
             "negative_logits = torch.stack([scale * (cosine(pair) - margin) for pair in negatives], dim=1)",
             ("tests/export/test_losses.py",)),
    Mutation("hinge loss of the mean logit, not the mean of the hinge",
             "export/megaportraits_export/losses/discriminator.py",
             "terms = [F.relu(1.0 - r[-1]).mean() + F.relu(1.0 + f[-1]).mean() for r, f in zip(real, fake)]",
             "terms = [F.relu(1.0 - r[-1].mean()) + F.relu(1.0 + f[-1].mean()) for r, f in zip(real, fake)]",
             ("tests/export/test_losses.py", "-k", "hinge")),
    # ---- sdk/: motion --------------------------------------------------------------------------
    Mutation("One-Euro: no adaptive cutoff",
             "sdk/megaportraits/motion.py",
             "cutoff = self.min_cutoff + self.beta * np.abs(self._speed)",
             "cutoff = self.min_cutoff",
             ("tests/sdk/test_one_euro_filter.py", "tests/sdk/test_sdk_animator.py")),
    Mutation("One-Euro: speed not low-passed",
             "sdk/megaportraits/motion.py",
             "self._speed = self._speed + a_d * (speed - self._speed)",
             "self._speed = speed",
             ("tests/sdk/test_one_euro_filter.py",)),
    Mutation("relative motion: theta_s theta_d0^-1 instead of theta_d0^-1 theta_s",
             "sdk/megaportraits/motion.py",
             "self._pose_tail = inverse_first @ homogeneous(source.pose.astype(np.float64))",
             "self._pose_tail = homogeneous(source.pose.astype(np.float64)) @ inverse_first",
             ("tests/sdk/test_sdk_animator.py", "-k", "relative")),
    Mutation("relative motion: expression offset z_d0 - z_s",
             "sdk/megaportraits/motion.py",
             "self._expression_offset = (source.expression.astype(np.float64)\n"
             "                                   - driver_first.expression.astype(np.float64))",
             "self._expression_offset = (driver_first.expression.astype(np.float64)\n"
             "                                   - source.expression.astype(np.float64))",
             ("tests/sdk/test_sdk_animator.py", "-k", "relative")),
    Mutation("compositing: the backdrop weighted by the matte, not 1 - matte",
             "sdk/megaportraits/compositing.py",
             "out += np.multiply(backdrop, plate, dtype=np.float32)",
             "out += np.multiply(matte, plate, dtype=np.float32)",
             ("tests/sdk/test_sdk_compositing.py", "-k", "formula")),
    Mutation("atomic output writes straight onto the destination",
             "sdk/megaportraits/files.py",
             "            yield tmp\n            os.replace(tmp, path)",
             "            yield path\n            os.replace(path, path)",
             ("tests/sdk/test_sdk_images.py", "-k", "atomic or midway")),
    Mutation("atomic output leaves its partial file behind when the write fails",
             "sdk/megaportraits/files.py",
             "            tmp.unlink(missing_ok=True)\n            raise write_failed(path, e) from None",
             "            raise write_failed(path, e) from None",
             ("tests/sdk/test_sdk_images.py", "-k", "atomic or midway")),
    Mutation("avatar generator inputs: the source pose fed from the frame's motion",
             "sdk/megaportraits/animator.py",
             "            **self.avatar.generator_inputs,\n            \"canonical_volume\": self.avatar.canonical_volume,",
             "            **self.avatar.generator_inputs, \"source_pose\": motion.pose,\n"
             "            \"canonical_volume\": self.avatar.canonical_volume,",
             ("tests/sdk/test_avatar_inputs.py",)),
    Mutation("avatar generator inputs: not bound on the device for an IO-bound stream",
             "sdk/megaportraits/binding.py",
             "\"global_descriptor\": descriptor, **(generator_inputs or {})}",
             "\"global_descriptor\": descriptor}",
             ("tests/sdk/test_avatar_inputs.py",)),
    # ---- export/: metrics and the warp -------------------------------------------------------
    Mutation("L1 metric is a batch mean, not per image",
             "export/megaportraits_export/metrics.py",
             "return (prediction.double() - target.double()).abs().flatten(1).mean(1)",
             "return (prediction.double() - target.double()).abs().mean().expand(prediction.shape[0])",
             ("tests/export/test_evaluate.py", "-k", "l1_and_psnr or accumulator")),
    Mutation("evaluation: cross driver shows the source's motion",
             "export/megaportraits_export/**/*.py",
             'images["cross_driver"].append(synthetic.render(id_b, m_d.pose, m_d.expression, size))',
             'images["cross_driver"].append(synthetic.render(id_b, m_s.pose, m_s.expression, size))',
             ("tests/export/test_evaluate.py", "-k", "heldout")),
    Mutation("evaluation: pose errors pair the drivers with the source's truth",
             "export/megaportraits_export/**/*.py",
             "truth = torch.cat((pairs.source_pose, pairs.driver_pose, pairs.driver_pose)).double()",
             "truth = torch.cat((pairs.source_pose, pairs.source_pose, pairs.driver_pose)).double()",
             ("tests/export/test_evaluate.py", "-k", "pose_errors")),
    Mutation("evaluation: relative motion with driver and reference swapped",
             "export/megaportraits_export/**/*.py",
             "motion = relative_motion((avatar.pose, avatar.expression), motion, base)",
             "motion = relative_motion((avatar.pose, avatar.expression), base, motion)",
             ("tests/export/test_evaluate.py", "-k", "relative")),
    Mutation("evaluation: relative pose theta_s theta_d0^-1 theta_d (reversed product)",
             "export/megaportraits_export/**/*.py",
             "pose = (_homogeneous(driver_motion[0]) @ _homogeneous(invert_pose(reference_motion[0]))\n"
             "            @ _homogeneous(source_motion[0]))[:, :3]",
             "pose = (_homogeneous(source_motion[0]) @ _homogeneous(invert_pose(reference_motion[0]))\n"
             "            @ _homogeneous(driver_motion[0]))[:, :3]",
             ("tests/export/test_evaluate.py", "-k", "relative_cross or relative_and_absolute")),
    Mutation("metric accumulator averages the batch means",
             "export/megaportraits_export/metrics.py",
             "self.sums.get(name, 0.0) + float(values.sum())\n        self.count += prediction.shape[0]",
             "self.sums.get(name, 0.0) + float(values.mean())\n        self.count += 1",
             ("tests/export/test_evaluate.py", "-k", "accumulator")),
    Mutation("pose matrix: translation not scaled and rotated",
             "export/megaportraits_export/warp.py",
             "rotation_matrix(rotation)\n    offset = linear @ translation.unsqueeze(-1)",
             "rotation_matrix(rotation)\n    offset = translation.unsqueeze(-1)",
             ("tests/export/test_warp.py",)),
    Mutation("export: the warp's custom op exported with border padding",
             "export/megaportraits_export/custom_op.py",
             '"padding_mode": padding_mode, "align_corners": int(align_corners)}',
             '"padding_mode": "border", "align_corners": int(align_corners)}',
             ("tests/export/test_onnx_export.py", "-k", "strong_rotations and tiny")),
    # ---- cpp_ext/: the GridSample3D kernel, through ONNX Runtime ------------------------------
    Mutation("kernel: align_corners unnormalisation swapped",
             "cpp_ext/grid_sample_3d*",
             "return align_corners ? ((g + 1.f) / 2.f) * (s - 1.f) : ((g + 1.f) * s - 1.f) / 2.f;",
             "return align_corners ? ((g + 1.f) * s - 1.f) / 2.f : ((g + 1.f) / 2.f) * (s - 1.f);",
             ("tests/cpp_ext/test_grid_sample_3d.py",)),
    Mutation("kernel: reflection does not fold back",
             "cpp_ext/grid_sample_3d*",
             "return (phase <= span ? phase : 2.f * span - phase) + low;",
             "return phase + low;",
             ("tests/cpp_ext/test_grid_sample_3d.py",)),
    Mutation("kernel: depth outside the volume not treated as padding",
             "cpp_ext/grid_sample_3d*",
             "corners.count = (x.inside && y.inside && z.inside) ? (linear ? 8 : 1) : 0;",
             "corners.count = (x.inside && y.inside) ? (linear ? 8 : 1) : 0;",
             ("tests/cpp_ext/test_grid_sample_3d.py",)),
    Mutation("op library: version script no longer hides the rest",
             "cpp_ext/ort_custom_op.map",
             "  local: *;\n",
             "",
             ("tests/cpp_ext/test_grid_sample_3d.py", "-k", "exports_only")),
    Mutation("kernel: nearest rounds half away from zero",
             "cpp_ext/grid_sample_3d*",
             "const float r = std::nearbyint(c);",
             "const float r = std::round(c);",
             ("tests/cpp_ext/test_grid_sample_3d.py",),
             variants=(("const float r = nearbyintf(c);", "const float r = roundf(c);"),)),
)


def repository_files(root: Path) -> list[str]:
    """Tracked files plus untracked ones git does not ignore (new tests count), that exist."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=root, check=True, capture_output=True).stdout.decode().split("\0")
    return sorted({name for name in listed if name and (root / name).is_file()})


def copy_repository(root: Path, destination: Path) -> None:
    for name in repository_files(root):
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    # the native libraries are build outputs (ignored): the copy starts with this tree's
    for library in sorted((root / NATIVE_DIR).glob("*.so")):
        shutil.copy2(library, destination / NATIVE_DIR / library.name)


def ort_headers() -> Path:
    """ONNX Runtime's C headers where setup.py finds them (they are ignored, so not copied)."""
    candidates = [Path(os.environ["ONNXRUNTIME_DIR"]) / "include"] if os.environ.get("ONNXRUNTIME_DIR") else []
    candidates += [ROOT / ORT_HEADERS, Path("/usr/include/onnxruntime"), Path("/usr/local/include/onnxruntime")]
    for candidate in candidates:
        if (candidate / "onnxruntime_c_api.h").is_file():
            return candidate
    raise SystemExit("error: no ONNX Runtime headers (onnxruntime_c_api.h) for the C++ mutations; "
                     "run tools/fetch_onnxruntime_headers.sh, or pick Python mutations with -k")


def build_ort_library(copy: Path) -> None:
    """The CPU custom-op library from the copy's cpp_ext/, as setup.py builds it, with g++
    directly: every C++ source but the pybind11 module's (no CUDA parts)."""
    sources = sorted(str(p.relative_to(copy)) for p in (copy / "cpp_ext").glob("*.cc")
                     if p.name != "python_bindings.cc")
    result = subprocess.run(
        ["g++", "-O3", "-fno-math-errno", "-std=c++17", "-fPIC", "-shared", "-fvisibility=hidden",
         "-Icpp_ext", f"-I{ort_headers()}", *sources, "-Wl,--no-undefined",
         "-Wl,--version-script=cpp_ext/ort_custom_op.map", "-o", str(ORT_LIBRARY)],
        cwd=copy, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: building {ORT_LIBRARY} in the copy failed:\n{result.stderr[-2000:]}")


def environment(copy: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy / "sdk"), str(copy / "export")]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def check_imports_come_from(copy: Path, python: str) -> None:
    code = ("import megaportraits, megaportraits_export; from megaportraits import _native; "
            "print(megaportraits.__file__); print(megaportraits_export.__file__); print(_native.__file__)")
    out = subprocess.run([python, "-c", code], cwd=copy, env=environment(copy), check=True,
                         capture_output=True, text=True).stdout.split()
    print("imported from the copy:", *out, sep="\n  ")
    outside = [path for path in out if not Path(path).resolve().is_relative_to(copy.resolve())]
    if outside:
        raise SystemExit(f"error: the copy's tests would import {outside[0]} from outside the copy; "
                         "is PYTHONPATH overridden by a non-editable install?")


def run_tests(copy: Path, python: str, selection: tuple[str, ...]) -> tuple[int, float, str]:
    start = time.perf_counter()
    try:
        result = subprocess.run([python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *selection],
                                cwd=copy, env=environment(copy), capture_output=True, text=True,
                                timeout=TEST_TIMEOUT_S)
        code, output = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired:
        code, output = -1, f"timed out after {TEST_TIMEOUT_S} s"
    return code, time.perf_counter() - start, output


NO_TESTS_COLLECTED = 5  # pytest's exit status when a selection matches nothing


def pytest_says(output: str) -> str:
    """pytest's closing summary ("1 failed, 3 passed"), without the time, or the last line."""
    lines = [line.strip(" =") for line in output.strip().splitlines()]
    for line in reversed(lines):
        if re.search(r"\d+ (failed|passed|errors?|skipped|deselected)", line) or "no tests ran" in line:
            return re.sub(r" in [\d.]+s.*$", "", line)
    return lines[-1] if lines else ""


def last_lines(text: str, n: int = 6) -> str:
    return "\n".join("      " + line for line in text.strip().splitlines()[-n:])


def locate(copy: Path, mutation: Mutation) -> tuple[Path, str, str]:
    """The one file under ``mutation.path`` (a path or a glob, so that code moved between
    modules of a package is still found) holding ``mutation.old`` (or else the first of its
    variants found), which must occur exactly once in all of them together; with the (old, new)
    pair found. Exits 2 otherwise: the code moved or changed, update MUTATIONS."""
    files = sorted(p for p in copy.glob(mutation.path) if p.is_file())
    texts = {p: p.read_text() for p in files}
    counts = []
    for old, new in ((mutation.old, mutation.new), *mutation.variants):
        found = {p: t.count(old) for p, t in texts.items()}
        total = sum(found.values())
        if total == 1:
            return next(p for p, n in found.items() if n), old, new
        counts.append(total)
        if total > 1:
            break  # ambiguous: refuse rather than guess
    where = f"{len(files)} file(s) matching {mutation.path}" if files else f"{mutation.path} (no such file)"
    raise SystemExit(f"error: mutation {mutation.name!r}: its text occurs {' / '.join(map(str, counts))} times "
                     f"in {where}, expected once; the code moved or changed: update MUTATIONS in "
                     "tools/mutation_check.py")


def apply(copy: Path, mutation: Mutation) -> tuple[Path, str]:
    """Write the mutated file; return it and its original text."""
    path, old, new = locate(copy, mutation)
    original = path.read_text()
    path.write_text(original.replace(old, new))
    return path, original


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="only", action="append", metavar="TEXT",
                        help="run only mutations whose name contains TEXT (case-insensitive); repeatable")
    parser.add_argument("--list", action="store_true", help="list the mutations and their tests, run nothing")
    parser.add_argument("--tests", metavar="ARGS", type=shlex.split,
                        help="run these pytest arguments for every chosen mutation instead of its own "
                             "(e.g. to see whether an older test catches it)")
    parser.add_argument("--no-baseline", action="store_true", help="do not run the selections unmutated first")
    parser.add_argument("--python", default=sys.executable, help="interpreter with the project's dependencies")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    args = parser.parse_args(argv)

    chosen = [m for m in MUTATIONS if not args.only or any(t.lower() in m.name.lower() for t in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name}\n    {m.path}\n    pytest {' '.join(m.tests)}")
        return 0
    if not chosen:
        print(f"error: no mutation name contains {' or '.join(map(repr, args.only))}; --list shows them",
              file=sys.stderr)
        return 2

    if args.tests:
        chosen = [dataclasses.replace(m, tests=tuple(args.tests)) for m in chosen]
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="mutation_check_"))
    copy = workdir / "repo"
    try:
        copy_repository(ROOT, copy)
        # every anchor is checked before anything runs, so a moved one fails in seconds
        for m in chosen:
            locate(copy, m)
        check_imports_come_from(copy, args.python)
        print(f"copy of {ROOT} in {copy}; {len(chosen)} mutations")
        if any(m.native for m in chosen):
            build_ort_library(copy)  # the baseline runs on a library built the same way
        pristine_library = (copy / ORT_LIBRARY).read_bytes() if (copy / ORT_LIBRARY).exists() else None

        failed_baselines = []
        if not args.no_baseline:
            for selection in dict.fromkeys(m.tests for m in chosen):
                code, seconds, output = run_tests(copy, args.python, selection)
                print(f"baseline  {'ok  ' if code == 0 else 'FAIL'}  {seconds:6.1f} s  pytest {' '.join(selection)}"
                      f"  ({pytest_says(output)})", flush=True)
                if code != 0:
                    failed_baselines.append(selection)
                    print(last_lines(output))

        rows = []
        for m in chosen:
            path, original = apply(copy, m)
            try:
                if m.native:
                    build_ort_library(copy)
                code, seconds, output = run_tests(copy, args.python, m.tests)
            finally:
                path.write_text(original)
                if m.native and pristine_library is not None:
                    (copy / ORT_LIBRARY).write_bytes(pristine_library)
            caught = code not in (0, NO_TESTS_COLLECTED)  # selecting nothing catches nothing
            said = pytest_says(output)
            rows.append((m, caught, seconds, said))
            print(f"mutation  {'caught  ' if caught else 'SURVIVED'}  {seconds:6.1f} s  {m.name}  ({said})", flush=True)
            if not caught or code != 1:
                print(last_lines(output, 3))
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    width = max([len(m.name) for m, *_ in rows] + [8])
    print(f"\n| {'mutation':{width}} | caught? | seconds | pytest says\n|{'-' * (width + 2)}|---------|---------|------------")
    for m, caught, seconds, said in rows:
        print(f"| {m.name:{width}} | {'yes' if caught else 'NO':7} | {seconds:7.1f} | {said}")
    survivors = [m.name for m, caught, *_ in rows if not caught]
    total = time.perf_counter() - started
    print(f"\n{len(rows) - len(survivors)} of {len(rows)} mutations caught; total {total:.0f} s")
    if failed_baselines:
        print(f"error: {len(failed_baselines)} selection(s) fail without any mutation (see above): fix them first")
    if survivors:
        print("error: surviving mutations: " + "; ".join(survivors))
    return 1 if survivors or failed_baselines else 0


if __name__ == "__main__":
    sys.exit(main())
