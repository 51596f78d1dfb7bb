"""How the language model's queries attend over its KV cache, never through a materialised mask.

- `CausalFrom(start)`: a prefill or an eager decode step. Its queries sit at positions start,
  start + 1, ... and attend over the cache up to themselves: a fresh prompt (start 0) is square causal
  attention, one token sees every filled position, and a continuation (a follow-up turn, a CPU's later
  prompt chunk) is causal with an offset: on CUDA PyTorch's lower-right causal bias (flash or
  memory-efficient attention, no mask), on a CPU two passes of its flash kernel joined by their
  log-sum-exps.
- `FilledLength`: one query over a fixed span of the cache, of which the first `filled` positions (a
  tensor on the device) count. Its shapes never change, so the step can be captured as a CUDA graph;
  the kernel reads the length on the device: flash-attn's `flash_attn_with_kvcache`, or PyTorch's
  varlen flash attention (`seqused_k`); where neither runs (a CPU, an older GPU, float32), a
  one-row mask made from the length.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right


@dataclass(frozen=True)
class CausalFrom:
    """Queries at positions start, start + 1, ... over the cache's positions up to each of them."""

    start: int

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        """q [B, H, L, D] over the caches [B, Hkv, max_len, D]; returns [B, L, H * D]."""
        b, heads, length, dim = q.shape
        end = self.start + length
        k, v = k_cache[:, :, :end], v_cache[:, :, :end]
        if self.start == 0 or length == 1:  # square causal, or one token that sees every filled position
            out = F.scaled_dot_product_attention(q, k, v, is_causal=length > 1, enable_gqa=True)
        elif q.device.type == "cpu":
            out = _offset_causal_on_cpu(q, k, v, self.start)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(length, end), enable_gqa=True)
        # CUDA's fused kernels return a transposed view of a (B, L, H, D) buffer: reshape copies if needed
        return out.transpose(1, 2).reshape(b, length, heads * dim)


def _offset_causal_on_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
    """The new queries over every earlier position (nothing to mask) and over the new positions
    (square causal), in two passes of the CPU flash kernel, joined by their log-sum-exps."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    old, old_lse = flash(q, k[:, :, :start], v[:, :, :start])
    new, new_lse = flash(q, k[:, :, start:], v[:, :, start:], is_causal=True)
    lse = torch.logaddexp(old_lse, new_lse)
    joined = old.float() * (old_lse - lse).exp().unsqueeze(-1) + new.float() * (new_lse - lse).exp().unsqueeze(-1)
    return joined.to(q.dtype)


class FilledLength:
    """One query over the first `span` positions of the cache, the first `filled` of which count."""

    def __init__(self, kernel: str, span: int, device: torch.device):
        self.kernel = kernel  # "flash_attn", "varlen" or "masked" (filled_length_kernel)
        self.span = span
        self.filled = torch.ones(1, dtype=torch.int32, device=device)  # set before each step
        # made once: a captured step cannot copy from the host
        self._query_offsets = torch.tensor([0, 1], dtype=torch.int32, device=device)
        self._cache_offsets = torch.tensor([0, span], dtype=torch.int32, device=device)
        self._positions = torch.arange(span, device=device)[None]  # [1, span]: one query row

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        """q [1, H, 1, D] over the caches [1, Hkv, >= span, D]; returns [1, 1, H * D]."""
        _, heads, _, dim = q.shape
        k, v = k_cache[:, :, :self.span], v_cache[:, :, :self.span]
        if self.kernel == "flash_attn":
            from flash_attn import flash_attn_with_kvcache

            out = flash_attn_with_kvcache(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          cache_seqlens=self.filled)
        elif self.kernel == "varlen":
            from torch.nn.attention.varlen import varlen_attn

            out = varlen_attn(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1),
                              self._query_offsets, self._cache_offsets, 1, self.span, enable_gqa=True,
                              seqused_k=self.filled)
        else:
            # The query heads sharing a key/value head folded into the query length: a mask with
            # grouped heads would send SDPA to the math kernel, which copies the cache per group.
            kv_heads = k.shape[1]
            folded = q.reshape(1, kv_heads, heads // kv_heads, dim)
            out = F.scaled_dot_product_attention(folded, k, v, attn_mask=self._positions < self.filled)
        return out.reshape(1, 1, heads * dim)


def filled_length_kernel(device: torch.device, dtype: torch.dtype) -> str:
    """The kernel a bucketed decode step attends with on `device`: flash-attn's when it is installed,
    else PyTorch's varlen flash attention where this PyTorch has it, else "masked"."""
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16) \
            or torch.cuda.get_device_capability(device) < (8, 0):
        return "masked"  # flash attention runs on CUDA in half precision, on Ampere and later
    try:
        import flash_attn  # noqa: F401
        return "flash_attn"
    except ImportError:
        pass
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return "masked"
    runs_here = torch._C._dispatch_has_kernel_for_dispatch_key("aten::_flash_attention_forward", "CUDA")
    takes_lengths = "seqused_k" in inspect.signature(varlen_attn).parameters
    return "varlen" if runs_here and takes_lengths else "masked"


def pin_attention_backends() -> None:
    """Keep PyTorch from picking cuDNN attention (it does first on Hopper wherever it applies): it
    plans each new sequence length anew, and raises on some shapes instead of falling back. Flash,
    memory-efficient and math attention stay on. Process-wide: PyTorch keeps these switches globally,
    and a per-call switch would race other threads."""
    torch.backends.cuda.enable_cudnn_sdp(False)
    torch.backends.cuda.enable_flash_sdp(True)
    torch.backends.cuda.enable_mem_efficient_sdp(True)
    torch.backends.cuda.enable_math_sdp(True)
