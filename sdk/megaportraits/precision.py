"""Which graph precisions each execution provider runs well, and the one-line refusal otherwise.

A bundle's manifest records each graph's precision (fp32, fp16 or int8; ``export --precision``).
The SDK opens a bundle only where its graphs run as intended: int8 graphs (static QDQ) on the
CPU, whose int8 kernels (VNNI, AMX) are what they were made for; fp16 graphs on CUDA. The
other pairings would run, but slower than the fp32 bundle of the same model, silently: ONNX
Runtime's x86 CPU provider has no float16 convolutions (it would convert every layer back to
float32 around each node), and its CUDA provider has no int8 convolutions (it would
dequantize every weight on every frame). fp32 runs everywhere.
"""
from __future__ import annotations

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"

PROVIDER_PRECISIONS = {CPU: ("fp32", "int8"), CUDA: ("fp32", "fp16")}
_WHY = {
    (CPU, "fp16"): "ONNX Runtime's CPU provider has no float16 convolutions and would run them through "
                   "float32 conversions, slower than fp32",
    (CUDA, "int8"): "ONNX Runtime's CUDA provider has no int8 convolutions and would dequantize every weight "
                    "on every frame, slower than fp32",
}
_FIX = {CPU: "use --provider cuda on a GPU, or a bundle exported with --precision fp32 or int8",
        CUDA: "use --provider cpu, or a bundle exported with --precision fp32 or fp16"}


def graph_precisions(manifest) -> dict:
    """role -> precision of each graph the manifest lists."""
    return {role: getattr(spec, "precision", "fp32") for role, spec in manifest.graphs.items()}


def precision_problem(manifest, providers: list) -> str | None:
    """None when every graph's precision suits the first (main) provider, else why not and what
    to do, in one line."""
    if not providers:
        return None
    main = providers[0]
    supported = PROVIDER_PRECISIONS.get(main)
    if supported is None:
        return None  # a provider this SDK does not choose itself: let ONNX Runtime decide
    wrong = {role: p for role, p in graph_precisions(manifest).items() if p not in supported}
    if not wrong:
        return None
    precision = sorted(set(wrong.values()))[0]
    roles = ", ".join(sorted(role for role, p in wrong.items() if p == precision))
    device = "cpu" if main == CPU else "cuda"
    return (f"this bundle's {roles} graph(s) are {precision}, which the {device} provider does not run well "
            f"({_WHY.get((main, precision), 'no kernels for it')}); {_FIX[main]}")
