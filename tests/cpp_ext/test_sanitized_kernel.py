"""The GridSample3D kernel under AddressSanitizer and UndefinedBehaviorSanitizer.

Compiles cpp_ext/grid_sample_3d.cc with a fuzz driver (fuzz_grid_sample_3d.cc) and runs it:
no out-of-bounds read or write, no undefined float-to-int conversion, and finite outputs for
grids full of NaN, inf, huge and boundary values, on awkward shapes.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPILER = shutil.which("g++") or shutil.which("clang++")


@pytest.mark.skipif(COMPILER is None, reason="needs a C++ compiler (g++ or clang++) to build the sanitized kernel")
def test_kernel_is_clean_under_address_and_undefined_behaviour_sanitizers(tmp_path):
    binary = tmp_path / "fuzz_grid_sample_3d"
    subprocess.run(
        [COMPILER, "-std=c++17", "-O1", "-g", "-fno-omit-frame-pointer",
         "-fsanitize=address,undefined,float-cast-overflow", "-fno-sanitize-recover=all",
         f"-I{REPO / 'cpp_ext'}", str(REPO / "cpp_ext" / "grid_sample_3d.cc"),
         str(Path(__file__).with_name("fuzz_grid_sample_3d.cc")), "-o", str(binary)],
        check=True, capture_output=True, text=True)
    run = subprocess.run([str(binary), "150"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert int(run.stdout.strip()) == 150 * 12
