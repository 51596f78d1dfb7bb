"""4-bit and 8-bit weights on a CPU, against float32 and transformers `generate`, in one run.

- Decode speed at the true 1B size (random weights), after a text prompt of --text-tokens tokens,
  --new-tokens greedy tokens, batch 1: `generate` on the float32 weights (the baseline), the engine in
  float32, with `--quantize int8`, with the 4-bit export (RTN; `--quantize int4` makes the same weights),
  and the 4-bit export with `--cpu-int8` (lm_head and the vision tower as PyTorch's dynamic int8).
  The five alternate, --repeats runs each; medians, spreads, ratios to `generate` and to float32.
- Quality on fixed prompts, against the float32 engine: the first step's logits (largest difference
  over the largest logit, and whether the top token agrees) and greedy agreement (how many of
  --quality-tokens greedy tokens match before the first difference), for `--quantize int8`, the RTN
  export and the AWQ export (calibrated through the engine on the repository's images and text).
  Random weights: these say the arithmetic is right, not how a trained Eagle2 fares.
- Sizes: each checkpoint's size on disk, and the 9B's weight bytes in int4, counted from its
  tensors' shapes (what `weight_bytes` reads from a checkpoint's headers) without writing it.

Prints JSON lines; the last one is the summary.

    python benchmarks/bench_quant.py
    python benchmarks/bench_quant.py --repeats 1 --skip-awq --text-tokens 200
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_decode import engine_run, generate_baseline, spread, text_prompt  # noqa: E402
from benchmarks.common import checkpoint, emit  # noqa: E402
from eagle_demo.config import LIMITS, GenerationSettings  # noqa: E402
from eagle_demo.engine import Engine, Message  # noqa: E402
from eagle_demo.model.config import Eagle2Config  # noqa: E402
from eagle_demo.model.loading import weight_files  # noqa: E402
from eagle_demo.quantize import QUANTIZED, quantize_checkpoint  # noqa: E402
from eagle_demo.tiny import true_size_shapes  # noqa: E402

PROMPTS = [  # the quality prompts: none of them is in AWQ's calibration set
    "Write a short poem about a lighthouse in winter.",
    "Explain step by step how to compute the area of a circle with a radius of 3 cm.",
    "List five things to check before a long bicycle trip, and say why each matters.",
    "Translate into French: The museum opens at nine and closes at five on weekdays.",
]
SPEED = ("generate", "float32", "int8", "int4", "int4 + cpu-int8")


def text_engine(path: Path, text_tokens: int, **options) -> Engine:
    # a long text question is longer than one chat message may be (8,000 characters)
    engine = Engine(str(path), device="cpu", limits=replace(LIMITS, max_prompt_chars=max(
        LIMITS.max_prompt_chars, 10 * text_tokens)), **options)
    engine.load()
    engine.stop_ids = set()  # random weights may pick <|im_end|> at any step: always decode the full length
    return engine


def disk_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in weight_files(path))


def int4_weight_bytes(size: str, group_size: int = 128) -> dict:
    """A checkpoint of `size` (in the 9B's layout for the 9B) in bfloat16 and in int4, in bytes counted
    from its tensors' shapes: packed weights at 4 bits, a bfloat16 scale per group, an int64 [out, in]
    per layer; every other tensor in bfloat16."""
    dense = packed = quantized = 0
    for key, shape in true_size_shapes(size, "eagle_chat" if size == "9B" else "eagle_2_5_vl", size == "9B").items():
        numel = math.prod(shape)
        dense += 2 * numel
        if QUANTIZED.fullmatch(key):
            quantized += numel
            packed += numel // 2 + 2 * numel // group_size + 16
        else:
            packed += 2 * numel
    return {"size": size, "bf16_gb": round(dense / 1e9, 2), "int4_gb": round(packed / 1e9, 2),
            "quantized_share": round(quantized * 2 / dense, 3)}


@torch.inference_mode()
def first_logits(engine: Engine, prompt) -> torch.Tensor:
    engine.clear_caches()
    return engine.runner.prefill(prompt, engine.runner.embed_prompt(prompt))[0]


def quality(engines: dict[str, Engine], reference: Engine, new_tokens: int) -> dict:
    """Per engine: the first step's logit error and top-token agreement, and the greedy tokens matching
    float32's before the first difference, on each of PROMPTS."""
    settings = GenerationSettings(temperature=0.0, max_new_tokens=new_tokens, repetition_penalty=1.0)
    found = {name: {"logit_error": [], "top1_agrees": 0, "greedy_match": []} for name in engines}
    for text in PROMPTS:
        exact = reference.chat([Message("user", text)], "", settings)
        list(exact)
        expected = first_logits(reference, exact.prompt)
        for name, engine in engines.items():
            answer = engine.chat([Message("user", text)], "", settings)
            list(answer)
            logits = first_logits(engine, answer.prompt)
            figures = found[name]
            figures["logit_error"].append(round(float((logits - expected).abs().max() / expected.abs().max()), 4))
            figures["top1_agrees"] += int(logits.argmax() == expected.argmax())
            figures["greedy_match"].append(next((i for i, (a, b) in enumerate(zip(answer.token_ids, exact.token_ids))
                                                 if a != b), len(exact.token_ids)))
    return found


def speed(engines: dict[str, Engine], reference: Engine, message: Message, args) -> dict:
    """tokens/s of each, alternating --repeats times; `generate` runs on the reference's weights."""
    last = engine_run(reference, message, 4)["gen"]
    for engine in engines.values():  # warm-up
        engine_run(engine, message, 4)
    generate_baseline(reference, last, 2)
    rates, prefill = {name: [] for name in SPEED}, {name: [] for name in SPEED[1:]}
    for _ in range(args.repeats):
        for name in SPEED:
            if name == "generate":
                rates[name].append(generate_baseline(reference, last, args.new_tokens)[0])
            else:
                run = engine_run(engines[name], message, args.new_tokens)["gen"]
                rates[name].append(run.timings["decode_tokens_per_s"])
                prefill[name].append(run.timings["prefill_s"])
                last = run if name == "float32" else last
            emit(stage=name, tokens_per_s=round(rates[name][-1], 1))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {"tokens_per_s": {name: spread(values, 1) for name, values in rates.items()},
            "prefill_s": {name: spread(values, 1) for name, values in prefill.items()},
            "ratio_to_generate": {name: round(medians[name] / medians["generate"], 2) for name in SPEED[1:]},
            "ratio_to_float32": {name: round(medians[name] / medians["float32"], 2) for name in SPEED[2:]}}


def int4_check(path: Path, image: str, args) -> dict:
    """benchmarks/gpu_check.py's 4-bit check, for a checkpoint `path` on args.device (CUDA, or a CPU):
    the RTN export loads with every decoder Linear layer on the device's int4 kernel; its captured decode
    equals its eager decode token for token; its first-step logits against the unquantised model's;
    tokens/s and prefill time, the bytes of its tensors on the device and (CUDA) the memory the loaded engine holds
    (KV cache included), each beside the unquantised model's; and
    `--quantize int4|int8` (with whether `_weight_int8pack_mm` runs on the device)."""
    from benchmarks.gpu_check import greedy_turn, new_engine
    from eagle_demo.model.quantized import Int4Linear, group_size_for

    dtype = "bfloat16" if args.device.startswith("cuda") else None
    text = Eagle2Config.from_dir(path).text
    out = quantize_checkpoint(path, Path(tempfile.mkdtemp()) / "int4", show_progress=False,
                              group_size=group_size_for(math.gcd(text.hidden_size, text.intermediate_size)))
    fields, turns = {}, {}
    for name, folder in (("dense", path), ("int4", out)):
        before = _allocated(args.device)
        engine = new_engine(folder, args.device, dtype=dtype)
        fields[f"{name}_loaded_gib"] = round((_allocated(args.device) - before) / 2**30, 3)  # with the KV cache
        fields[f"{name}_model_gib"] = round(_tensor_bytes(engine.model) / 2**30, 3)
        turns[name] = greedy_turn(engine, image, args.new_tokens)
        fields[f"{name}_tokens_per_s"] = turns[name]["fields"]["tokens_per_s"]
        fields[f"{name}_prefill_s"] = turns[name]["fields"]["prefill_s"]
        turns[name]["logits"] = first_logits(engine, turns[name]["gen"].prompt).float()
        if name == "int4":
            kernels = {m.kernel for m in engine.model.modules() if isinstance(m, Int4Linear)}
            fields.update(kernels=sorted(map(str, kernels)), cuda_graphs=bool(engine.decoder.graphs))
        engine.unload()
    exact, logits = turns["dense"]["logits"], turns["int4"]["logits"]
    fields.update(logit_error=round(float((logits - exact).abs().max() / exact.abs().max()), 4),
                  top1_agrees=bool(logits.argmax() == exact.argmax()))
    eager = new_engine(out, args.device, dtype=dtype, use_cuda_graphs=False)
    eager_ids, captured = greedy_turn(eager, image, args.new_tokens)["gen"].token_ids, turns["int4"]["gen"].token_ids
    eager.unload()
    fields["equal_to_eager_tokens"] = next((i for i, (a, b) in enumerate(zip(captured, eager_ids)) if a != b),
                                           len(captured))
    fields.update({f"quantize_{bits}": _quantized_at_load(path, image, args, dtype, bits) for bits in ("int4", "int8")})
    if kernels != {args.device.split(":")[0]}:
        raise AssertionError(f"int4 layers not on the {args.device} kernel: {fields}")
    if captured != eager_ids:
        raise AssertionError(f"captured and eager int4 decode differ from token {fields['equal_to_eager_tokens']}")
    return fields


def _tensor_bytes(model) -> int:
    """Bytes of a model's parameters and buffers, as they lie on its device (an embedding tied to lm_head once)."""
    tensors = {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _allocated(device: str) -> int:
    return torch.cuda.memory_allocated(device) if device.startswith("cuda") else 0


def _quantized_at_load(path: Path, image: str, args, dtype: str | None, bits: str) -> dict:
    """`--quantize bits`: its layers, whether they run on a fused kernel, the tokens of a short answer."""
    from benchmarks.gpu_check import greedy_turn, new_engine
    from eagle_demo.model.quantized import Int4Linear, Int8Linear

    before = _allocated(args.device)
    engine = new_engine(path, args.device, dtype=dtype, quantize=bits)
    layers = [m for m in engine.model.modules() if isinstance(m, (Int4Linear, Int8Linear))]
    fields = {"layers": len(layers), "loaded_gib": round((_allocated(args.device) - before) / 2**30, 3),
              "model_gib": round(_tensor_bytes(engine.model) / 2**30, 3),
              "fused_kernel": all(getattr(m, "kernel", None) or getattr(m, "kernel_rows", 0) for m in layers),
              "tokens": len(greedy_turn(engine, image, 8)["gen"].token_ids)}
    engine.unload()
    return fields


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1B")
    p.add_argument("--text-tokens", type=int, default=2000, help="the prompt's length before the decode")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quality-tokens", type=int, default=32, help="greedy tokens compared per prompt")
    p.add_argument("--group-size", type=int, default=128, help="the exports' group size")
    p.add_argument("--skip-awq", action="store_true", help="no AWQ export (its calibration takes minutes)")
    args = p.parse_args()
    torch.manual_seed(0)
    start = time.perf_counter()
    path = checkpoint(args.size)
    out = Path(tempfile.mkdtemp(prefix="eagle2-quant-"))
    rtn = quantize_checkpoint(path, out / "rtn", group_size=args.group_size, show_progress=False)
    emit(stage="rtn export", seconds=round(time.perf_counter() - start, 1))
    awq = None
    if not args.skip_awq:
        start = time.perf_counter()
        awq = quantize_checkpoint(path, out / "awq", method="awq", group_size=args.group_size, show_progress=False)
        emit(stage="awq export", seconds=round(time.perf_counter() - start, 1))
    disk = {name: round(disk_bytes(folder) / 1e9, 3) for name, folder in
            (("bf16", path), ("int4 rtn", rtn), ("int4 awq", awq)) if folder}
    emit(stage="disk_gb", **disk)

    reference = text_engine(path, args.text_tokens)
    engines = {"float32": reference, "int8": text_engine(path, args.text_tokens, quantize="int8"),
               "int4": text_engine(rtn, args.text_tokens),
               "int4 + cpu-int8": text_engine(rtn, args.text_tokens, cpu_int8=True)}
    message = Message("user", text_prompt(args.text_tokens))
    fast = speed(engines, reference, message, args)
    del engines["int4 + cpu-int8"], engines["float32"]
    if awq:
        engines["int4 awq"] = text_engine(awq, args.text_tokens)
    engines = {("int4 rtn" if name == "int4" else name): engine for name, engine in engines.items()}
    found = quality(engines, reference, args.quality_tokens)
    emit(summary=True, size=args.size, text_tokens=args.text_tokens, new_tokens=args.new_tokens,
         threads=torch.get_num_threads(), **fast,
         goal_int4_3x_generate=fast["ratio_to_generate"]["int4"] >= 3, quality=found, disk_gb=disk,
         weight_bytes=[int4_weight_bytes(size) for size in ("1B", "2B", "9B")],
         peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))


if __name__ == "__main__":
    main()
