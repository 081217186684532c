"""benchmarks/bench_glide.py's CPU reporting (issue 21), without timing anything: the emulated
run's arguments, the side-by-side summary, and why a bf16 ratio is below 1."""
from __future__ import annotations


from _scripts import load_script

NATIVE = {"model": "AMD EPYC", "machine": "x86_64", "torch_capability": "AVX512", "bf16_flags": ["avx512_bf16"],
          "onednn_bf16": True, "native_bf16": True, "env": {}}
EMULATED = {**NATIVE, "torch_capability": "AVX2", "onednn_bf16": False, "native_bf16": False,
            "env": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def _load_script():
    return load_script("benchmarks/bench_glide.py")


def _figures(info, fp32_s, bf16_s):
    rows = [("baseline", 3.0, 1.0, None), ("fp32", fp32_s, 3.0 / fp32_s, None),
            ("bfloat16", bf16_s, 3.0 / bf16_s, fp32_s / bf16_s)]
    return {"cpu": info, "results": [{"model": "base", "images": 1, "variant": v, "median_s": t, "min_s": t,
                                      "ratio_vs_baseline": r, "ratio_vs_fp32": f} for v, t, r, f in rows]}


def test_child_arguments_drop_the_capability_and_json_options():
    bench = _load_script()
    assert bench.child_argv(["--quick", "--cpu-capability", "avx2", "--json", "a.json", "--models", "base"]) == \
        ["--quick", "--models", "base"]
    assert bench.child_argv(["--cpu-capability=avx2", "--json=a.json", "--quick"]) == ["--quick"]
    assert set(bench.EMULATE["avx2"]) == {"ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"}


def test_summary_names_the_cpu_beside_each_bf16_ratio_and_says_why_it_is_below_one():
    bench = _load_script()
    lines = bench.summary_lines([_figures(NATIVE, 2.0, 1.0), _figures(EMULATED, 2.0, 8.0)])
    assert len(lines) == 2
    assert "bfloat16" in lines[0] and "(fp32 2.000 s)" in lines[0] and " 2.00x vs fp32" in lines[0]
    assert "torch AVX512" in lines[0] and "native bf16 (avx512_bf16)" in lines[0]
    assert " 0.25x vs fp32" in lines[1] and "torch AVX2" in lines[1] and "NO native bf16" in lines[1]
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in lines[1]
    assert "without native bf16" in bench.bf16_reason(EMULATED) and "software" in bench.bf16_reason(EMULATED)
    assert "machine load" in bench.bf16_reason(NATIVE)
