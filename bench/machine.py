"""Which CPU a benchmark ran on: its figures mean little without it (the development machines change).

The model name alone says too little here: the VMs report "AMD EPYC" for a Zen 3 without bf16 and a Zen 5 with it,
whose pretraining differs by 4-7x in speed and, with `amp: auto`, in precision. So the family, the model number and
the widest vector unit that matters to torch's CPU kernels are named too.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

# Vector units torch's CPU kernels use, best first: bf16 in hardware (what `amp: auto` looks for), then widths.
UNITS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


def cpu_model(cpuinfo: str | None = None) -> str:
    """`<model name> (family F model M, <best unit>)` from /proc/cpuinfo (or the text given), else what `platform`
    knows, e.g. `AMD EPYC (family 25 model 1, avx2)`."""
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
    details = [f"family {fields['cpu family']} model {fields['model']}" if "cpu family" in fields else "", unit or ""]
    details = [d for d in details if d]
    return f"{name} ({', '.join(details)})" if details else name
