"""Where the work runs and at what precision: the one place that picks a device and resolves AMP settings."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

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


# oneDNN's instruction-set caps (ONEDNN_MAX_CPU_ISA) and the best of `UNITS` each leaves its kernels: a cap below
# AVX512_CORE_BF16 makes bf16 emulated even on a CPU with bf16 units (a 10x slower model step, measured).
ONEDNN_CAPS = {
    "SSE41": None,
    "AVX": None,
    "AVX2": "avx2",
    "AVX2_VNNI": "avx2",
    "AVX2_VNNI_2": "avx2",
    "AVX512_CORE": "avx512f",
    "AVX512_CORE_VNNI": "avx512f",
}


def onednn_cap() -> str | None:
    """The instruction set oneDNN is capped at by the environment when the cap takes bf16 units away, else None."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    return cap if cap in ONEDNN_CAPS else None


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles) and oneDNN may use it.

    There bf16 autocast makes the small_cnn pretraining loop 1.3-1.5x faster than fp32 (docs/benchmarks.md);
    elsewhere bf16 is emulated and slower, so 'auto' keeps fp32. torch's probes read the CPU's flags only, so a cap
    set by ONEDNN_MAX_CPU_ISA (how a CPU without bf16 units is emulated, docs/development.md) is checked here.
    """
    if onednn_cap():
        return False
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
    return Precision(amp_dtype(setting, device), torch.contiguous_format).amp


def memory_format(setting: bool | str, device: torch.device) -> torch.memory_format:
    """channels_last when asked (`True`), or on `auto` on CUDA and CPU, where convolutions run faster in it (bench/
    finetune_throughput.py, bench/pretrain_throughput.py: docs/benchmarks.md); contiguous otherwise (MPS)."""
    wanted = setting is True or (setting == "auto" and device.type in ("cuda", "cpu"))
    return torch.channels_last if wanted else torch.contiguous_format


@dataclass(frozen=True)
class Precision:
    """How a training loop computes: the autocast dtype (None: fp32) and the layout of its images and weights."""

    dtype: torch.dtype | None
    memory_format: torch.memory_format

    @classmethod
    def resolve(cls, amp: str, channels_last: bool | str, device: torch.device) -> Precision:
        """The settings of params.yaml (`amp`, `channels_last`) as they come out on `device`."""
        return cls(amp_dtype(amp, device), memory_format(channels_last, device))

    @property
    def amp(self) -> str:
        """bf16, fp16 or off: what a run records as its precision."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "off")


FP32 = Precision(None, torch.contiguous_format)  # plain fp32, the layout torch gives: what bench/ scripts compare


# Vector units torch's CPU kernels use, best first: bf16 in hardware (what `amp: auto` looks for), then widths.
UNITS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


def cpu_model(cpuinfo: str | None = None) -> str:
    """`<model name> (family F model M, <best unit>)` from /proc/cpuinfo (or the text given), else what `platform`
    knows, e.g. `AMD EPYC (family 25 model 1, avx2)`. Under a oneDNN cap (`onednn_cap`) the unit is the best the cap
    leaves, named with it: `avx2 under ONEDNN_MAX_CPU_ISA=AVX2`."""
    if cpuinfo is None:
        cpuinfo = ""
        with contextlib.suppress(OSError):
            cpuinfo = Path("/proc/cpuinfo").read_text()
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:  # the first processor's
            fields[key.strip()] = value.strip()
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    unit = next((u for u in UNITS if u in flags), None)
    cap = onednn_cap()
    if cap and unit:  # the units oneDNN's kernels may use, not the CPU's: what the figures were computed with
        allowed = ONEDNN_CAPS[cap]
        unit = next((u for u in UNITS[UNITS.index(allowed) :] if u in flags), None) if allowed else None
        unit = f"{unit or 'no AVX2'} under ONEDNN_MAX_CPU_ISA={cap}"
    details = [f"family {fields['cpu family']} model {fields['model']}" if "cpu family" in fields else "", unit or ""]
    details = [d for d in details if d]
    return f"{name} ({', '.join(details)})" if details else name


def machine(device: torch.device) -> str:
    """What a result was computed on, recorded beside it: the GPU's name on CUDA, else the CPU (`cpu_model`). The
    same run on two machines agrees within the seed spread, bit for bit only on one machine and precision."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()
