"""The Eagle2 model: vision tower -> pixel shuffle -> MLP projector (`mlp1`) -> Qwen2.

Attribute names follow the checkpoint (`vision_model`, `mlp1`, `language_model`), so weights
load one to one apart from the vision tower's inner prefix (see loading.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ConvNextConfig, Eagle2Config, SiglipConfig
from .convnext import MobTower
from .qwen2 import Qwen2LM
from .siglip import SiglipTower


def pixel_shuffle(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Merge each s x s block of patch tokens into one token, s = 1/ratio.

    x [N, h*w, C] (row-major square grid) -> [N, h*w/s^2, C*s^2] with, for s = 2,
    out[n, m*(w/2) + k] = concat(x[2m, 2k], x[2m, 2k+1], x[2m+1, 2k], x[2m+1, 2k+1]):
    the same order as Eagle's view/permute/view/permute sequence.
    """
    n, length, c = x.shape
    s = round(1 / ratio)
    side = math.isqrt(length)
    x = x.reshape(n, side // s, s, side // s, s, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, length // (s * s), c * s * s)


def vision_tower(siglip: SiglipConfig, convnext: ConvNextConfig | None, attn: str = "sdpa") -> nn.Module:
    """SigLIP (1B/2B), or SigLIP beside ConvNeXt (the 9B's "MOB" mixture)."""
    return SiglipTower(siglip, attn) if convnext is None else MobTower(siglip, convnext, attn)


def projector(siglip: SiglipConfig, convnext: ConvNextConfig | None, ratio: float, hidden: int) -> nn.Sequential:
    """mlp1: from the pixel-shuffled SigLIP tokens (with the 9B's ConvNeXt features beside them) to the LLM's width."""
    s = round(1 / ratio)
    width = siglip.hidden_size * s * s + (convnext.dims[-1] if convnext is not None else 0)
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden))


def tower_features(tower: nn.Module, pixel_values: torch.Tensor, ratio: float) -> torch.Tensor:
    """The tower's tokens as mlp1 takes them: [N, tokens_per_tile, width]."""
    if isinstance(tower, MobTower):
        siglip, convnext = tower(pixel_values)
        return torch.cat([pixel_shuffle(siglip, ratio), convnext], dim=-1)
    return pixel_shuffle(tower(pixel_values), ratio)


class Eagle2Model(nn.Module):
    def __init__(self, config: Eagle2Config, attn: str = "sdpa"):
        super().__init__()
        self.config = config
        self.vision_model = vision_tower(config.siglip, config.convnext, attn)
        self.mlp1 = projector(config.siglip, config.convnext, config.downsample_ratio, config.text.hidden_size)
        self.language_model = Qwen2LM(config.text)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, 3, S, S] (SigLIP-normalised) -> image embeddings [N, tokens_per_tile, H]."""
        weight = self.mlp1[0].weight
        x = pixel_values.to(device=weight.device, dtype=weight.dtype)
        return self.mlp1(tower_features(self.vision_model, x, self.config.downsample_ratio))
