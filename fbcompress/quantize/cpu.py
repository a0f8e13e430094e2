"""Which INT8 activation type the CPU running ONNX Runtime is fast at, read from /proc/cpuinfo.

ONNX Runtime's x86 INT8 GEMMs (MLAS) multiply uint8 activations by int8 weights with `vpmaddubsw` on AVX2: signed
x signed (S8S8) has no such instruction there and is emulated, which measured *slower than FP32* on an AVX2
machine (7.7 ms vs 4.0 ms). VNNI (`vpdpbusd`, AVX512-VNNI or AVX-VNNI) and AMX make S8S8 native. On AVX2 the u8*s8
pair sums of `vpmaddubsw` saturate int16, so 7-bit weights (`reduce_range`) keep them exact there.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

VNNI_FLAGS = ("avx512_vnni", "avx512vnni", "avx_vnni", "avxvnni")
AMX_FLAGS = ("amx_int8", "amx_tile")


@dataclass(frozen=True)
class CpuIsa:
    """The CPU's INT8 capability and the ONNX Runtime settings that follow from it."""

    isa: str  # amx | vnni | avx2 | arm | other
    activation: str  # uint8 | int8 (weights are always int8)
    reduce_range: bool
    flags: tuple[str, ...]
    reason: str

    @property
    def scheme(self) -> str:
        return "U8S8" if self.activation == "uint8" else "S8S8"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flags": list(self.flags), "scheme": self.scheme}


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The feature flags of the first CPU listed (empty where /proc/cpuinfo does not exist, e.g. macOS)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def detect_isa(flags: set[str] | None = None, machine: str | None = None) -> CpuIsa:
    """The INT8 scheme for this CPU (or for `flags`, so the choice can be tested for every ISA)."""
    flags = cpu_flags() if flags is None else set(flags)
    machine = (machine or platform.machine()).lower()
    relevant = tuple(sorted(f for f in flags if f in (*VNNI_FLAGS, *AMX_FLAGS, "avx2", "avx512f", "asimddp")))
    if any(f in flags for f in AMX_FLAGS):
        return CpuIsa("amx", "int8", False, relevant, "AMX: S8S8 INT8 tiles are native")
    if any(f in flags for f in VNNI_FLAGS):
        return CpuIsa("vnni", "int8", False, relevant, "VNNI: vpdpbusd makes S8S8 native, no int16 saturation")
    if machine in ("aarch64", "arm64"):
        return CpuIsa("arm", "int8", False, relevant, "ARM: symmetric S8S8 is what ARM INT8 kernels prefer")
    if "avx2" in flags:
        return CpuIsa(
            "avx2",
            "uint8",
            True,
            relevant,
            "AVX2 without VNNI: U8S8 via vpmaddubsw (S8S8 is emulated: slower than FP32); 7-bit weights "
            "avoid its int16 saturation",
        )
    return CpuIsa(
        "other",
        "uint8",
        True,
        relevant,
        "no AVX2/VNNI/AMX flags found: U8S8 with 7-bit weights, the ONNX Runtime default for x86",
    )


def resolve_reduce_range(setting: str, isa: CpuIsa) -> bool:
    """recipe quantize.reduce_range: auto follows the ISA; on/off force it."""
    return isa.reduce_range if setting == "auto" else setting == "on"
