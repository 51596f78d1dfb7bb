"""The Eagle2 model: vision tower -> pixel shuffle -> MLP projector (`mlp1`) -> Qwen2.

Attribute names follow the checkpoint (`vision_model`, `mlp1`, `language_model`), so weights
load one to one apart from the vision tower's inner prefix (see loading.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import Eagle2Config
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


class Eagle2Model(nn.Module):
    def __init__(self, config: Eagle2Config, attn: str = "sdpa"):
        super().__init__()
        self.config = config
        s = round(1 / config.downsample_ratio)
        vit_dim = config.siglip.hidden_size * s * s
        if config.convnext is None:
            self.vision_model = SiglipTower(config.siglip, attn)
        else:
            self.vision_model = MobTower(config.siglip, config.convnext, attn)
            vit_dim += config.convnext.dims[-1]
        hidden = config.text.hidden_size
        self.mlp1 = nn.Sequential(nn.LayerNorm(vit_dim), nn.Linear(vit_dim, hidden), nn.GELU(),
                                  nn.Linear(hidden, hidden))
        self.language_model = Qwen2LM(config.text)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, 3, S, S] (SigLIP-normalised) -> image embeddings [N, tokens_per_tile, H]."""
        weight = self.mlp1[0].weight
        x = pixel_values.to(device=weight.device, dtype=weight.dtype)
        if self.config.convnext is None:
            features = pixel_shuffle(self.vision_model(x), self.config.downsample_ratio)
        else:
            siglip, convnext = self.vision_model(x)
            features = torch.cat([pixel_shuffle(siglip, self.config.downsample_ratio), convnext], dim=-1)
        return self.mlp1(features)
