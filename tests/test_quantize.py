"""4-bit Eagle2: `python -m eagle_demo quantize` (W4A16, compressed-tensors' pack-quantized format) read
back by the compressed-tensors library itself, loaded by the engine on CPU, answered by the CLI and the
app; `--quantize int4|int8` at load; AWQ's scale search. (vLLM serving the export: tests/test_vllm.py.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from compressed_tensors import QuantizationConfig
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer
from safetensors.torch import load_file
from torch import nn

from eagle_demo.awq import search_scale
from eagle_demo.config import GenerationSettings
from eagle_demo.conversation import Message
from eagle_demo.engine import Engine
from eagle_demo.model import CheckpointError, load_eagle2
from eagle_demo.model.loading import weight_bytes
from eagle_demo.model.quantized import (
    CPU_KERNEL_ROWS,
    Int4Linear,
    Int8Linear,
    dequantize,
    pack,
    quantize_groups,
    unpack,
)
from eagle_demo.quantize import QUANTIZED, quantize_checkpoint
from eagle_demo.tiny import write_tiny_checkpoint
from tests.conftest import ASSETS, ROOT, launched_app

GROUP = 32  # the tiny size's layers have 32 or 64 inputs
LAYOUTS = {"eagle_chat (9B's towers)": dict(layout="eagle_chat", mob=True), "eagle_2_5_vl": dict(layout="eagle_2_5_vl")}
GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=6, max_tiles=2)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eagle_demo", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """{layout: (original folder, its 4-bit export)}: the 9B layout through the command, as a user runs it."""
    root = tmp_path_factory.mktemp("quantize")
    made = {}
    for name, layout in LAYOUTS.items():
        original = write_tiny_checkpoint(root / f"{layout['layout']}", **layout)
        out = root / f"{layout['layout']}-int4"
        if layout.get("mob"):
            done = cli("quantize", "--model", str(original), "--out", str(out), "--group-size", str(GROUP))
            assert done.returncode == 0 and done.stdout.strip() == str(out), done.stderr
            assert "quantizing: 100%" in done.stderr  # the progress bar
        else:
            quantize_checkpoint(original, out, group_size=GROUP, show_progress=False)
        made[name] = (original, out)
    return made


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compressed_tensors_reads_the_export_back(exported, layout):
    """The library's own pack-quantized decompression gives every quantised weight back within half a
    step of its group, and every other tensor exactly; only the decoder layers' Linear layers are packed."""
    original, out = exported[layout]
    config = json.loads((out / "config.json").read_text())
    scheme = QuantizationConfig.model_validate(config["quantization_config"]).config_groups["group_0"]
    assert (scheme.weights.num_bits, scheme.weights.group_size, scheme.format) == (4, GROUP, "pack-quantized")
    before, after = load_file(original / "model.safetensors"), load_file(out / "model.safetensors")
    packed = {key.removesuffix(".weight_packed") for key in after if key.endswith(".weight_packed")}
    assert packed == {key.removesuffix(".weight") for key in before if QUANTIZED.fullmatch(key)}
    assert all(re.fullmatch(r"language_model\.model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj", name) for name in packed)
    layers = json.loads((original / "config.json").read_text())
    assert len(packed) == 7 * (layers.get("llm_config") or layers.get("text_config"))["num_hidden_layers"]

    restored = CompressedTensorsDequantizer(out, dtype=torch.float32).validate(dict(after))  # it takes what it reads
    assert restored.keys() == before.keys()
    for key, weight in before.items():
        if key.removesuffix(".weight") in packed:
            groups = weight.float().reshape(weight.shape[0], -1, GROUP)
            step = after[f"{key.removesuffix('.weight')}.weight_scale"].float().unsqueeze(-1)
            assert (step <= groups.abs().amax(-1, keepdim=True) / 7.5 * (1 + 2**-7)).all(), key  # 16 levels used
            value = restored[key].reshape(groups.shape)
            # half a step, and the rounding of the library's result to the scales' dtype (bfloat16)
            assert ((value - groups).abs() <= step * 0.5 + value.abs() * 2**-8).all(), key
            assert not torch.equal(restored[key], weight.float()), key
        else:
            assert torch.equal(restored[key], weight), key
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (original / name).read_bytes()
    del config["quantization_config"]
    assert config == json.loads((original / "config.json").read_text())


def test_a_fused_layer_quantises_to_the_values_of_its_parts():
    """--quantize quantises q, k, v as one layer: scales per output row and per group of inputs (int4),
    or per output row (int8), so the fused layer holds exactly the values its parts would."""
    parts = [nn.Linear(256, out, bias=True) for out in (64, 32, 32)]
    fused = nn.Linear(256, 128, bias=True)
    fused.weight.data, fused.bias.data = torch.cat([p.weight for p in parts]), torch.cat([p.bias for p in parts])
    one = Int4Linear.from_float(fused, 128)
    q, scale, _ = one.values()
    separate = [Int4Linear.from_float(p, 128).values() for p in parts]
    assert torch.equal(q, torch.cat([v[0] for v in separate]))
    assert torch.equal(scale, torch.cat([v[1] for v in separate]))
    int8 = Int8Linear(fused)
    assert torch.equal(int8.weight, torch.cat([Int8Linear(p).weight for p in parts]))
    assert torch.equal(int8.scale, torch.cat([Int8Linear(p).scale for p in parts]))


def test_values_pack_in_compressed_tensors_own_order():
    q = torch.randint(-8, 8, (48, 96), dtype=torch.int8)
    assert torch.equal(pack(q), pack_to_int32(q, 4))
    assert torch.equal(unpack(pack(q), 96), q)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_export_loads_with_4bit_layers_that_compute_its_weights(exported, layout):
    """Each packed layer becomes an Int4Linear on PyTorch's CPU int4 kernel; its outputs are those of
    the weights compressed-tensors decompresses (within bfloat16 activations); nothing else changes."""
    original, out = exported[layout]
    model = load_eagle2(out)
    restored = CompressedTensorsDequantizer(out, dtype=torch.float32).validate(load_file(out / "model.safetensors"))
    int4 = {name: m for name, m in model.named_modules() if isinstance(m, Int4Linear)}
    assert len(int4) == sum(key.endswith(".weight_packed") for key in load_file(out / "model.safetensors"))
    assert all(m.kernel == "cpu" for m in int4.values())
    assert not any(isinstance(m, nn.Linear) for name, m in model.named_modules() if ".layers." in name
                   and "language_model" in name)
    for rows in (5, CPU_KERNEL_ROWS):  # a decode step (the int4 kernel), a prompt (the dequantised weight)
        x = torch.randn(rows, next(iter(int4.values())).in_features, generator=torch.Generator().manual_seed(rows))
        for name, layer in int4.items():
            if layer.in_features == x.shape[1]:
                expected = nn.functional.linear(x, restored[f"{name}.weight"], layer.bias)
                torch.testing.assert_close(layer(x), expected, rtol=0.02, atol=0.02 * expected.abs().max().item())
    dense, kept = load_eagle2(original).state_dict(), model.state_dict()
    assert all(torch.equal(kept[key], value) for key, value in dense.items() if key in kept)
    assert {key for key in dense if key not in kept} == {f"{name}.weight" for name in int4}


def test_weight_bytes_count_packed_weights_at_their_size(exported):
    """What the menu and ZeroGPU size a model by: 4 bits per packed weight, its bfloat16 scales, the rest as dense."""
    original, out = exported["eagle_2_5_vl"]
    linear = [t.numel() for key, t in load_file(original / "model.safetensors").items() if QUANTIZED.fullmatch(key)]
    expected = (weight_bytes(original, torch.bfloat16) - 2 * sum(linear) + sum(linear) // 2  # int4 for bfloat16
                + 2 * sum(linear) // GROUP + 16 * len(linear))  # the scales, and each layer's [out, in] in int64
    assert weight_bytes(out, torch.bfloat16) == expected


@torch.inference_mode()
def text_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """The language model's logits for the next token after `ids` [1, L]."""
    lm = model.language_model
    hidden = lm(lm.embed(ids), torch.arange(ids.shape[1]), lm.new_cache(ids.shape[1]))
    return lm.logits(hidden[0, -1])


PROMPT = torch.tensor([[11, 220, 57, 301, 4, 99, 160, 42, 7, 250, 18, 77]])


def test_the_engine_says_its_weights_are_4bit_and_answers(exported):
    _, out = exported["eagle_chat (9B's towers)"]
    engine = Engine(str(out), device="cpu")
    engine.load()
    assert engine.status.endswith(", 4-bit weights") and engine.weights == "4-bit weights"
    answer = engine.chat([Message("user", "What is this?", [str(ASSETS / "chart.png")])], "", GREEDY)
    list(answer)
    assert answer.token_ids and answer.finish_reason in ("stop", "length")


@pytest.mark.parametrize("bits", ["int4", "int8"])
def test_quantize_at_load_makes_weight_only_layers_close_to_float(exported, bits):
    original, _ = exported["eagle_2_5_vl"]
    engine = Engine(str(original), device="cpu", quantize=bits)
    engine.load()
    kind = Int4Linear if bits == "int4" else Int8Linear
    # 4 per decoder layer (q, k, v fused as they load, and gate, up), 2 layers
    assert sum(isinstance(m, kind) for m in engine.model.modules()) == 8
    assert isinstance(engine.model.language_model.lm_head, nn.Linear)
    assert engine.status.endswith(f", {engine.weights}") and engine.weights == f"{bits[3:]}-bit weights"
    expected, got = text_logits(load_eagle2(original), PROMPT), text_logits(engine.model, PROMPT)
    assert (got - expected).abs().max() <= (0.1 if bits == "int4" else 0.02) * expected.abs().max()
    answer = engine.chat([Message("user", "Describe the picture.", [str(ASSETS / "scene.jpg")])], "", GREEDY)
    list(answer)
    assert answer.token_ids


def test_the_cli_answers_with_the_export_and_refuses_to_quantize_it_again(exported):
    _, out = exported["eagle_2_5_vl"]
    done = cli("generate", "--model", str(out), "--prompt", "What is this?", "--image", str(ASSETS / "chart.png"),
               "--max-tiles", "2", "--temperature", "0", "--max-new-tokens", "6", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["num_tiles"] == [3]
    with pytest.raises(ValueError, match="this checkpoint already holds 4-bit weights: load it without --quantize"):
        load_eagle2(out, quantize="int4")  # the CLI's one line (tests/test_cli.py)


def test_the_app_answers_with_the_export_and_says_it_is_4bit(exported):
    from gradio_client import Client, handle_file

    _, out = exported["eagle_2_5_vl"]
    with launched_app(out) as app:
        client = Client(app.url, verbose=False, analytics_enabled=False)
        chat = [{"role": "user", "content": [{"type": "file", "file": handle_file(str(ASSETS / "chart.png"))},
                                             {"type": "text", "text": "What is it?"}]}]
        answered, status = client.predict(chat, None, "", 2, 8, 0.0, 1.0, 5, 1.0, 0, "", api_name="/respond")
    assert status.startswith(f"**Model** {app.model} · ready") and status.endswith("4-bit weights")
    assert re.search(rf"(^| · ){app.model} · 4-bit weights · \d+ tokens · ", answered[-1]["metadata"]["log"])
    assert app.recorder.generations[-1].token_ids


def test_awq_finds_scales_no_worse_than_round_to_nearest():
    """On inputs with a few large channels (what AWQ is for), the searched scale beats a = 0 (RTN)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 128, generator=generator)
    x[:, :4] *= 30
    weight = torch.randn(64, 128, generator=generator) * 0.02
    s, losses = search_scale(x, x.abs().mean(0), [weight], GROUP)
    assert min(losses) < 0.9 * losses[0] and s[:4].min() > s[4:].max()
    q, scale = quantize_groups(weight * s, GROUP)
    assert (x @ (dequantize(q, scale) / s).t() - x @ weight.t()).pow(2).mean() == pytest.approx(min(losses), rel=1e-4)


def test_awq_export_folds_its_scales_and_stays_close_to_float(exported, tmp_path):
    """`--method awq` through the engine (a calibration set with one image): the norms carry 1/s, and
    the model's logits stay as close to the float model's as int4 allows."""
    original, _ = exported["eagle_2_5_vl"]
    awq = quantize_checkpoint(original, tmp_path / "awq", method="awq", group_size=GROUP, show_progress=False,
                              images=[str(ASSETS / "chart.png")])
    before, after = load_file(original / "model.safetensors"), load_file(awq / "model.safetensors")
    norm = "language_model.model.layers.0.input_layernorm.weight"
    assert not torch.equal(before[norm], after[norm])
    assert torch.equal(before["language_model.model.norm.weight"], after["language_model.model.norm.weight"])
    expected, got = text_logits(load_eagle2(original), PROMPT), text_logits(load_eagle2(awq), PROMPT)
    assert (got - expected).abs().max() <= 0.1 * expected.abs().max()


def test_asymmetric_layers_packed_by_compressed_tensors_load_with_their_zero_points():
    """Other tools' W4A16 exports may be asymmetric: a layer compressed by the library itself (its
    zero points packed along the outputs) computes the weights the library decompresses."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams

    args = QuantizationArgs(num_bits=4, symmetric=False, strategy="group", group_size=GROUP)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    weight = (torch.randn(64, 96, generator=torch.Generator().manual_seed(1)) * 0.02 + 0.01).to(torch.bfloat16)
    groups = weight.reshape(64, -1, GROUP)
    scale, zero = calculate_qparams(groups.amin(-1), groups.amax(-1), args)
    packed = PackedQuantizationCompressor.compress({"weight": weight, "weight_scale": scale,
                                                    "weight_zero_point": zero}, scheme)
    expected = PackedQuantizationCompressor.decompress(packed, scheme)["weight"].float()
    layer = Int4Linear(96, 64, GROUP, bias=False, symmetric=False)
    layer.load_state_dict(packed, assign=True)
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(2))
    # Both paths compute in bf16: each output may be off by a few bf16 steps of the sum of |x·w|
    # (300 seeds: at most 0.0023 of it). A bound on the weights alone failed for some inputs.
    bound = 2**-7 * (x.abs() @ expected.abs().t())
    assert ((layer(x) - x @ expected.t()).abs() <= bound).all()  # no kernel yet: the dequantised weight
    assert ((layer.prepare()(x) - x @ expected.t()).abs() <= bound).all()  # PyTorch's CPU int4 kernel
    assert layer.kernel == "cpu"


def test_other_quantization_schemes_are_refused_by_name(exported, tmp_path):
    _, out = exported["eagle_2_5_vl"]
    other = Path(shutil.copytree(out, tmp_path / "w8a16"))
    config = json.loads((other / "config.json").read_text())
    config["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] = 8
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="'num_bits': 8.*is not 4-bit integer weights"):
        load_eagle2(other)
