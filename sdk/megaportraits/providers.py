"""The one place that maps the user's provider choice to ONNX Runtime execution providers."""
from __future__ import annotations

import onnxruntime as ort

from .errors import ProviderError

PROVIDER_CHOICES = ("auto", "cpu", "cuda")

_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def resolve_providers(choice: str, available: list[str] | None = None) -> list[str]:
    """``auto`` takes CUDA when this onnxruntime has it, else the CPU; CPU always comes last,
    so nodes without a CUDA kernel (e.g. the custom op on a CPU-only build of it) still run."""
    available = available_providers() if available is None else list(available)
    choice = str(choice).lower()
    if choice not in PROVIDER_CHOICES:
        raise ProviderError(f"unknown provider {choice!r}; choose one of {', '.join(PROVIDER_CHOICES)}")
    if choice == "cpu":
        return [_CPU]
    if choice == "cuda":
        if _CUDA not in available:
            raise ProviderError(
                "provider 'cuda' is not available in this onnxruntime (available: "
                f"{', '.join(available)}); install onnxruntime-gpu (pip install 'megaportraits[gpu]') "
                "or use --provider cpu")
        return [_CUDA, _CPU]
    return [_CUDA, _CPU] if _CUDA in available else [_CPU]


def device_of(providers: list[str]) -> str:
    """Where tensors that stay on the device between calls (the avatar's volume) should live."""
    return "cuda" if providers and providers[0] == _CUDA else "cpu"
