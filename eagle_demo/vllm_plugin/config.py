"""The Eagle2 config as transformers' AutoConfig reads it, built on eagle_demo.model.config."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig, Qwen2Config, SiglipVisionConfig

from ..model.config import Eagle2Config


class Eagle2VllmConfig(PretrainedConfig):
    """The `eagle_2_5_vl` config.json, checked by Eagle2Config, with the attribute names vLLM's
    Eagle2 model reads (InternVL's: force_image_size, min/max_dynamic_patch)."""

    model_type = "eagle_2_5_vl"
    sub_configs = {"text_config": Qwen2Config, "vision_config": SiglipVisionConfig}

    def __init__(self, text_config: dict | None = None, vision_config: dict | None = None, **kwargs):
        text_config, vision_config = _as_dict(text_config), _as_dict(vision_config)
        fields = {**kwargs, "text_config": text_config, "vision_config": vision_config}
        checked = Eagle2Config.from_dict({**fields, "model_type": self.model_type}) if text_config else None
        self.text_config = Qwen2Config(**text_config)
        self.vision_config = SiglipVisionConfig(**vision_config)
        if checked is not None:
            kwargs.update(force_image_size=checked.tile_size, downsample_ratio=checked.downsample_ratio,
                          select_layer=checked.select_layer, use_thumbnail=checked.use_thumbnail,
                          tokens_per_tile=checked.tokens_per_tile,
                          dynamic_image_size=checked.dynamic_image_size,
                          min_dynamic_patch=kwargs.get("min_dynamic_tiles", 1),
                          max_dynamic_patch=checked.max_dynamic_tiles)
        super().__init__(**kwargs)


def _as_dict(config) -> dict:
    return config.to_dict() if isinstance(config, PretrainedConfig) else dict(config or {})


def register_configs() -> None:
    AutoConfig.register(Eagle2VllmConfig.model_type, Eagle2VllmConfig, exist_ok=True)
