"""ConvNeXt tower and the SigLIP + ConvNeXt mixture ("MOB") of Eagle2-9B (spec §6).

Both towers see the same SigLIP-normalised 448 px tile: SigLIP as is, ConvNeXt after a
bilinear resize to 512 and a switch to CLIP normalisation (its weights are a LAION CLIP model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ConvNextConfig, SiglipConfig
from .siglip import SiglipTower

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNextMlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ConvNextBlock(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = ConvNextMlp(dim)
        self.weight = nn.Parameter(torch.ones(dim))  # layer scale ("gamma" in timm; renamed in Eagle's copy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(self.norm(self.conv_dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return x + y * self.weight[:, None, None]


class ConvNextStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, eps: float):
        super().__init__()
        if in_dim == dim:  # the first stage keeps the stem's resolution
            self.downsample = nn.Identity()
        else:
            self.downsample = nn.Sequential(LayerNorm2d(in_dim, eps=eps), nn.Conv2d(in_dim, dim, 2, stride=2))
        self.blocks = nn.Sequential(*(ConvNextBlock(dim, eps) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class ConvNext(nn.Module):
    """[N, 3, S, S] (CLIP-normalised) -> last stage features [N, (S/32)^2, dims[-1]], row-major."""

    def __init__(self, cfg: ConvNextConfig):
        super().__init__()
        self.config = cfg
        self.stem = nn.Sequential(nn.Conv2d(3, cfg.dims[0], 4, stride=4), LayerNorm2d(cfg.dims[0], eps=cfg.norm_eps))
        in_dims = (cfg.dims[0],) + tuple(cfg.dims[:-1])
        self.stages = nn.Sequential(*(ConvNextStage(i, d, n, cfg.norm_eps)
                                      for i, d, n in zip(in_dims, cfg.dims, cfg.depths)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).flatten(2).transpose(1, 2)


def siglip_to_clip(x: torch.Tensor) -> torch.Tensor:
    """Re-normalise (pixel - 0.5) / 0.5 input to CLIP's mean/std, computed in float32."""
    mean = torch.tensor(CLIP_MEAN, device=x.device)[:, None, None]
    std = torch.tensor(CLIP_STD, device=x.device)[:, None, None]
    return (x.float() * (0.5 / std) + (0.5 - mean) / std).to(x.dtype)


class MobTower(nn.Module):
    """pixel_values [N, 3, 448, 448] -> (SigLIP [N, 1024, 1152], ConvNeXt [N, 256, 3072]) at full size."""

    def __init__(self, siglip: SiglipConfig, convnext: ConvNextConfig, attn: str = "sdpa"):
        super().__init__()
        self.siglip = SiglipTower(siglip, attn)
        self.convnext = ConvNext(convnext)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.convnext.config.image_size
        x = pixel_values
        if x.shape[-1] != size:
            x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=True).to(x.dtype)
        return self.siglip(pixel_values), self.convnext(siglip_to_clip(x))
