"""Tiny random checkpoints: official file layouts, determinism, and a working small tokenizer."""

import json
import time

import pytest
from safetensors import safe_open

from eagle_demo.model import Eagle2Config, load_eagle2
from eagle_demo.preprocessing import load_tokenizer
from eagle_demo.tiny import write_tiny_checkpoint
from tests.support import REFERENCE


def test_official_field_names(tmp_path):
    new = json.loads((write_tiny_checkpoint(tmp_path / "new", "eagle_2_5_vl") / "config.json").read_text())
    old = json.loads((write_tiny_checkpoint(tmp_path / "old", "eagle_chat") / "config.json").read_text())
    assert new["model_type"] == "eagle_2_5_vl" and new["architectures"] == ["Eagle2_5_VLForConditionalGeneration"]
    assert {"text_config", "vision_config", "image_token_index", "max_dynamic_tiles", "min_dynamic_tiles"} <= new.keys()
    assert old["model_type"] == "eagle_chat" and old["architectures"] == ["Eagle2ChatModel"]
    assert {"llm_config", "vision_config", "max_dynamic_patch", "min_dynamic_patch", "ps_version"} <= old.keys()
    assert "text_config" not in old and "llm_config" not in new
    for d in (new, old):
        assert d["vision_config"]["model_type"] == "siglip_vision_model" and d["vision_config"]["image_size"] == 448
    assert json.loads((tmp_path / "new" / "generation_config.json").read_text())["_from_model_config"] is True

    with safe_open(tmp_path / "new" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    siglip = "vision_model.vision_model."
    assert {siglip + "embeddings.patch_embedding.weight", siglip + "post_layernorm.weight",
            siglip + "encoder.layers.1.self_attn.q_proj.bias", "mlp1.0.weight", "mlp1.3.bias",
            "language_model.model.embed_tokens.weight", "language_model.model.layers.1.mlp.down_proj.weight",
            "language_model.model.norm.weight"} <= keys
    assert "language_model.lm_head.weight" not in keys  # tied, as in Eagle2-1B


def test_reference_layouts_have_the_fields_we_write(tmp_path):
    for layout in ("eagle_chat", "eagle_2_5_vl"):
        real = json.loads((REFERENCE / layout / "config.json").read_text())
        tiny = json.loads((write_tiny_checkpoint(tmp_path / layout, layout) / "config.json").read_text())
        assert tiny.keys() <= real.keys()
        text = "llm_config" if layout == "eagle_chat" else "text_config"
        assert tiny[text].keys() <= real[text].keys()
        assert tiny["vision_config"].keys() <= real["vision_config"].keys()


def test_mob_layout(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "eagle_chat", mob=True)
    vision = json.loads((path / "config.json").read_text())["vision_config"]
    assert vision["model_type"].startswith("MOB") and vision["moe_version_type"] == "convnext_512_siglip_448"
    with safe_open(path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    towers = "vision_model.vision_model.vision_towers"
    assert f"{towers}.1.vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    assert f"{towers}.0.vision_tower.stem.0.weight" in keys
    assert f"{towers}.0.vision_tower.stages.3.blocks.0.weight" in keys  # layer scale, named as in Eagle's copy
    assert "language_model.lm_head.weight" in keys  # untied, as in Eagle2-9B
    assert Eagle2Config.from_dir(path).convnext.dims == (8, 16, 24, 32)


def test_same_seed_same_weights_in_both_layouts(tmp_path):
    a = write_tiny_checkpoint(tmp_path / "a", "eagle_2_5_vl", seed=3)
    b = write_tiny_checkpoint(tmp_path / "b", "eagle_chat", seed=3)
    c = write_tiny_checkpoint(tmp_path / "c", "eagle_2_5_vl", seed=4)
    again = write_tiny_checkpoint(tmp_path / "again", "eagle_2_5_vl", seed=3)
    weights = (a / "model.safetensors").read_bytes()
    assert weights == (b / "model.safetensors").read_bytes()
    assert weights != (c / "model.safetensors").read_bytes()
    for f in a.iterdir():
        assert f.read_bytes() == (again / f.name).read_bytes(), f.name


def test_a_tiny_checkpoint_is_small_and_loads(tmp_path):
    """Under 2 MB on disk; its load time is printed (not asserted: CI machines differ)."""
    path = write_tiny_checkpoint(tmp_path, "eagle_2_5_vl")
    assert sum(f.stat().st_size for f in path.iterdir()) < 2_000_000
    start = time.perf_counter()
    assert load_eagle2(path) is not None
    print(f"tiny checkpoint loaded in {time.perf_counter() - start:.2f} s")


def test_small_tokenizer(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "eagle_2_5_vl")
    tok = load_tokenizer(path)
    assert type(tok).__name__.startswith("Qwen2Tokenizer")
    config = json.loads((path / "config.json").read_text())
    assert len(tok) == config["text_config"]["vocab_size"]
    assert config["image_token_index"] == tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert config["text_config"]["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id
    assert tok.pad_token == "<|endoftext|>" and tok.bos_token is None

    text = ("<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\n"
            "Describe the photo: a café, 3 dogs 🐕 & 中文.<|im_end|>\n")
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert ids.count(tok.convert_tokens_to_ids("<IMG_CONTEXT>")) == 2
    assert len(tok("The picture shows a dog")["input_ids"]) < len("The picture shows a dog") / 2  # merges work
    assert tok.decode(list(range(len(tok)))) is not None  # every id, random model output included, decodes


def test_small_tokenizer_has_the_real_added_tokens_in_order(tmp_path):
    real = REFERENCE / "tokenizer" / "tokenizer_config.json"
    ours = json.loads((write_tiny_checkpoint(tmp_path, "eagle_chat") / "tokenizer_config.json").read_text())
    real = json.loads(real.read_text())

    def added(cfg):
        items = sorted(cfg["added_tokens_decoder"].items(), key=lambda kv: int(kv[0]))
        return [token for _, token in items]

    assert added(ours) == added(real)
    for key in ("additional_special_tokens", "eos_token", "pad_token", "bos_token", "tokenizer_class"):
        assert ours[key] == real[key]
    assert ours["model_max_length"] == real["model_max_length"]
    for name in ("added_tokens.json", "special_tokens_map.json"):
        assert (tmp_path / name).is_file()


def test_copies_real_tokenizer(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "eagle_2_5_vl", tokenizer_dir=REFERENCE / "tokenizer")
    cfg = Eagle2Config.from_dir(path)
    assert (cfg.text.vocab_size, cfg.image_token_index, cfg.text.eos_token_id) == (151674, 151667, 151645)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"):
        assert (path / name).read_bytes() == (REFERENCE / "tokenizer" / name).read_bytes()
    assert len(load_tokenizer(path)) == 151674
    assert load_eagle2(path).language_model.model.embed_tokens.weight.shape == (151674, 32)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown layout"):
        write_tiny_checkpoint(tmp_path, "eagle3")
    with pytest.raises(ValueError, match="eagle_chat layout only"):
        write_tiny_checkpoint(tmp_path, "eagle_2_5_vl", mob=True)
    with pytest.raises(ValueError, match="lacks vocab.json, merges.txt"):
        write_tiny_checkpoint(tmp_path / "ckpt", tokenizer_dir=tmp_path)
