"""skinlib.cpu (issue 21): reading the CPU's bf16 flags, deciding 'native bf16' from flags and
torch's capability (passed in: no particular CPU needed), the record, and the slow-bf16 warning."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from skinlib import cpu

REPO = Path(__file__).resolve().parents[1]

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx avx2
"""
ARM = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp bf16 i8mm
CPU implementer\t: 0x41
"""


def test_parse_cpuinfo_reads_the_first_processor():
    model, flags = cpu.parse_cpuinfo(X86)
    assert model == "AMD EPYC 7B13" and "avx512_bf16" in flags and len(flags) == 9
    model, flags = cpu.parse_cpuinfo(ARM)
    assert model == "" and "bf16" in flags
    assert cpu.parse_cpuinfo("") == ("", [])


@pytest.mark.parametrize("flags, capability, onednn, machine, native", [
    (["avx2", "avx512f", "avx512_bf16"], "AVX512", True, "x86_64", True),    # Zen 4, Cooper Lake
    (["avx2", "amx_tile", "amx_bf16"], "AVX512", True, "x86_64", True),      # Sapphire Rapids
    (["avx2", "avx512f", "avx512_bf16"], "AVX2", True, "x86_64", False),     # ATEN_CPU_CAPABILITY=avx2
    (["avx2", "avx512f", "avx512_bf16"], "AVX512", False, "x86_64", False),  # oneDNN capped below bf16
    (["avx2", "avx512f", "avx512bw"], "AVX512", True, "x86_64", False),      # Skylake: AVX-512, no bf16
    (["avx2", "fma"], "AVX2", False, "x86_64", False),                        # the AVX2-only EPYC
    (["fp", "asimd", "bf16"], "DEFAULT", True, "aarch64", True),              # Graviton 3
    (["fp", "asimd"], "DEFAULT", True, "aarch64", False),                     # Graviton 2
])
def test_native_bf16_from_flags_and_capability(flags, capability, onednn, machine, native):
    assert cpu.has_native_bf16(flags, capability, onednn, machine) is native


def test_cpu_info_is_a_json_record_consistent_with_the_rule():
    info = cpu.cpu_info()
    assert set(info) == {"model", "machine", "torch_capability", "bf16_flags", "onednn_bf16", "native_bf16", "env"}
    assert json.loads(json.dumps(info)) == info and info["model"]
    assert info["torch_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["native_bf16"] is cpu.has_native_bf16(info["bf16_flags"], info["torch_capability"],
                                                      info["onednn_bf16"], info["machine"])
    assert info["model"] in cpu.describe(info) and info["torch_capability"] in cpu.describe(info)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86 capability levels")
def test_a_cpu_limited_to_avx2_has_no_native_bf16():
    """What bench_glide.py --cpu-capability avx2 relies on: with these variables torch reports
    AVX2, oneDNN offers no bf16 kernels, and the record says so (and names the variables)."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", "import json; from skinlib.cpu import cpu_info; "
                        "print(json.dumps(cpu_info()))"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["torch_capability"] == "AVX2" and info["onednn_bf16"] is False and info["native_bf16"] is False
    assert info["env"] == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_slow_bf16_warns_once_and_only_where_bf16_is_not_native(monkeypatch):
    monkeypatch.setattr(cpu, "_warned", set())
    slow = {"model": "Old CPU", "torch_capability": "AVX2", "bf16_flags": [], "native_bf16": False, "env": {}}
    fast = {**slow, "torch_capability": "AVX512", "bf16_flags": ["avx512_bf16"], "native_bf16": True}
    assert not cpu.warn_if_slow_bf16(torch.bfloat16, "cpu", "thing", fast)
    assert not cpu.warn_if_slow_bf16(torch.float32, "cpu", "thing", slow)
    assert not cpu.warn_if_slow_bf16(torch.bfloat16, "meta", "thing", slow)   # not a CPU
    with pytest.warns(RuntimeWarning, match=r"thing: bfloat16 on a CPU without native bf16 \(Old CPU, torch "
                                            r"AVX2.*6-8x the time of fp32"):
        assert cpu.warn_if_slow_bf16(torch.bfloat16, "cpu", "thing", slow)
    assert not cpu.warn_if_slow_bf16(torch.bfloat16, "cpu", "thing", slow)    # once
