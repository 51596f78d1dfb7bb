"""The native Eagle2 model: config parsing, vision towers, pixel shuffle and checkpoint loading."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from eagle_demo.model import CheckpointError, Eagle2Config, Eagle2Model, load_eagle2, resolve_checkpoint
from eagle_demo.model.config import ConvNextConfig, SiglipConfig
from eagle_demo.model.convnext import CLIP_MEAN, CLIP_STD, ConvNext, siglip_to_clip
from eagle_demo.model.eagle2 import pixel_shuffle
from eagle_demo.model.siglip import SiglipTower
from eagle_demo.tiny import write_tiny_checkpoint
from tests.support import REFERENCE


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny checkpoints of the same seed: eagle_2_5_vl, eagle_chat, and the 9B-style MOB one."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        "new": write_tiny_checkpoint(root / "new", "eagle_2_5_vl"),
        "old": write_tiny_checkpoint(root / "old", "eagle_chat"),
        "mob": write_tiny_checkpoint(root / "mob", "eagle_chat", mob=True),
    }


def copy_checkpoint(src: Path, dst: Path, weights: dict) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "model.safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def prefill_logits(model: Eagle2Model, ids: list[int]) -> torch.Tensor:
    lm = model.language_model
    hidden = lm(lm.embed(torch.tensor([ids])), torch.arange(len(ids)), lm.new_cache(32))
    return lm.logits(hidden)


def pixels(n=2, seed=0):
    return torch.randn(n, 3, 448, 448, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


# --- pixel shuffle ------------------------------------------------------------------------------

def test_pixel_shuffle_matches_hand_computed_order():
    c = 3
    x = torch.arange(2 * 32 * 32 * c, dtype=torch.float32).reshape(2, 32 * 32, c)
    out = pixel_shuffle(x, 0.5)
    assert out.shape == (2, 256, 4 * c)
    grid = x.reshape(2, 32, 32, c)
    for n in range(2):
        for m in range(16):
            for k in range(16):
                expected = torch.cat([grid[n, 2 * m, 2 * k], grid[n, 2 * m, 2 * k + 1],
                                      grid[n, 2 * m + 1, 2 * k], grid[n, 2 * m + 1, 2 * k + 1]])
                assert torch.equal(out[n, m * 16 + k], expected)


def test_pixel_shuffle_equals_eagle_view_permute_sequence():
    # spec §3: view [N,32,16,2C] -> permute(0,2,1,3) -> view [N,16,16,4C] -> permute(0,2,1,3)
    x = torch.randn(2, 32, 32, 5)
    y = x.view(2, 32, 16, 10).permute(0, 2, 1, 3).contiguous().view(2, 16, 16, 20).permute(0, 2, 1, 3)
    assert torch.equal(pixel_shuffle(x.reshape(2, 1024, 5), 0.5), y.reshape(2, 256, 20))


# --- config -------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["eagle_chat", "eagle_2_5_vl"])
def test_reference_1b_config(layout):
    cfg = Eagle2Config.from_dir(REFERENCE / layout)
    assert cfg.layout == layout
    t, s = cfg.text, cfg.siglip
    assert (t.vocab_size, t.hidden_size, t.intermediate_size, t.num_hidden_layers) == (151674, 896, 4864, 24)
    assert (t.num_attention_heads, t.num_key_value_heads, t.head_dim) == (14, 2, 64)
    assert (t.rope_theta, t.rms_norm_eps, t.tie_word_embeddings) == (1e6, 1e-6, True)
    assert (t.bos_token_id, t.eos_token_id, t.max_position_embeddings) == (151643, 151645, 32768)
    assert (s.hidden_size, s.intermediate_size, s.num_hidden_layers, s.num_attention_heads) == (1152, 4304, 27, 16)
    assert (s.patch_size, s.image_size, s.layer_norm_eps) == (14, 448, 1e-6)
    assert cfg.convnext is None
    assert (cfg.tile_size, cfg.downsample_ratio, cfg.tokens_per_tile) == (448, 0.5, 256)
    assert (cfg.use_thumbnail, cfg.dynamic_image_size, cfg.max_dynamic_tiles, cfg.select_layer) == (True, True, 12, -1)
    assert cfg.image_token_index == (151667 if layout == "eagle_2_5_vl" else None)

    with torch.device("meta"):
        model = Eagle2Model(cfg)
    assert model.mlp1[1].weight.shape == (896, 4608)
    tied = sum(p.numel() for p in model.parameters()) - model.language_model.lm_head.weight.numel()
    assert 0.9e9 < tied < 0.95e9  # the report's "0.9B"


def test_mob_config_uses_spec_defaults():
    d = {"model_type": "eagle_chat", "force_image_size": 448, "downsample_ratio": 0.5, "max_dynamic_patch": 12,
         "llm_config": {"architectures": ["Qwen2ForCausalLM"], "vocab_size": 151674, "hidden_size": 3584,
                        "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                        "num_key_value_heads": 4, "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"},
                        "tie_word_embeddings": False},
         "vision_config": {"model_type": "MOB", "hidden_size": "lazy_calculation"}}
    cfg = Eagle2Config.from_dict(d)
    assert cfg.siglip == SiglipConfig() and cfg.convnext == ConvNextConfig()
    assert cfg.text.rope_theta == 1e6 and cfg.tokens_per_tile == 256
    with torch.device("meta"):
        model = Eagle2Model(cfg)
        features = model.vision_model(torch.empty(1, 3, 448, 448))
        out = model.encode_images(torch.empty(1, 3, 448, 448))
    assert [f.shape for f in features] == [(1, 1024, 1152), (1, 256, 3072)]
    assert model.mlp1[1].weight.shape == (3584, 7680) and out.shape == (1, 256, 3584)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "llava"}, "unknown model_type"),
    ({"text_config": {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}}, "only Qwen2"),
    ({"vision_config": {"model_type": "radio"}}, "unsupported vision tower"),
    ({"select_layer": -4}, "select_layer"),
    ({"text_config": {"architectures": ["Qwen2ForCausalLM"]}}, "lacks the field 'vocab_size'"),
])
def test_config_errors(tiny, change, message):
    d = json.loads((tiny["new"] / "config.json").read_text()) | change
    with pytest.raises(ValueError, match=message):
        Eagle2Config.from_dict(d)


# --- vision towers ------------------------------------------------------------------------------

def test_siglip_matches_transformers():
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    hf = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3, patch_size=14,
        image_size=448, layer_norm_eps=1e-6, vision_use_head=False)).eval()
    for p in hf.parameters():  # non-trivial norms and biases
        p.data.normal_(0, 0.05).add_(1.0 if p.ndim == 1 and p.shape[0] == 48 else 0.0)
    ours = SiglipTower(SiglipConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3))
    ours.load_state_dict(hf.state_dict(), strict=True)
    x = pixels()
    with torch.no_grad():
        expected = hf(pixel_values=x).last_hidden_state
        assert torch.allclose(ours(x), expected, atol=1e-5, rtol=1e-5)


def test_siglip_to_clip_normalisation():
    p = torch.rand(2, 3, 8, 8)
    mean, std = torch.tensor(CLIP_MEAN)[:, None, None], torch.tensor(CLIP_STD)[:, None, None]
    assert torch.allclose(siglip_to_clip((p - 0.5) / 0.5), (p - mean) / std, atol=1e-6)


def test_convnext_xxlarge_shapes():
    with torch.device("meta"):
        net = ConvNext(ConvNextConfig())
        out = net(torch.empty(2, 3, 512, 512))
    assert out.shape == (2, 256, 3072)
    keys = net.state_dict().keys()
    assert "stem.0.weight" in keys and "stem.1.weight" in keys and "stages.1.downsample.1.weight" in keys
    assert "stages.2.blocks.29.weight" in keys and "stages.0.blocks.0.mlp.fc2.bias" in keys
    assert not any(k.startswith("stages.0.downsample") for k in keys)


# --- loading ------------------------------------------------------------------------------------

def test_both_layouts_give_identical_outputs(tiny):
    new, old = load_eagle2(tiny["new"]), load_eagle2(tiny["old"])
    assert new.config.layout == "eagle_2_5_vl" and old.config.layout == "eagle_chat"
    x = pixels()
    with torch.no_grad():
        a, b = new.encode_images(x), old.encode_images(x)
        assert a.shape == (2, 256, 32) and a.dtype == torch.float32
        assert torch.equal(a, b)
        assert torch.equal(prefill_logits(new, [5, 17, 3, 99]), prefill_logits(old, [5, 17, 3, 99]))
    lm = new.language_model
    assert lm.lm_head.weight is lm.model.embed_tokens.weight  # tied: no lm_head in the file
    assert not any(p.requires_grad for p in new.parameters())


def test_mob_checkpoint_loads_in_either_tower_order(tiny, tmp_path):
    model = load_eagle2(tiny["mob"])
    assert model.config.convnext is not None
    lm = model.language_model
    assert lm.lm_head.weight is not lm.model.embed_tokens.weight  # 9B: untied, stored lm_head

    weights = load_file(tiny["mob"] / "model.safetensors")
    towers = "vision_model.vision_model.vision_towers."
    swap = {towers + "0.": towers + "1.", towers + "1.": towers + "0."}
    swapped = {next((new + k[len(old):] for old, new in swap.items() if k.startswith(old)), k): v
               for k, v in weights.items()}
    assert swapped.keys() != weights.keys()
    other = load_eagle2(copy_checkpoint(tiny["mob"], tmp_path / "swapped", swapped))
    x = pixels(1)
    with torch.no_grad():
        out = model.encode_images(x)
        assert out.shape == (1, 256, 32)
        assert torch.equal(out, other.encode_images(x))


def test_mob_tower_resizes_and_renormalises_for_convnext(tiny):
    model = load_eagle2(tiny["mob"])
    x = pixels(1)
    with torch.no_grad():
        siglip, convnext = model.vision_model(x)
        resized = torch.nn.functional.interpolate(x, size=(512, 512), mode="bilinear", align_corners=True)
        assert torch.equal(siglip, model.vision_model.siglip(x))
        assert torch.equal(convnext, model.vision_model.convnext(siglip_to_clip(resized)))


def test_bfloat16_cast_inside_encode_images(tiny):
    model = load_eagle2(tiny["new"], dtype=torch.bfloat16)
    assert model.mlp1[0].weight.dtype == torch.bfloat16
    assert model.language_model.inv_freq.dtype == torch.float32
    with torch.no_grad():
        assert model.encode_images(pixels(1)).dtype == torch.bfloat16


def test_missing_key_is_named(tiny, tmp_path):
    weights = load_file(tiny["new"] / "model.safetensors")
    del weights["language_model.model.norm.weight"]
    del weights["vision_model.vision_model.post_layernorm.bias"]
    with pytest.raises(CheckpointError, match=r"2 missing .*language_model\.model\.norm\.weight") as e:
        load_eagle2(copy_checkpoint(tiny["new"], tmp_path / "ckpt", weights))
    assert "vision_model.vision_model.post_layernorm.bias" in str(e.value)


def test_unexpected_and_misshapen_keys_are_named(tiny, tmp_path):
    weights = load_file(tiny["new"] / "model.safetensors")
    weights["language_model.model.extra.weight"] = torch.zeros(2)
    weights["mlp1.3.bias"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match=r"1 unexpected .*model\.extra\.weight.*mlp1\.3\.bias is \[7\]"):
        load_eagle2(copy_checkpoint(tiny["new"], tmp_path / "ckpt", weights))


def test_pooling_head_keys_are_ignored(tiny, tmp_path):
    weights = load_file(tiny["new"] / "model.safetensors")
    weights["vision_model.vision_model.head.probe"] = torch.zeros(1, 1, 32)
    weights["vision_model.vision_model.head.attention.in_proj_weight"] = torch.zeros(96, 32)
    model = load_eagle2(copy_checkpoint(tiny["new"], tmp_path / "ckpt", weights))
    with torch.no_grad():
        assert torch.equal(model.encode_images(pixels(1)), load_eagle2(tiny["new"]).encode_images(pixels(1)))


def test_stored_lm_head_is_loaded(tiny, tmp_path):
    weights = load_file(tiny["new"] / "model.safetensors")
    embed = weights["language_model.model.embed_tokens.weight"]
    head = "language_model.lm_head.weight"
    same = load_eagle2(copy_checkpoint(tiny["new"], tmp_path / "same", weights | {head: embed.clone()}))
    assert same.language_model.lm_head.weight is same.language_model.model.embed_tokens.weight
    other = torch.randn(embed.shape).to(embed.dtype)
    diff = load_eagle2(copy_checkpoint(tiny["new"], tmp_path / "diff", weights | {head: other}))
    assert torch.equal(diff.language_model.lm_head.weight, other.float())


def test_sharded_checkpoint_with_index(tiny, tmp_path):
    weights = load_file(tiny["mob"] / "model.safetensors")
    keys = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    folder = copy_checkpoint(tiny["mob"], tmp_path / "sharded", {})
    (folder / "model.safetensors").unlink()
    for name, names in shards.items():
        save_file({k: weights[k] for k in names}, folder / name, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: name for name, names in shards.items() for k in names}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    sharded, single = load_eagle2(folder), load_eagle2(tiny["mob"])
    with torch.no_grad():
        assert torch.equal(sharded.encode_images(pixels(1)), single.encode_images(pixels(1)))
        assert torch.equal(prefill_logits(sharded, [1, 2, 3]), prefill_logits(single, [1, 2, 3]))


def test_no_safetensors(tiny, tmp_path):
    folder = copy_checkpoint(tiny["new"], tmp_path / "ckpt", {})
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="only safetensors"):
        load_eagle2(folder)


# --- resolve_checkpoint and options -------------------------------------------------------------

def test_resolve_checkpoint_local_folder(tiny):
    assert resolve_checkpoint(str(tiny["new"])) == tiny["new"]


def test_resolve_checkpoint_errors(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never touch the network
    with pytest.raises(CheckpointError, match="local checkpoint folder"):
        resolve_checkpoint("eagle-demo-tests/no-such-model")
    with pytest.raises(CheckpointError, match="neither a local folder nor a valid"):
        resolve_checkpoint(str(tmp_path / "missing" / "folder"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        resolve_checkpoint(tmp_path / "file.txt")
    with pytest.raises(CheckpointError, match="no config.json"):
        resolve_checkpoint(tmp_path)


def test_8bit_loading_makes_the_projects_weight_only_int8_layers(tiny):
    """--load-8bit is --quantize int8: int8 weights on float activations (no bitsandbytes, no host
    sync, no float16 cast), on any device."""
    from eagle_demo.model.quantized import Int8Linear

    model = load_eagle2(tiny["new"], load_in_8bit=True)
    layers = [m for m in model.language_model.modules() if isinstance(m, Int8Linear)]
    assert len(layers) == 4 * len(model.language_model.model.layers)  # q, k, v fused as they load, and gate, up
    assert isinstance(model.language_model.lm_head, torch.nn.Linear)
    with pytest.raises(ValueError, match="pick one"):
        load_eagle2(tiny["new"], load_in_8bit=True, quantize="int4")


def test_attention_choice(tiny):
    with pytest.raises(ValueError, match="unknown attention"):
        load_eagle2(tiny["new"], attn="eager")
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="flash_attn package"):
            load_eagle2(tiny["new"], attn="flash_attention_2")
