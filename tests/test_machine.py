"""Every result names its machine well enough to tell two development machines apart (sslops.ml.device)."""

from __future__ import annotations

import pytest

from sslops.ml.device import cpu_model

ZEN3 = (
    "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n"
    "flags\t\t: fpu sse avx avx2 fma\n"
)
ZEN5 = ZEN3.replace(": 25", ": 26").replace("avx2 fma", "avx2 avx512f avx512_bf16 fma")


@pytest.fixture(autouse=True)
def _no_onednn_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The names below are the CPU's own: a suite run under ONEDNN_MAX_CPU_ISA (docs/development.md) renames them."""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)


def test_two_epycs_of_the_same_name_are_told_apart() -> None:
    assert cpu_model(ZEN3) == "AMD EPYC (family 25 model 1, avx2)"
    assert cpu_model(ZEN5) == "AMD EPYC (family 26 model 1, avx512_bf16)"
    second = ZEN3 + "\nprocessor\t: 1\ncpu family\t: 99\n"  # every processor repeats the fields: the first one's count
    assert cpu_model(second) == cpu_model(ZEN3)


def test_without_cpuinfo_the_platform_name_stands() -> None:
    assert cpu_model("") and "(" not in cpu_model("")


def test_a_onednn_cap_below_bf16_keeps_auto_in_fp32_and_is_named_with_the_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch's bf16 probes read the CPU's flags, not oneDNN's cap: under ONEDNN_MAX_CPU_ISA=AVX2 bf16 is emulated
    (10x slower than fp32), so `amp: auto` must not pick it, and the figures must not claim avx512_bf16."""
    import torch

    from sslops.ml import device

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_bf16")  # a cap that keeps bf16 units changes nothing
    assert device.cpu_has_native_bf16()
    assert device.amp_dtype("auto", torch.device("cpu")) == torch.bfloat16
    assert cpu_model(ZEN5) == "AMD EPYC (family 26 model 1, avx512_bf16)"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert not device.cpu_has_native_bf16()
    assert device.amp_dtype("auto", torch.device("cpu")) is None
    assert cpu_model(ZEN5) == "AMD EPYC (family 26 model 1, avx2 under ONEDNN_MAX_CPU_ISA=AVX2)"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    assert cpu_model(ZEN5) == "AMD EPYC (family 26 model 1, avx512f under ONEDNN_MAX_CPU_ISA=AVX512_CORE)"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SSE41")
    assert cpu_model(ZEN3) == "AMD EPYC (family 25 model 1, no AVX2 under ONEDNN_MAX_CPU_ISA=SSE41)"
