"""Which precision of each graph runs here: the user's choice, the provider, the bundle's flavours.

A bundle's manifest records each graph's precision (fp32, fp16 or int8; ``export --precision``),
and a graph may be carried in several precisions at once (``export --precision fp32,int8``:
``GraphSpec.flavours``). The SDK runs a graph only in a precision its provider runs as
intended: int8 graphs (static QDQ) on the CPU, whose int8 kernels (VNNI, AMX) are what they
were made for; fp16 graphs on CUDA. The other pairings would run, but slower than fp32,
silently: ONNX Runtime's x86 CPU provider has no float16 convolutions (it would convert every
layer back to float32 around each node), and its CUDA provider has no int8 convolutions (it
would dequantize every weight on every frame). fp32 runs everywhere.

``precision="auto"`` (the default) takes, per graph, the fastest flavour the provider runs well
(CPU: int8, then fp32; CUDA: fp16, then fp32), so a bundle written before flavours existed
opens exactly as before. An explicit precision takes that flavour wherever the bundle carries
it (the source graph runs once per avatar and is always fp32) and is refused, in one line, when
the provider does not run it well or no graph of the bundle has it.

On CUDA, an fp16 custom-op generator also needs the op library's CUDA kernel: without it ONNX
Runtime would run the warp on the CPU and copy the volume across PCIe twice per frame. The
library is built with that kernel when nvcc is found (setup.py); :func:`library_has_cuda` reads
which kind this installation has.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import BundleError, MegaportraitsError
from .manifest import PRECISIONS

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"

PRECISION_CHOICES = ("auto",) + PRECISIONS
#: per provider, the precisions it runs well, the fastest first (what ``auto`` prefers)
PROVIDER_PRECISIONS = {CPU: ("int8", "fp32"), CUDA: ("fp16", "fp32")}
_DEVICE = {CPU: "cpu", CUDA: "cuda"}
_WHY = {
    (CPU, "fp16"): "ONNX Runtime's CPU provider has no float16 convolutions and would run them through "
                   "float32 conversions, slower than fp32",
    (CUDA, "int8"): "ONNX Runtime's CUDA provider has no int8 convolutions and would dequantize every weight "
                    "on every frame, slower than fp32",
}
_OTHER_PROVIDER = {CPU: "--provider cuda on a GPU", CUDA: "--provider cpu"}
_FIX = {CPU: f"use {_OTHER_PROVIDER[CPU]}, or a bundle exported with --precision fp32 or int8",
        CUDA: f"use {_OTHER_PROVIDER[CUDA]}, or a bundle exported with --precision fp32 or fp16"}
# A string only the CUDA build of the op library holds (cpp_ext/grid_sample_3d_cuda.cu's errors).
CUDA_LIBRARY_MARKER = b"GridSample3D (CUDA)"


def check_precision_choice(precision) -> str:
    """``precision`` when it is one of :data:`PRECISION_CHOICES`, else one error line."""
    if not isinstance(precision, str) or precision not in PRECISION_CHOICES:
        raise MegaportraitsError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, not {precision!r}")
    return precision


def graph_precisions(manifest) -> dict:
    """role -> the precision of each graph's main file."""
    return {role: getattr(spec, "precision", "fp32") for role, spec in manifest.graphs.items()}


def available_precisions(spec) -> tuple:
    """Every precision a graph is carried in (main file first); old specs: their one precision."""
    return tuple(getattr(spec, "precisions", (getattr(spec, "precision", "fp32"),)))


def reference_precision(manifest) -> str:
    """The choice for tools that measure or distil a bundle (evaluation, distillation targets,
    fidelity, the student benchmark): ``fp32`` when every graph carries it, so that a bundle that
    also carries int8 or fp16 flavours is measured as exported rather than in whatever ``auto``
    picks on this provider; ``auto`` for a bundle without full-precision graphs (an int8-only
    export is measured as it is). Callers report :meth:`Bundle.precision` with their figures."""
    carried = [available_precisions(spec) for spec in manifest.graphs.values()]
    return "fp32" if carried and all("fp32" in have for have in carried) else "auto"


@dataclass(frozen=True)
class PrecisionChoice:
    """What runs: ``graphs`` role -> precision, or ``problem`` (one line) when nothing may."""

    graphs: dict
    problem: str | None = None

    def raise_for_problem(self) -> "PrecisionChoice":
        if self.problem:
            raise BundleError(self.problem)
        return self


def choose_precisions(manifest, providers: list, requested: str = "auto", *, custom_op_graphs: bool = False,
                      library: str | None = None) -> PrecisionChoice:
    """Pick each graph's precision for the first (main) provider of ``providers`` (never raises
    for a bundle; an invalid ``requested`` raises :class:`MegaportraitsError`).

    ``custom_op_graphs``: the custom-op graphs will run (not the portable twins), with the op
    library at ``library``; on CUDA an fp16 graph then needs the library's CUDA kernel."""
    check_precision_choice(requested)
    main = providers[0] if providers else CPU
    preferred = PROVIDER_PRECISIONS.get(main)
    available = {role: available_precisions(spec) for role, spec in manifest.graphs.items()}
    if preferred is None:  # a provider this SDK does not choose itself: let ONNX Runtime decide
        return PrecisionChoice({role: requested if requested in have else have[0]
                                for role, have in available.items()})
    device = _DEVICE[main]
    if requested != "auto" and requested not in preferred:
        return PrecisionChoice({}, f"--precision {requested}: the {device} provider does not run {requested} graphs "
                                   f"well ({_WHY.get((main, requested), 'no kernels for it')}); choose "
                                   f"{' or '.join(preferred)} (or auto), or use {_OTHER_PROVIDER[main]}")
    if requested != "auto" and not any(requested in have for have in available.values()):
        carried = sorted({p for have in available.values() for p in have}, key=PRECISIONS.index)
        return PrecisionChoice({}, f"--precision {requested}: this bundle has no {requested} graphs (it carries "
                                   f"{', '.join(carried)}); re-export it with --precision "
                                   f"{','.join(carried + [requested])}, or use --precision auto")
    chosen, wrong = {}, {}
    for role, have in available.items():
        order = ((requested,) if requested != "auto" else ()) + preferred
        fitting = [p for p in order if p in have]
        if fitting:
            chosen[role] = fitting[0]
        else:
            wrong[role] = have[0]
    if wrong:
        precision = sorted(set(wrong.values()))[0]
        roles = ", ".join(sorted(role for role, p in wrong.items() if p == precision))
        return PrecisionChoice(chosen, f"this bundle's {roles} graph(s) are {precision}, which the {device} provider "
                                       f"does not run well ({_WHY.get((main, precision), 'no kernels for it')}); "
                                       f"{_FIX[main]}")
    if main == CUDA and custom_op_graphs and "fp16" in chosen.values() and not library_has_cuda(library):
        roles = ", ".join(sorted(role for role, p in chosen.items() if p == "fp16"))
        return PrecisionChoice(chosen, f"the fp16 {roles} graph(s) need the op library's CUDA kernel, which this "
                                       "installation's library was built without (the warp would run on the CPU "
                                       "and copy its volume across PCIe every frame); rebuild it with nvcc "
                                       "(docs/building.md), use the portable graphs (--portable), or --precision fp32")
    return PrecisionChoice(chosen)


def precision_problem(manifest, providers: list) -> str | None:
    """None when every graph has a flavour its (first) provider runs well, else why not and what
    to do, in one line (``choose_precisions`` with ``auto``)."""
    return choose_precisions(manifest, providers).problem


def library_has_cuda(library: str | Path | None) -> bool:
    """True when the op library at ``library`` was built with its CUDA kernel (reads the file;
    False for None or an unreadable file)."""
    if library is None:
        return False
    try:
        return CUDA_LIBRARY_MARKER in Path(library).read_bytes()
    except OSError:
        return False
