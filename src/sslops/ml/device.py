"""Where the work runs and at what precision: the one place that picks a device and resolves AMP settings."""

from __future__ import annotations

import os

import torch


def pick_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu, unless named explicitly."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles).

    There bf16 autocast makes the small_cnn pretraining loop 1.3-1.5x faster than fp32 (docs/benchmarks.md);
    elsewhere bf16 is emulated and slower, so 'auto' keeps fp32.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


AMP_SETTINGS = ("auto", "bf16", "fp16", "off")


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `setting` (auto | bf16 | fp16 | off) on `device`, None for full fp32.

    'auto': bf16 on CUDA where supported (else fp16 with a scaler), bf16 on a CPU with native bf16, fp32 otherwise.
    """
    if setting == "off":
        return None
    if setting == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
    if setting == "fp16":
        return torch.float16
    if setting == "bf16":
        return torch.bfloat16
    raise ValueError(f"unknown amp setting '{setting}' ({' | '.join(AMP_SETTINGS)})")


def amp_name(setting: str, device: torch.device) -> str:
    """What `setting` resolves to on `device` as a setting name (bf16, fp16 or off): recorded with each run."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype(setting, device), "off")
