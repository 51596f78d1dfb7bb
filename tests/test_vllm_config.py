"""The vLLM plugin's configs, read by transformers alone (no vLLM needed): every Eagle2 config.json
layout reaches vLLM as the same model description, without the hub's remote code."""

from __future__ import annotations

import json

from transformers import AutoConfig

from eagle_demo.tiny import write_tiny_checkpoint
from eagle_demo.vllm_plugin.config import Eagle2ChatVllmConfig, Eagle2VllmConfig, register_configs

# what vLLM's Eagle2 model and its SigLIP read
READ = ("force_image_size", "downsample_ratio", "select_layer", "use_thumbnail", "tokens_per_tile",
        "dynamic_image_size", "min_dynamic_patch", "max_dynamic_patch")
SIGLIP = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size",
          "layer_norm_eps", "hidden_act", "num_channels")


def config_json(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


def description(config) -> dict:
    return {"text": config.text_config.to_dict(), "vision": {k: getattr(config.vision_config, k) for k in SIGLIP},
            **{k: getattr(config, k) for k in READ}}


def test_both_layouts_of_a_1b_checkpoint_reach_vllm_alike(tmp_path):
    """The older eagle_chat layout (language model under llm_config, max_dynamic_patch) and the current
    one: the same description, so Eagle2ChatForVllm serves the former as Eagle2ForVllm the latter."""
    current = Eagle2VllmConfig(**config_json(write_tiny_checkpoint(tmp_path / "current", size="small")))
    older = Eagle2ChatVllmConfig(**config_json(write_tiny_checkpoint(tmp_path / "older", "eagle_chat", size="small")))
    assert description(older) == description(current)
    assert getattr(older, "mob_vision_config", None) is None
    assert description(Eagle2ChatVllmConfig(**older.to_dict())) == description(older)  # as vLLM's processes reread it


def test_the_9b_mixture_keeps_its_siglip_as_vision_config_and_the_whole_beside_it(tmp_path):
    raw = config_json(write_tiny_checkpoint(tmp_path / "9b", "eagle_chat", mob=True, size="small"))
    config = Eagle2ChatVllmConfig(**raw)
    siglip = raw["vision_config"]["siglip_vision_config"]
    assert {k: getattr(config.vision_config, k) for k in SIGLIP} == {k: siglip[k] for k in SIGLIP}
    assert config.mob_vision_config == raw["vision_config"] and config.tokens_per_tile == 256
    reread = Eagle2ChatVllmConfig(**config.to_dict())
    assert reread.mob_vision_config == raw["vision_config"] and description(reread) == description(config)


def test_autoconfig_reads_every_layout_without_remote_code(tmp_path):
    """config.json names the hub's code in auto_map; once registered, this project's classes read it."""
    register_configs()
    layouts = {"current": {}, "older": {"layout": "eagle_chat"}, "9b": {"layout": "eagle_chat", "mob": True}}
    for name, layout in layouts.items():
        folder = write_tiny_checkpoint(tmp_path / name, size="small", **layout)
        config = AutoConfig.from_pretrained(folder)  # unregistered, it would ask on stdin to run the hub code
        assert type(config) is (Eagle2ChatVllmConfig if layout else Eagle2VllmConfig)
