"""Qwen2 language model with a static KV cache (the LLM half of every Eagle2 checkpoint).

Attribute names follow the checkpoint (`model.layers.0.self_attn.q_proj.weight`, ...), so weights
load one to one; at load, q, k and v (and gate and up) are then fused into one layer each (`Fusable`).
The forward pass takes embeddings rather than ids because image features are spliced into the
sequence before the model sees it. How the queries attend over the cache is the caller's `attention`
(model/attention.py); with `FilledLength` every shape depends only on the input length, never on
tensor values, so a one-token step can be captured as a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CausalFrom
from .config import TextConfig

# (q [B, H, L, D], this layer's key cache, its value cache) -> [B, L, H * D]
AttendFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))


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


class Fusable(nn.Module):
    """A module whose Linear layers `parts` read the same input: built as the checkpoint names them,
    then `fuse()`d at load into one layer `fused_name`, one matrix product instead of several.

    Only dense float layers fuse; any others (a packed 4-bit checkpoint's) stay as loaded. A fused
    module's state_dict still speaks the checkpoint's names and shapes, and it loads them, so what
    is saved, compared with transformers or written as a checkpoint never sees the fused layout.
    """

    parts: tuple[str, ...]
    fused_name: str

    @property
    def fused(self) -> bool:
        return self.fused_name in self._modules

    def fuse(self) -> None:
        layers = [getattr(self, name) for name in self.parts]
        if self.fused or not all(type(layer) is nn.Linear for layer in layers):
            return
        first = layers[0]
        fused = nn.Linear(first.in_features, sum(layer.out_features for layer in layers),
                          bias=first.bias is not None, device="meta")
        fused.weight = nn.Parameter(torch.cat([layer.weight for layer in layers]), requires_grad=False)
        if first.bias is not None:
            fused.bias = nn.Parameter(torch.cat([layer.bias for layer in layers]), requires_grad=False)
        for name in self.parts:
            delattr(self, name)
        setattr(self, self.fused_name, fused)
        self.sizes = [layer.out_features for layer in layers]
        self.register_state_dict_post_hook(_split_fused)
        self.register_load_state_dict_pre_hook(_join_parts)

    def project(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each part's output for `x`, in `parts`' order."""
        if self.fused:
            return getattr(self, self.fused_name)(x).split(self.sizes, dim=-1)
        return [getattr(self, name)(x) for name in self.parts]


def _dense_fused(module: Fusable) -> bool:
    """A fused layer still dense: quantised since (--quantize, --cpu-int8, 8-bit), its state is its own."""
    return type(getattr(module, module.fused_name)) is nn.Linear


def _split_fused(module: Fusable, state: dict, prefix: str, local_metadata) -> None:
    if not _dense_fused(module):
        return
    for suffix in ("weight", "bias"):
        fused = state.pop(f"{prefix}{module.fused_name}.{suffix}", None)
        if fused is not None:
            parts = fused.split(module.sizes)
            state.update((f"{prefix}{name}.{suffix}", part) for name, part in zip(module.parts, parts))


def _join_parts(module: Fusable, state: dict, prefix: str, *args) -> None:
    if not _dense_fused(module):
        return
    for suffix in ("weight", "bias"):
        keys = [f"{prefix}{name}.{suffix}" for name in module.parts]
        if all(key in state for key in keys):
            state[f"{prefix}{module.fused_name}.{suffix}"] = torch.cat([state.pop(key) for key in keys])


class Attention(Fusable):
    parts, fused_name = ("q_proj", "k_proj", "v_proj"), "qkv_proj"

    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, input_pos, cache: KVCache, attention: AttendFn):
        b, length, _ = x.shape
        q, k, v = self.project(x)
        q = q.view(b, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, length, self.n_kv, self.head_dim).transpose(1, 2)
        v = v.view(b, length, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k_all, v_all = cache.k[self.layer_idx], cache.v[self.layer_idx]
        k_all.index_copy_(2, input_pos, k.to(k_all.dtype))
        v_all.index_copy_(2, input_pos, v.to(v_all.dtype))
        return self.o_proj(attention(q, k_all, v_all))


class MLP(Fusable):
    parts, fused_name = ("gate_proj", "up_proj"), "gate_up_proj"

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.project(x)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, input_pos, cache, attention):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, input_pos, cache, attention)
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

    def fuse_projections(self) -> None:
        """Join each layer's q, k and v projections, and its gate and up ones, into one Linear layer
        each (where they are dense): a decode step then launches 4 matrix products a layer, not 7."""
        for layer in self.model.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()

    def new_cache(self, max_len: int) -> KVCache:
        weight = self.model.embed_tokens.weight
        return KVCache(self.config, max_len, device=weight.device, dtype=weight.dtype)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(self, embeds: torch.Tensor, input_pos: torch.Tensor, cache: KVCache,
                attention: AttendFn | None = None) -> torch.Tensor:
        """Run `embeds` [1, L, H] at positions `input_pos` [L]; return the final hidden states.

        Keys and values are written into `cache` at `input_pos`; the queries attend over it as
        `attention` says (default: causally from the first position, read on the host).
        """
        if attention is None:
            attention = CausalFrom(int(input_pos[0]))
        angles = input_pos.float()[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos().to(embeds.dtype), angles.sin().to(embeds.dtype)
        x = embeds
        for layer in self.model.layers:
            x = layer(x, cos, sin, input_pos, cache, attention)
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits of hidden states [..., H]; a single state [H] goes in as a batch of one,
        as PyTorch's dynamic int8 Linear (--cpu-int8) takes 2-D inputs only."""
        return self.lm_head(hidden.unsqueeze(0)).squeeze(0).float()
