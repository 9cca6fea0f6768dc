"""Every result names its machine well enough to tell two development machines apart (sslops.ml.device)."""

from __future__ import annotations

from sslops.ml.device import cpu_model

ZEN3 = (
    "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n"
    "flags\t\t: fpu sse avx avx2 fma\n"
)
ZEN5 = ZEN3.replace(": 25", ": 26").replace("avx2 fma", "avx2 avx512f avx512_bf16 fma")


def test_two_epycs_of_the_same_name_are_told_apart() -> None:
    assert cpu_model(ZEN3) == "AMD EPYC (family 25 model 1, avx2)"
    assert cpu_model(ZEN5) == "AMD EPYC (family 26 model 1, avx512_bf16)"
    second = ZEN3 + "\nprocessor\t: 1\ncpu family\t: 99\n"  # every processor repeats the fields: the first one's count
    assert cpu_model(second) == cpu_model(ZEN3)


def test_without_cpuinfo_the_platform_name_stands() -> None:
    assert cpu_model("") and "(" not in cpu_model("")
