"""What the engine reads from the host CPU: native bfloat16 matmul, and one thread per physical core."""

from __future__ import annotations

import os

import torch

from eagle_demo.model.loading import default_dtype, native_bf16, physical_cores


def cpuinfo(cores: list[tuple[int, int]], flags: str) -> str:
    """/proc/cpuinfo's text for logical CPUs at (physical id, core id)."""
    return "\n".join(f"processor\t: {i}\nphysical id\t: {socket}\ncore id\t\t: {core}\nflags\t\t: {flags}\n"
                     for i, (socket, core) in enumerate(cores))


AVX2 = "fpu sse sse2 avx avx2 fma"
SAPPHIRE_RAPIDS = AVX2 + " avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
ZEN4 = AVX2 + " avx512f avx512_bf16"


def test_bfloat16_is_the_cpu_default_only_where_the_cpu_multiplies_it_natively():
    assert not native_bf16(cpuinfo([(0, 0)], AVX2)) and native_bf16(cpuinfo([(0, 0)], ZEN4))
    assert default_dtype("cpu", cpuinfo([(0, 0)], SAPPHIRE_RAPIDS)) == torch.bfloat16
    assert default_dtype("cpu", cpuinfo([(0, 0)], AVX2)) == torch.float32
    assert default_dtype("cuda", cpuinfo([(0, 0)], AVX2)) == torch.bfloat16


def test_one_thread_per_physical_core_within_this_process_s_cpus():
    allowed = len(os.sched_getaffinity(0))
    assert physical_cores(cpuinfo([(0, 0), (0, 0)], AVX2)) == 1  # one core, two SMT siblings
    assert physical_cores(cpuinfo([(0, c) for c in range(64)], AVX2)) == allowed
    assert physical_cores("processor\t: 0\nprocessor\t: 1\n") == allowed  # no core ids (e.g. some ARM)
