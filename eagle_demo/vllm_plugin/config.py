"""The Eagle2 configs as transformers' AutoConfig reads them, built on eagle_demo.model.config."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig, Qwen2Config, SiglipVisionConfig

from ..model.config import Eagle2Config


class Eagle2VllmConfig(PretrainedConfig):
    """The `eagle_2_5_vl` config.json (current 1B/2B), checked by Eagle2Config, with the attribute
    names vLLM's Eagle2 model reads (InternVL's: force_image_size, min/max_dynamic_patch)."""

    model_type = "eagle_2_5_vl"
    sub_configs = {"text_config": Qwen2Config, "vision_config": SiglipVisionConfig}
    _text_field = "text_config"  # where config.json keeps the language model's config

    def __init__(self, text_config: dict | None = None, vision_config: dict | None = None, **kwargs):
        text_config, vision_config = _as_dict(text_config), _as_dict(vision_config)
        fields = {**kwargs, self._text_field: text_config, "vision_config": vision_config}
        checked = Eagle2Config.from_dict({**fields, "model_type": self.model_type}) if text_config else None
        if vision_config.get("model_type", "").startswith("MOB"):
            # the 9B: its SigLIP stands as vision_config (patch and tile sizes), the whole mixture beside it
            kwargs["mob_vision_config"] = vision_config
            vision_config = _as_dict(vision_config.get("siglip_vision_config"))
        self.text_config = Qwen2Config(**text_config)
        self.vision_config = SiglipVisionConfig(**vision_config)
        if checked is not None:
            kwargs.update(force_image_size=checked.tile_size, downsample_ratio=checked.downsample_ratio,
                          select_layer=checked.select_layer, use_thumbnail=checked.use_thumbnail,
                          tokens_per_tile=checked.tokens_per_tile,
                          dynamic_image_size=checked.dynamic_image_size,
                          min_dynamic_patch=kwargs.get("min_dynamic_tiles", kwargs.get("min_dynamic_patch", 1)),
                          max_dynamic_patch=checked.max_dynamic_tiles)
        super().__init__(**kwargs)


class Eagle2ChatVllmConfig(Eagle2VllmConfig):
    """The older `eagle_chat` config.json (Eagle2-9B, and early 1B/2B revisions): the language model
    under `llm_config`; for the 9B, the SigLIP + ConvNeXt mixture as vision_config."""

    model_type = "eagle_chat"
    _text_field = "llm_config"

    def __init__(self, llm_config: dict | None = None, text_config: dict | None = None, **kwargs):
        super().__init__(text_config=llm_config or text_config, **kwargs)


def _as_dict(config) -> dict:
    return config.to_dict() if isinstance(config, PretrainedConfig) else dict(config or {})


def register_configs() -> None:
    for config in (Eagle2VllmConfig, Eagle2ChatVllmConfig):
        AutoConfig.register(config.model_type, config, exist_ok=True)
