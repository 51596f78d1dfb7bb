"""Tiny random-weight Eagle2 checkpoints in the official file layouts, for tests and demos without
downloads: config.json of either layout, model.safetensors with the official key names, and
tokenizer files (a copy of a real tokenizer, or a small byte-level BPE in the same format).

Weights depend only on the seed and the model sizes, so the same seed gives byte-identical
weights in both layouts.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from itertools import accumulate
from pathlib import Path

import torch
from safetensors.torch import save_file

from .model.config import Eagle2Config
from .model.eagle2 import Eagle2Model
from .model.loading import LM_HEAD, key_prefixes, to_checkpoint_key

LAYOUTS = ("eagle_chat", "eagle_2_5_vl")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json")

# Added tokens of the Eagle2 tokenizer, in id order: (content, special).
ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
    ("<img>", True), ("</img>", True), ("<IMG_CONTEXT>", True), ("<quad>", True), ("</quad>", True),
    ("<ref>", True), ("</ref>", True), ("<box>", True), ("</box>", True),
]

# Training text for the small BPE vocabulary: everyday words of image chat.
CORPUS = """\
You are a helpful assistant. Describe this image in detail. What is in the picture? The image shows
a small brown dog sitting on a green lawn in front of a white house. There is a red ball next to the
dog, and a tall tree on the left side of the picture. The sky is blue with a few white clouds.
In the video, a person walks along the beach at sunset while the waves roll onto the sand.
Frame 1 sampled at 0.50 seconds: a man holds a cup of coffee. Frame 2 sampled at 1.25 seconds: he
puts the cup on the table and opens a book. How many people are there in this photo? There are three
people: two children and one adult. The children are playing with a kite, and the adult is reading.
Can you read the text on the sign? The sign says "Open every day from 9 to 5". Please answer the
question with a single word. Yes. No. The cat is sleeping on the sofa next to the window.
This is a chart of the monthly sales of the company. The highest value is in June and the lowest
value is in January. The line goes up from the start of the year to the middle, then it goes down.
Where was this picture taken? It looks like a busy street in a large city, with cars, buses, shops
and many people walking on the side of the road. The weather is cold, because they wear coats.
"""


# Model sizes: "tiny" for tests; "small" for CPU benchmarks; the true Eagle2 sizes for GPU benchmarks
# (weights' values do not change the cost). Each entry: Qwen2 dims, SigLIP dims, ConvNeXt dims or
# None for the real ConvNeXt-XXL. Sizes other than tiny/small use the real 151674-row vocabulary.
_SIGLIP_SO400M = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, num_hidden_layers=27)
SIZES = {
    "tiny": (dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                  num_hidden_layers=2),
             dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2),
             ([1, 1, 2, 1], [8, 16, 24, 32])),
    "small": (dict(hidden_size=256, intermediate_size=704, num_attention_heads=4, num_key_value_heads=2,
                   num_hidden_layers=4),
              dict(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_hidden_layers=2),
              ([1, 1, 2, 1], [16, 32, 48, 64])),
    "1B": (dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                num_hidden_layers=24), _SIGLIP_SO400M, None),
    "2B": (dict(hidden_size=1536, intermediate_size=8960, num_attention_heads=12, num_key_value_heads=2,
                num_hidden_layers=28), _SIGLIP_SO400M, None),
    "9B": (dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
                num_hidden_layers=28), _SIGLIP_SO400M, None),
}
REAL_VOCAB_SIZE = 151674
SHARD_BYTES = 4 << 30  # the default shard size: about the hub's


def write_tiny_checkpoint(out_dir: str | Path, layout: str = "eagle_2_5_vl", mob: bool = False,
                          tokenizer_dir: str | Path | None = None, seed: int = 0, size: str = "tiny",
                          shards: int | None = None) -> Path:
    """Write a tiny random Eagle2 checkpoint to out_dir (created if needed) and return its path.

    mob=True gives the 9B structure (SigLIP + ConvNeXt towers, untied lm_head), which exists in
    the eagle_chat layout only. tokenizer_dir: copy that tokenizer (e.g. the real Eagle2 one)
    instead of writing a small one; the vocabulary size follows the tokenizer. size: a key of SIZES.
    shards > 1 splits the weights as the hub does: model-0000k-of-0000n.safetensors and
    model.safetensors.index.json (the same weights as one file of the same seed); default: one
    file per SHARD_BYTES. Weights are made one shard at a time, so memory holds about one shard.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: expected one of {tuple(SIZES)}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: expected one of {LAYOUTS}")
    if mob and layout != "eagle_chat":
        raise ValueError("the SigLIP + ConvNeXt (9B) model exists in the eagle_chat layout only")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        _write_small_tokenizer(out)
    else:
        missing = [name for name in TOKENIZER_FILES[:3] if not (Path(tokenizer_dir) / name).is_file()]
        if missing:
            raise ValueError(f"{tokenizer_dir} is not a Qwen2 tokenizer folder: it lacks {', '.join(missing)}")
        for name in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / name).is_file():
                shutil.copyfile(Path(tokenizer_dir) / name, out / name)
    ids = _token_ids(out)

    config = _config_dict(layout, mob, ids, size)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"_from_model_config": True, "transformers_version": "4.37.2"}, indent=2) + "\n")
    shapes = _weight_shapes(Eagle2Config.from_dict(config))
    if shards is None:
        shards = max(1, math.ceil(sum(math.prod(shape) for shape in shapes.values()) * 2 / SHARD_BYTES))
    _save_weights(shapes, seed, out, shards)
    return out


def _save_weights(shapes: dict[str, torch.Size], seed: int, out: Path, shards: int) -> None:
    """model.safetensors, or `shards` files of consecutive keys of about equal bytes, and the index that
    maps each key to its file; each file's weights made just before it is written."""
    keys = list(shapes)
    if not 1 <= shards <= len(keys):
        raise ValueError(f"shards must be between 1 and the {len(keys)} tensors, not {shards}")
    weights = _random_weights(shapes, seed)
    if shards == 1:
        save_file(dict(weights), out / "model.safetensors", metadata={"format": "pt"})
        return
    sizes = [math.prod(shapes[key]) for key in keys]
    starts = [0, *accumulate(sizes)][:-1]  # each key goes to the shard its first byte falls in
    counts = [sum(1 for start in starts if k * sum(sizes) <= start * shards < (k + 1) * sum(sizes))
              for k in range(shards)]
    if 0 in counts:
        raise ValueError(f"{shards} shards leave one of them empty: ask for fewer")
    weight_map, total_size = {}, 0
    for k, count in enumerate(counts):
        name = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = dict(next(weights) for _ in range(count))
        save_file(part, out / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
        total_size += sum(t.nbytes for t in part.values())
        del part
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _config_dict(layout: str, mob: bool, ids: dict[str, int], size: str) -> dict:
    text_dims, siglip_dims, convnext_dims = SIZES[size]
    vocab_size = max(ids.values()) + 1
    if size not in ("tiny", "small"):
        vocab_size = max(vocab_size, REAL_VOCAB_SIZE)
    text = {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "hidden_act": "silu",
        "initializer_range": 0.02, "max_position_embeddings": 32768,
        "max_window_layers": text_dims["num_hidden_layers"], "model_type": "qwen2", "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768,
        "tie_word_embeddings": not mob, "torch_dtype": "bfloat16", "use_cache": False,
        "use_sliding_window": False, "vocab_size": vocab_size, **text_dims,
    }
    siglip = {
        "attention_dropout": 0.0, "drop_path_rate": 0.1, "hidden_act": "gelu_pytorch_tanh", "image_size": 448,
        "layer_norm_eps": 1e-06, "model_type": "siglip_vision_model", "num_channels": 3, "patch_size": 14,
        "torch_dtype": "bfloat16", **siglip_dims,
    }
    if layout == "eagle_chat":
        siglip.update({"architectures": ["SiglipVisionModel"], "vision_use_head": False})
    if mob:
        vision = {
            "model_type": "MOB", "hidden_size": "lazy_calculation", "moe_version_type": "convnext_512_siglip_448",
            "vision_path": "MOB:convnext-1024;palisiglip", "grid_size": 32, "convnext_img_size": 512,
            "siglip_img_size": 448, "normalize_type": "siglip", "mm_vision_select_layer": -1,
            "vision_tower_convnext_path": "convnext_xxlarge.clip_laion2b_soup", "siglip_vision_config": siglip,
        }
        if convnext_dims:  # not in the 9B json (which implies convnext_xxlarge): smaller stages
            vision["convnext_depths"], vision["convnext_dims"] = convnext_dims
    else:
        vision = siglip
    common = {
        "downsample_ratio": 0.5, "dynamic_image_size": True, "force_image_size": 448, "mlp_checkpoint": False,
        "pad2square": False, "pre_feature_reduction": False, "select_layer": -1, "template": "qwen2-chat",
        "torch_dtype": "bfloat16", "use_backbone_lora": 0, "use_llm_lora": 0, "use_thumbnail": True,
    }
    if layout == "eagle_chat":
        return {
            "architectures": ["Eagle2ChatModel"],
            "auto_map": {"AutoConfig": "configuration_eagle_chat.Eagle2ChatConfig",
                         "AutoModel": "modeling_eagle_chat.Eagle2ChatModel",
                         "AutoModelForCausalLM": "modeling_eagle_chat.Eagle2ChatModel"},
            **common, "efficient_loss": True, "keep_aspect_ratio": False, "llm_config": text,
            "loss_version": "v4", "max_dynamic_patch": 12, "min_dynamic_patch": 1, "model_type": "eagle_chat",
            "ps_version": "v2", "transformers_version": None, "vision_config": vision,
        }
    return {
        "architectures": ["Eagle2_5_VLForConditionalGeneration"],
        "auto_map": {"AutoConfig": "configuration_eagle2_5_vl.Eagle2_5_VLConfig",
                     "AutoModel": "modeling_eagle2_5_vl.Eagle2_5_VLForConditionalGeneration"},
        **common, "image_token_index": ids["<IMG_CONTEXT>"], "max_dynamic_tiles": 12, "min_dynamic_tiles": 1,
        "model_type": "eagle_2_5_vl", "text_config": text, "tie_word_embeddings": text["tie_word_embeddings"],
        "transformers_version": "4.51.0", "vision_config": vision,
    }


def true_size_shapes(size: str, layout: str = "eagle_2_5_vl", mob: bool = False) -> dict[str, torch.Size]:
    """Checkpoint key -> shape of what `write_tiny_checkpoint` writes at a true size (1B, 2B, 9B: the real
    vocabulary, whatever the tokenizer), without writing it."""
    if size in ("tiny", "small"):
        raise ValueError("the tiny and small sizes' vocabulary follows their tokenizer: write them instead")
    ids = {"<|endoftext|>": 0, "<|im_end|>": 1, "<IMG_CONTEXT>": 2}
    return _weight_shapes(Eagle2Config.from_dict(_config_dict(layout, mob, ids, size)))


def _weight_shapes(config: Eagle2Config) -> dict[str, torch.Size]:
    """Checkpoint key -> shape, in the order the weights are made (the model keys' sorted order)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Eagle2Model(config).state_dict().items()}
    if config.text.tie_word_embeddings:
        del shapes[LM_HEAD]
    prefixes = key_prefixes(config)
    return {to_checkpoint_key(key, prefixes): shapes[key] for key in sorted(shapes)}


def _random_weights(shapes: dict[str, torch.Size], seed: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, N(0, 0.02) weight in bfloat16; norm scales 1 + N(0, 0.02)), one at a time in `shapes`' order."""
    generator = torch.Generator().manual_seed(seed)
    for key, shape in shapes.items():
        value = torch.randn(shape, generator=generator) * 0.02
        if len(shape) == 1 and key.endswith("weight"):
            value += 1
        yield key, value.to(torch.bfloat16)


def _token_ids(folder: Path) -> dict[str, int]:
    """Every token id of the tokenizer in folder: vocab.json plus the added tokens."""
    ids = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    added = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))["added_tokens_decoder"]
    ids.update({token["content"]: int(i) for i, token in added.items()})
    return ids


def _byte_symbols() -> list[str]:
    """The printable stand-in of each byte 0..255 used by byte-level BPE (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def _learn_merges(text: str, symbols: list[str], count: int) -> list[tuple[str, str]]:
    """Plain BPE training: repeatedly merge the most frequent adjacent pair (ties: smallest pair)."""
    pieces = re.findall(r" ?[A-Za-z]+| ?\d| ?[^\sA-Za-z\d]+|\s+", text)
    words = Counter(tuple(symbols[b] for b in piece.encode()) for piece in pieces)
    merges = []
    while len(merges) < count:
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i:i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


def _write_small_tokenizer(out: Path, num_merges: int = 300) -> None:
    """A Qwen2-format byte-level BPE tokenizer with the Eagle2 added tokens after its vocabulary."""
    symbols = _byte_symbols()
    merges = _learn_merges(CORPUS, symbols, num_merges)
    vocab = {s: i for i, s in enumerate(symbols)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")

    added = {content: len(vocab) + i for i, (content, _) in enumerate(ADDED_TOKENS)}
    specials = [content for content, special in ADDED_TOKENS[1:] if special]
    decoder = {str(added[content]): {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                                     "single_word": False, "special": special} for content, special in ADDED_TOKENS}
    token = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    files = {
        "added_tokens.json": dict(sorted(added.items())),
        "special_tokens_map.json": {"additional_special_tokens": specials,
                                    "eos_token": {"content": "<|im_end|>", **token},
                                    "pad_token": {"content": "<|endoftext|>", **token}},
        "tokenizer_config.json": {
            "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
            "added_tokens_decoder": decoder, "additional_special_tokens": specials, "bos_token": None,
            "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
            "model_max_length": 16384, "pad_token": "<|endoftext|>", "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
        },
    }
    for name, content in files.items():
        (out / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
