"""One distribution, ``megaportraits``: the SDK, the export side, and the native op library.

The native parts (cpp_ext/) are built by the ``build_ext`` command below into the
``megaportraits`` package:

* ``megaportraits/_grid_sample_3d*.so`` - pybind11 module, always built;
* ``megaportraits/libmegaportraits_ops.so`` - the ONNX Runtime custom-op library. It needs
  ONNX Runtime's C headers (not shipped in the onnxruntime wheel), looked up in order:
  ``$ONNXRUNTIME_DIR/include``, ``third_party/onnxruntime/include`` (filled by
  ``tools/fetch_onnxruntime_headers.sh``), ``/usr/include/onnxruntime``,
  ``/usr/local/include/onnxruntime``. Without them the build still succeeds, with a loud
  warning, unless ``MEGAPORTRAITS_REQUIRE_ORT_LIBRARY=1`` (set by CI) makes it fail.

See docs/building.md.
"""
import os
import sys
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension
from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
ORT_LIBRARY_MODULE = "megaportraits.libmegaportraits_ops"
REQUIRE_ORT_LIBRARY = os.environ.get("MEGAPORTRAITS_REQUIRE_ORT_LIBRARY", "") not in ("", "0")

# No -march: the library runs on users' machines. The hot loops carry x86-64-v3/v4 clones
# chosen at load time (see cpp_ext/grid_sample_3d.cc).
NATIVE_COMPILE_ARGS = ["-O3", "-fno-math-errno", "-Wall", "-Wextra"]
KERNEL_SOURCES = ["cpp_ext/grid_sample_3d.cc"]


def onnxruntime_include_dir() -> str | None:
    """The first directory holding onnxruntime_c_api.h, or None."""
    candidates = []
    if os.environ.get("ONNXRUNTIME_DIR"):
        base = Path(os.environ["ONNXRUNTIME_DIR"])
        candidates += [base / "include", base / "include" / "onnxruntime", base]
    candidates += [
        ROOT / "third_party" / "onnxruntime" / "include",
        Path("/usr/include/onnxruntime"),
        Path("/usr/local/include/onnxruntime"),
    ]
    for candidate in candidates:
        if (candidate / "onnxruntime_c_api.h").is_file():
            return str(candidate)
    return None


MISSING_HEADERS = (
    "ONNX Runtime headers (onnxruntime_c_api.h) not found, so the custom-op library "
    "megaportraits/libmegaportraits_ops.so is NOT built and megaportraits.custom_ops_library() will "
    "raise. Fix: run tools/fetch_onnxruntime_headers.sh (Debian/Ubuntu), or set ONNXRUNTIME_DIR to an "
    "onnxruntime release archive, or install libonnxruntime-dev; then reinstall."
)


def warn_loudly(message: str) -> None:
    bar = "!" * 100
    print(f"\n{bar}\nWARNING: {message}\n{bar}\n", file=sys.stderr, flush=True)


class BuildNative(build_ext):
    """build_ext that names the ONNX Runtime library like a plain shared library.

    onnxruntime loads it by path, not as a Python module, so it gets a stable file name
    (libmegaportraits_ops.so) instead of the interpreter-tagged one.
    """

    def get_ext_filename(self, fullname):
        # Called with the dotted name or with its last part alone, depending on the caller.
        if ORT_LIBRARY_MODULE.endswith(fullname):
            return os.path.join(*fullname.split(".")) + ".so"
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext):
        if ext.name == ORT_LIBRARY_MODULE:
            return []  # exports are set by the version script, not PyInit_*
        return super().get_export_symbols(ext)


def native_extensions() -> list[Extension]:
    extensions = [
        Pybind11Extension(
            "megaportraits._grid_sample_3d",
            sources=KERNEL_SOURCES + ["cpp_ext/python_bindings.cc"],
            include_dirs=["cpp_ext"],
            extra_compile_args=NATIVE_COMPILE_ARGS,
            cxx_std=17,
        )
    ]
    include_dir = onnxruntime_include_dir()
    if include_dir is None:
        if REQUIRE_ORT_LIBRARY:
            sys.exit(f"error: MEGAPORTRAITS_REQUIRE_ORT_LIBRARY is set and {MISSING_HEADERS}")
        warn_loudly(MISSING_HEADERS)
        return extensions
    print(f"megaportraits: building the ONNX Runtime custom-op library with headers from {include_dir}")
    extensions.append(
        Extension(
            ORT_LIBRARY_MODULE,
            sources=KERNEL_SOURCES + ["cpp_ext/ort_custom_op.cc"],
            include_dirs=["cpp_ext", include_dir],
            extra_compile_args=NATIVE_COMPILE_ARGS + ["-std=c++17", "-fvisibility=hidden"],
            extra_link_args=[f"-Wl,--version-script={ROOT / 'cpp_ext' / 'ort_custom_op.map'}"],
            language="c++",
        )
    )
    return extensions


setup(
    name="megaportraits",
    version="0.1.0",
    description="One-shot neural head avatars (MegaPortraits) on ONNX Runtime",
    python_requires=">=3.10",
    package_dir={"megaportraits": "sdk/megaportraits", "megaportraits_export": "export/megaportraits_export"},
    # every subpackage under the two roots, so a new one can never be left out of a wheel
    packages=find_packages("sdk") + find_packages("export"),
    # the face cascade, and the bundled demo: model bundle, source portrait and driving clip
    package_data={"megaportraits": ["data/*.xml", "assets/*.png", "assets/*.mp4", "assets/*.md",
                                    "assets/demo_bundle/*"]},
    ext_modules=native_extensions(),
    cmdclass={"build_ext": BuildNative},
    # onnxruntime and onnxruntime-gpu install the same `onnxruntime` module; [gpu] users replace
    # the CPU wheel as docs/building.md says (pip cannot express "instead of").
    install_requires=["numpy>=1.24", "onnxruntime>=1.17", "opencv-python-headless>=4.8", "av>=12", "tqdm>=4.60"],
    extras_require={
        "export": ["torch>=2.4", "onnx>=1.16", "onnxscript>=0.2", "safetensors>=0.4", "tensorboard>=2.14"],
        "gpu": ["onnxruntime-gpu>=1.17"],
        "dev": ["pytest>=7", "onnx>=1.16", "matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["megaportraits=megaportraits.cli:main"]},
)
