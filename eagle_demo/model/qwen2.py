"""Qwen2 language model with a static KV cache (the LLM half of every Eagle2 checkpoint).

Attribute names follow the checkpoint (`model.layers.0.self_attn.q_proj.weight`, ...), so weights
load one to one. The forward pass takes embeddings rather than ids because image features are
spliced into the sequence before the model sees it. Every shape in `forward` depends only on the
input length and `attend_len`, never on tensor values, so a one-token step can be captured as a
CUDA graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextConfig


class KVCache:
    """Keys and values for one sequence, preallocated to `max_len` positions.

    One buffer per layer, not one stacked tensor: each layer writes its own buffer in place, so a
    compiled or captured decode step never copies a cache-sized tensor.
    """

    def __init__(self, cfg: TextConfig, max_len: int, device=None, dtype=None):
        shape = (1, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    @property
    def device(self) -> torch.device:
        return self.k[0].device


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, input_pos, cache: KVCache, attend_len: int, mask):
        b, length, _ = x.shape
        q = self.q_proj(x).view(b, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, length, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, length, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k_all, v_all = cache.k[self.layer_idx], cache.v[self.layer_idx]
        k_all.index_copy_(2, input_pos, k.to(k_all.dtype))
        v_all.index_copy_(2, input_pos, v.to(v_all.dtype))
        k_all, v_all = k_all[:, :, :attend_len], v_all[:, :, :attend_len]
        if mask is None:  # a fresh prompt from position 0 (causal), or one token that sees everything
            out = F.scaled_dot_product_attention(q, k_all, v_all, is_causal=length > 1, enable_gqa=True)
        else:
            # Fold the query heads sharing a key/value head into the query length: masked attention
            # with grouped heads would otherwise fall back to the math kernel, which copies the
            # whole cache once per group on every decode step.
            groups = self.n_heads // self.n_kv
            q = q.reshape(b, self.n_kv, groups * length, self.head_dim)
            out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask.repeat(groups, 1))
            # CUDA's fused kernels return a transposed view of a (B, L, H, D) buffer, so only
            # layout-free steps: unflatten (always a view), then permute and reshape (a copy if needed).
            out = out.unflatten(2, (groups, length)).permute(0, 3, 1, 2, 4)
            return self.o_proj(out.reshape(b, length, -1))
        return self.o_proj(out.transpose(1, 2).reshape(b, length, -1))


class MLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, input_pos, cache, attend_len, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, input_pos, cache, attend_len, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Body(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Qwen2LM(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.model = Qwen2Body(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.register_buffer("inv_freq", self._rope_frequencies(), persistent=False)

    def _rope_frequencies(self, device=None) -> torch.Tensor:
        cfg = self.config
        steps = torch.arange(0, cfg.head_dim, 2, dtype=torch.float32, device=device) / cfg.head_dim
        return 1.0 / (cfg.rope_theta ** steps)

    def init_buffers(self) -> None:
        """Compute the buffers no checkpoint stores (RoPE frequencies) on the weights' device: a
        model built on the meta device has only placeholders for them."""
        self.inv_freq = self._rope_frequencies(self.lm_head.weight.device)

    def new_cache(self, max_len: int) -> KVCache:
        weight = self.model.embed_tokens.weight
        return KVCache(self.config, max_len, device=weight.device, dtype=weight.dtype)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(self, embeds: torch.Tensor, input_pos: torch.Tensor, cache: KVCache,
                attend_len: int | None = None, sees_all: bool = False) -> torch.Tensor:
        """Run `embeds` [1, L, H] at positions `input_pos` [L]; return the final hidden states.

        Keys and values are written into `cache` at `input_pos`; queries attend to the first
        `attend_len` cache slots (default: up to the last input position), masked causally.
        sees_all: one token whose `attend_len` slots are all at or before it, so no mask is needed
        (an all-True mask would cost a copy per query head group, every decode step).
        """
        if attend_len is None:
            attend_len = int(input_pos[-1]) + 1
        fresh = attend_len == embeds.shape[1]  # positions 0..L-1: the causal kernel needs no mask
        mask = None if fresh or sees_all else (
            torch.arange(attend_len, device=embeds.device)[None, :] <= input_pos[:, None])
        angles = input_pos.float()[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos().to(embeds.dtype), angles.sin().to(embeds.dtype)
        x = embeds
        for layer in self.model.layers:
            x = layer(x, cos, sin, input_pos, cache, attend_len, mask)
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits of hidden states [..., H]; a single state [H] goes in as a batch of one,
        as PyTorch's dynamic int8 Linear (--cpu-int8) takes 2-D inputs only."""
        return self.lm_head(hidden.unsqueeze(0)).squeeze(0).float()
