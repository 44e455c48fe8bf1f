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

  When nvcc and the CUDA toolkit's headers and static runtime are found as well, the library
  also carries the op's CUDA flavours (cpp_ext/grid_sample_3d_cuda.cu, registered for the CUDA
  execution provider when the loading onnxruntime has it). The CUDA runtime is linked
  statically, so the library still loads on machines without a GPU or a CUDA install. A failed
  CUDA compile falls back to the CPU-only library with a warning. ``MEGAPORTRAITS_CUDA=0``
  skips the CUDA parts, ``=1`` makes their absence or failure a build error;
  ``MEGAPORTRAITS_CUDA_ARCHS`` (e.g. ``"80;90"``) picks the GPU architectures.

See docs/building.md.
"""
import os
import shutil
import subprocess
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


CUDA_MODE = os.environ.get("MEGAPORTRAITS_CUDA", "auto").strip().lower()  # auto | 0 | 1
CUDA_SOURCE = "cpp_ext/grid_sample_3d_cuda.cu"
# Ampere, Ada, Hopper as machine code, plus Hopper PTX that newer GPUs compile at load time.
DEFAULT_CUDA_ARCHS = "80;86;89;90"


def cuda_toolkit() -> tuple[str, Path] | None:
    """(nvcc, toolkit root) when nvcc, cuda_runtime.h and the static runtime are all there."""
    roots = [Path(os.environ[v]) for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(Path(nvcc).resolve().parent.parent)
    roots.append(Path("/usr/local/cuda"))
    for root in roots:
        compiler = root / "bin" / "nvcc"
        static_runtime = [root / lib / "libcudart_static.a" for lib in ("lib64", "lib")]
        if compiler.is_file() and (root / "include" / "cuda_runtime.h").is_file() and any(
                p.is_file() for p in static_runtime):
            return str(compiler), root
    return None


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

    def build_extension(self, ext):
        if ext.name == ORT_LIBRARY_MODULE and CUDA_MODE != "0":
            self._add_cuda(ext)
        super().build_extension(ext)

    def _add_cuda(self, ext) -> None:
        """Compile the CUDA flavours with nvcc and link them in; without a toolkit (or when its
        compile fails) the library is built CPU-only, exactly as without this step."""
        toolkit = cuda_toolkit()
        if toolkit is None:
            if CUDA_MODE == "1":
                sys.exit("error: MEGAPORTRAITS_CUDA=1 but no CUDA toolkit (nvcc, cuda_runtime.h, "
                         "libcudart_static.a) was found; set CUDA_HOME")
            return
        nvcc, root = toolkit
        archs = os.environ.get("MEGAPORTRAITS_CUDA_ARCHS", DEFAULT_CUDA_ARCHS).replace(",", ";").split(";")
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs if a.strip()]
        gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
        obj = Path(self.build_temp) / "grid_sample_3d_cuda.o"
        obj.parent.mkdir(parents=True, exist_ok=True)
        command = [nvcc, "-std=c++17", "-O3", "-Xcompiler", "-fPIC,-fvisibility=hidden", "-Icpp_ext",
                   *gencode, "-c", str(ROOT / CUDA_SOURCE), "-o", str(obj)]
        print("megaportraits: compiling the CUDA kernel: " + " ".join(command), flush=True)
        try:
            subprocess.run(command, check=True, cwd=ROOT)
        except (OSError, subprocess.CalledProcessError) as e:
            if CUDA_MODE == "1":
                sys.exit(f"error: MEGAPORTRAITS_CUDA=1 and the CUDA kernel did not compile ({e})")
            warn_loudly(f"the CUDA kernel did not compile ({e}); building the CPU-only op library")
            return
        lib = next(root / d for d in ("lib64", "lib") if (root / d / "libcudart_static.a").is_file())
        ext.extra_objects = [*(ext.extra_objects or []), str(obj)]
        ext.include_dirs = [*ext.include_dirs, str(root / "include")]
        ext.define_macros = [*(ext.define_macros or []), ("MEGAPORTRAITS_WITH_CUDA", "1")]
        ext.extra_link_args = [*ext.extra_link_args, f"-L{lib}", "-lcudart_static", "-ldl", "-lrt", "-lpthread"]
        ext.depends = [*(ext.depends or []), CUDA_SOURCE]
        print(f"megaportraits: the op library gets CUDA flavours (toolkit {root}, sm {', '.join(archs)})")

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
                                    "assets/demo_bundle/*", "assets/demo_student/*"]},
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
