"""Eagle2 configuration, parsed from either official config.json layout.

`eagle_chat` (Eagle2-9B, older 1B/2B revisions) keeps the LLM under `llm_config`;
`eagle_2_5_vl` (current 1B/2B) under `text_config`. Both keep the vision tower under
`vision_config`: a SigLIP dict, or for 9B a "MOB" dict describing SigLIP + ConvNeXt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class TextConfig:
    """Qwen2 language model."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict, tie_default: bool = False) -> TextConfig:
        arch = (d.get("architectures") or [None])[0]
        if d.get("model_type") != "qwen2" and arch != "Qwen2ForCausalLM":
            raise ValueError(f"unsupported language model {arch or d.get('model_type')!r}: "
                             "only Qwen2 (Qwen2ForCausalLM) is implemented")
        if d.get("use_sliding_window"):
            raise ValueError("sliding-window attention is not supported (no Eagle2 checkpoint uses it)")
        rope = d.get("rope_parameters") or {}
        if d.get("rope_scaling") or rope.get("rope_type", "default") != "default":
            raise ValueError("RoPE scaling is not supported (no Eagle2 checkpoint uses it)")
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d.get("num_key_value_heads", d["num_attention_heads"]),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(d.get("rope_theta") or rope.get("rope_theta") or 10000.0),
            max_position_embeddings=d.get("max_position_embeddings", 32768),
            tie_word_embeddings=d.get("tie_word_embeddings", tie_default),
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"),
        )


@dataclass
class SiglipConfig:
    """SigLIP vision transformer. Defaults: the SigLIP-so400m/14 tower at 448 px of every Eagle2."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    patch_size: int = 14
    image_size: int = 448
    layer_norm_eps: float = 1e-6
    num_channels: int = 3

    @classmethod
    def from_dict(cls, d: dict) -> SiglipConfig:
        if d.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
            raise ValueError(f"unsupported SigLIP activation {d['hidden_act']!r}")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class ConvNextConfig:
    """ConvNeXt tower of Eagle2-9B. Defaults: timm `convnext_xxlarge`."""

    depths: tuple[int, ...] = (3, 4, 30, 3)
    dims: tuple[int, ...] = (384, 768, 1536, 3072)
    image_size: int = 512
    norm_eps: float = 1e-5


@dataclass
class Eagle2Config:
    layout: str  # "eagle_chat" | "eagle_2_5_vl"
    text: TextConfig
    siglip: SiglipConfig
    convnext: ConvNextConfig | None  # set for the 9B SigLIP + ConvNeXt ("MOB") tower only
    tile_size: int
    downsample_ratio: float
    tokens_per_tile: int
    use_thumbnail: bool
    dynamic_image_size: bool
    max_dynamic_tiles: int
    image_token_index: int | None
    select_layer: int

    @classmethod
    def from_dict(cls, d: dict) -> Eagle2Config:
        try:
            return cls._parse(d)
        except KeyError as e:
            raise ValueError(f"config.json lacks the field {e.args[0]!r}") from None

    @classmethod
    def _parse(cls, d: dict) -> Eagle2Config:
        layout = d.get("model_type")
        if layout == "eagle_chat":
            text_dict = d["llm_config"]
        elif layout == "eagle_2_5_vl":
            text_dict = d["text_config"]
        else:
            raise ValueError(f"unknown model_type {layout!r}: expected an Eagle2 checkpoint "
                             "('eagle_chat' or 'eagle_2_5_vl')")
        text = TextConfig.from_dict(text_dict, tie_default=d.get("tie_word_embeddings", False))
        siglip, convnext = vision_from_dict(d["vision_config"])

        tile_size = d.get("force_image_size") or siglip.image_size
        if tile_size != siglip.image_size:
            raise ValueError(f"force_image_size {tile_size} differs from the SigLIP image_size "
                             f"{siglip.image_size}; resizing position embeddings is not supported")
        ratio = d.get("downsample_ratio", 0.5)
        side = tile_size // siglip.patch_size * ratio
        if tile_size % siglip.patch_size or side != int(side):
            raise ValueError(f"tile size {tile_size}, patch size {siglip.patch_size} and "
                             f"downsample_ratio {ratio} do not give a whole token grid")
        select_layer = d.get("select_layer", -1)
        if select_layer != -1:
            raise ValueError(f"select_layer {select_layer} is not supported; every Eagle2 checkpoint uses -1")
        return cls(
            layout=layout,
            text=text,
            siglip=siglip,
            convnext=convnext,
            tile_size=tile_size,
            downsample_ratio=ratio,
            tokens_per_tile=int(side) ** 2,
            use_thumbnail=d.get("use_thumbnail", False),
            dynamic_image_size=d.get("dynamic_image_size", False),
            max_dynamic_tiles=d.get("max_dynamic_tiles", d.get("max_dynamic_patch", 6)),
            image_token_index=d.get("image_token_index"),
            select_layer=select_layer,
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> Eagle2Config:
        return cls.from_dict(json.loads((Path(path) / "config.json").read_text()))


def vision_from_dict(v: dict) -> tuple[SiglipConfig, ConvNextConfig | None]:
    model_type = v.get("model_type", "")
    if model_type == "siglip_vision_model":
        return SiglipConfig.from_dict(v), None
    if model_type.startswith("MOB"):
        # The 9B json only names its towers; sizes not in it are those of spec §6.
        version = v.get("moe_version_type", "convnext_512_siglip_448")
        if version != "convnext_512_siglip_448":
            raise ValueError(f"unsupported vision tower mixture {version!r}")
        siglip = SiglipConfig.from_dict(v.get("siglip_vision_config") or {})
        siglip.image_size = v.get("siglip_img_size", siglip.image_size)
        convnext = ConvNextConfig(image_size=v.get("convnext_img_size", 512))
        if "convnext_depths" in v:  # only tiny test checkpoints shrink the ConvNeXt
            convnext.depths, convnext.dims = tuple(v["convnext_depths"]), tuple(v["convnext_dims"])
        return siglip, convnext
    raise ValueError(f"unsupported vision tower {model_type!r}: expected SigLIP "
                     "('siglip_vision_model') or the 9B SigLIP + ConvNeXt mixture ('MOB')")
