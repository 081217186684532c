"""Bottom layer: what this CPU does fast. bf16 is fast only on CPUs with native bf16 instructions.

On a CPU with native bf16 (x86 AVX-512 BF16 or AMX-BF16; Arm's BF16 extension) PyTorch's oneDNN
kernels compute bf16 convolutions and matrix products about twice as fast as fp32. Elsewhere
bf16 is converted in software and is *slower* than fp32: 6-8x on a 2-core AMD EPYC with AVX2
only (issue 21). So a bf16 speed figure holds only beside the capability it was measured on, and
no default of this project may depend on bf16 being fast (fp32 stays the CPU default; GLIDE
offers ``dtype="auto"``, which picks bf16 only where :func:`cpu_info` says ``native_bf16``).

    cpu_info()   -> {"model": "AMD EPYC", "torch_capability": "AVX512", "native_bf16": True,
                     "bf16_flags": ["avx512_bf16"], "onednn_bf16": True, ...}

Recorded in every ``generation.json``, GLIDE training record and ``run.json``, and printed by
``benchmarks/bench_glide.py`` beside its ratios. Imports nothing of ours.
"""
from __future__ import annotations

import functools
import os
import platform
import warnings
from typing import Iterable, Optional

import torch

#: CPU flags (as /proc/cpuinfo names them) of native bf16 arithmetic: x86, and Arm ("Features")
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
#: torch's ATen kernel levels (``torch.backends.cpu.get_cpu_capability()``) that use them on x86
NATIVE_CAPABILITIES = ("AVX512",)
#: environment variables that lower what torch / oneDNN use (bench_glide.py --cpu-capability)
CAPABILITY_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
#: what is known of bf16 on a CPU without native bf16 (benchmarks/bench_glide.py, GLIDE step)
SLOW_BF16_MEASURED = ("measured: one GLIDE sampling step in bf16 took 6-8x the time of fp32 on a 2-core "
                      "AMD EPYC with AVX2 only (issue 21), and 3.2x (base) / 3.7x (upsampler) on an AMD "
                      "EPYC with avx512_bf16 limited to AVX2 (bench_glide.py --quick --cpu-capability avx2)")

_warned: set = set()


def parse_cpuinfo(text: str) -> tuple[str, list[str]]:
    """(CPU model name, its flags) from the text of /proc/cpuinfo (first processor); ("", [])
    when the text has neither (x86 names them "model name"/"flags", Arm "Features")."""
    model, flags = "", []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = value.split()
    return model, flags


def has_native_bf16(flags: Iterable[str], capability: str, onednn_bf16: bool = True,
                    machine: str = "x86_64") -> bool:
    """Whether bf16 runs natively: the CPU has a bf16 flag (:data:`BF16_FLAGS`), oneDNN may use
    bf16 kernels (``onednn_bf16``: False when ``ONEDNN_MAX_CPU_ISA`` caps it below AVX-512) and,
    on x86, torch's ATen kernel level is one of :data:`NATIVE_CAPABILITIES` (``AVX2`` when the
    CPU has no AVX-512 or ``ATEN_CPU_CAPABILITY=avx2`` lowers it)."""
    flags = set(flags)
    if not onednn_bf16:
        return False
    if machine.lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool(flags & {"avx512_bf16", "amx_bf16"}) and capability.upper() in NATIVE_CAPABILITIES


def _read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:  # not Linux: model from platform, flags from torch's cpuinfo below
        return ""


@functools.lru_cache(maxsize=1)
def cpu_info() -> dict:
    """What this process's CPU does (JSON-able, computed once): ``model``, ``machine``,
    ``torch_capability`` (torch's ATen kernel level: "AVX512", "AVX2", "DEFAULT", ...),
    ``bf16_flags`` (the :data:`BF16_FLAGS` found), ``onednn_bf16`` (oneDNN may run bf16
    kernels), ``native_bf16`` (:func:`has_native_bf16`), and ``env`` (those of
    :data:`CAPABILITY_ENV` that are set: the capability was lowered on purpose)."""
    model, flags = parse_cpuinfo(_read_cpuinfo())
    machine = platform.machine()
    if not flags:  # no /proc/cpuinfo: ask torch's cpuinfo (x86 only)
        has = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        flags = ["avx512_bf16"] if has is not None and has() else []
    capability = torch.backends.cpu.get_cpu_capability()
    try:
        onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # torch built without oneDNN
        onednn_bf16 = False
    found = [f for f in BF16_FLAGS if f in flags]
    return {"model": model or platform.processor() or machine, "machine": machine,
            "torch_capability": capability, "bf16_flags": found, "onednn_bf16": onednn_bf16,
            "native_bf16": has_native_bf16(found, capability, onednn_bf16, machine),
            "env": {k: os.environ[k] for k in CAPABILITY_ENV if k in os.environ}}


def describe(info: Optional[dict] = None) -> str:
    """One line for logs and benchmark output, e.g. "AMD EPYC, torch AVX512, native bf16
    (avx512_bf16)" or "..., torch AVX2, NO native bf16 (flags: none)"."""
    info = info or cpu_info()
    flags = ", ".join(info["bf16_flags"]) or "none"
    env = "".join(f", {k}={v}" for k, v in info.get("env", {}).items())
    bf16 = f"native bf16 ({flags})" if info["native_bf16"] else f"NO native bf16 (bf16 flags: {flags})"
    return f"{info['model']}, torch {info['torch_capability']}{env}, {bf16}"


def warn_if_slow_bf16(dtype: torch.dtype, device, what: str, info: Optional[dict] = None) -> bool:
    """Warn (once per process and ``what``) when ``dtype`` is bfloat16 on a CPU without native
    bf16, where it runs but slower than fp32. Returns whether this call warned."""
    info = info or cpu_info()
    if dtype != torch.bfloat16 or torch.device(device).type != "cpu" or info["native_bf16"] or what in _warned:
        return False
    _warned.add(what)
    warnings.warn(f"{what}: bfloat16 on a CPU without native bf16 ({describe(info)}) runs, but slower than "
                  f"float32 ({SLOW_BF16_MEASURED}). Use float32 (or dtype='auto', which picks bf16 only "
                  f"where the CPU has it).", RuntimeWarning, stacklevel=3)
    return True
