"""Decode speed and time to first token of the engine, against plain transformers `generate`.

Standard request: one 12-tile image plus a ~20-token question, 256 new tokens, batch 1, greedy,
random weights of the chosen size (weights' values do not change the cost). The engine and
`generate` alternate, --repeats runs each, on the same weights and prompt; the summary gives
medians and the spread (min, max) of both and of their ratio, the bare decode loop, and the peak
RSS. `generate`'s decode rate, like the engine's, runs from its first token to its last (a
streamer notes their arrival). Prints JSON lines; the last one holds the summary.

On a CPU the summary also gives the prefill in CPU_PREFILL_CHUNK steps against one step
(alternating), and, in the image mode, the first word's stages at the CPU's own tile default
(`cpu_default`) beside those at 12 tiles (`first_word`).

--compile: the engine's `compile_decode` (its decode step under torch.compile, captured as a CUDA
graph; CUDA only: on a CPU the step stays eager); the load's time includes the compile.

--text-tokens N: decode only, after a text prompt of about N tokens (no image), so the ratio to
`generate` can be measured often on a CPU (1B, N=2000: a few minutes on 2 cores).

--cpu-int8: the engine runs with dynamic int8 Linear layers; `generate` (the baseline) and the
error figures use the float32 weights: the first step's logits against float32 (largest
difference over the largest logit, and whether the top token agrees) and the greedy match.

    python benchmarks/bench_decode.py --size 1B
    python benchmarks/bench_decode.py --size 1B --device cpu --text-tokens 2000 --new-tokens 32
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import QUESTION, checkpoint, default_device, emit, twelve_tile_image  # noqa: E402
from eagle_demo.config import LIMITS, GenerationSettings  # noqa: E402
from eagle_demo.engine import Engine, Message  # noqa: E402
from tests.support import transformers_twin  # noqa: E402

# Memory bandwidth used for the roofline, bytes/s, by GPU name (vendor figures).
BANDWIDTH = {"H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H200": 4.8e12, "A100-SXM4-80GB": 2.04e12}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def engine_run(engine: Engine, message: Message, new_tokens: int, max_tiles: int = 12) -> dict:
    settings = GenerationSettings(temperature=0.0, max_new_tokens=new_tokens, repetition_penalty=1.0,
                                  max_tiles=max_tiles)
    engine.clear_caches()  # the turn is measured cold: tiling, vision tower, full prefill
    gen = engine.chat([message], "You are a helpful assistant.", settings)
    start = time.perf_counter()
    for _ in gen:
        pass
    sync(engine.device)
    return {"gen": gen, "wall_s": time.perf_counter() - start + gen.timings["media_s"]}


class TokenClock:
    """A transformers streamer that notes when each token arrives (generate reads every token on
    the host anyway, to check its stopping rules)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


@torch.inference_mode()
def generate_baseline(engine: Engine, gen, new_tokens: int) -> tuple[float, list[int]]:
    """transformers' Qwen2ForCausalLM.generate on the same weights and prompt embeddings; its decode
    rate from the arrival of its tokens, first to last, as the engine's."""
    from transformers import GenerationConfig

    hf = transformers_twin(engine.model.language_model)
    embeds = engine.runner.embed_prompt(gen.prompt)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
    clock = TokenClock()
    out = hf.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config, streamer=clock)
    tokens = clock.times[-new_tokens:]  # the first put is the (empty) prompt
    return (new_tokens - 1) / (tokens[-1] - tokens[0]), out[0].tolist()


@torch.inference_mode()
def prefill_in_steps_against_one(engine: Engine, prompt, repeats: int) -> dict:
    """The CPU's prefill in its steps (CPU_PREFILL_CHUNK) against one step, alternating: seconds each."""
    runner = engine.runner
    embeds, chunk = runner.embed_prompt(prompt), runner.prefill_chunk
    steps, one = [], []
    try:
        for _ in range(repeats):
            for size, times in ((chunk, steps), (None, one)):
                runner.prefill_chunk = size
                engine.clear_caches()
                start = time.perf_counter()
                runner.prefill(prompt, embeds)
                times.append(time.perf_counter() - start)
    finally:
        runner.prefill_chunk = chunk
    return {"prefill_in_steps_s": spread(steps, 3), "prefill_one_step_s": spread(one, 3),
            "prefill_steps_ratio": round(statistics.median(one) / statistics.median(steps), 3)}


def bare_loop(engine: Engine, gen, steps: int) -> float:
    """Tokens/s of the decode step alone: no sampling rules, detokenising or cancel checks."""
    token = torch.tensor(gen.token_ids[0], device=engine.device)
    pos = len(gen.prompt_token_ids)
    with torch.inference_mode():
        for _ in range(3):
            engine.decoder.step(token, pos)
        sync(engine.device)
        start = time.perf_counter()
        for i in range(steps):
            token = engine.decoder.step(token, pos + i).argmax()
        int(token)
        sync(engine.device)
    return steps / (time.perf_counter() - start)


def spread(values: list[float], digits: int = 2) -> dict:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def text_prompt(tokens: int) -> str:
    """A question of about `tokens` tokens (Eagle2's tokenizer writes these words as one token each)."""
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex".split()
    return " ".join(words[i % len(words)] for i in range(tokens)) + "\n" + QUESTION


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default=None, help="tiny, small, 1B, 2B or 9B (default: 1B on GPU, small on CPU)")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the engine and of generate, alternating")
    parser.add_argument("--text-tokens", type=int, default=0, help="decode only, after a text prompt this long")
    parser.add_argument("--cpu-int8", action="store_true", help="the engine with dynamic int8 Linear layers")
    parser.add_argument("--compile", action="store_true", help="the engine's decode step under torch.compile")
    args = parser.parse_args()
    size = args.size or ("1B" if args.device.startswith("cuda") else "small")

    start = time.perf_counter()
    path = checkpoint(size)
    engine = new_engine(path, args)
    reference = new_engine(path, args, float32=True) if args.cpu_int8 else engine  # generate's weights
    message = (Message("user", text_prompt(args.text_tokens)) if args.text_tokens else
               Message("user", QUESTION, images=[twelve_tile_image(Path(tempfile.mkdtemp()))]))
    emit(stage="load", size=size, device=args.device, seconds=round(time.perf_counter() - start, 2),
         cuda_graphs=bool(engine.decoder.graphs), threads=torch.get_num_threads())
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    start = time.perf_counter()
    last = engine_run(engine, message, 8)["gen"]  # warm-up, both sides
    emit(stage="warm_up", seconds=round(time.perf_counter() - start, 1))
    generate_baseline(reference, last, 2)
    error = int8_error(engine, reference, last.prompt) if args.cpu_int8 else {}
    engine_tps, generate_tps, ttft = [], [], []
    for _ in range(args.repeats):  # alternating, so that a slower stretch of the machine hits both alike
        run = engine_run(engine, message, args.new_tokens)
        last, t = run["gen"], run["gen"].timings
        emit(stage="engine", **stages(last), tokens=len(last.token_ids),
             tokens_per_s=round(t["decode_tokens_per_s"], 1))
        baseline, baseline_ids = generate_baseline(reference, last, args.new_tokens)
        emit(stage="generate", tokens_per_s=round(baseline, 1))
        engine_tps.append(t["decode_tokens_per_s"])
        generate_tps.append(baseline)
        ttft.append(t["ttft_s"])
    bare = bare_loop(engine, last, args.new_tokens)
    emit(stage="bare_loop", tokens_per_s=round(bare, 1))
    cpu = {}
    if args.device == "cpu":
        cpu = prefill_in_steps_against_one(engine, last.prompt, args.repeats)
        if not args.text_tokens:  # the first word at the CPU's own tile default, against 12 tiles
            default = engine_run(engine, message, 2, max_tiles=engine.cpu_default_tiles())["gen"]
            cpu["cpu_default"] = {"max_tiles": engine.cpu_default_tiles(), **stages(default)}
    emit(**summarize(args, size, engine, last, baseline_ids, engine_tps, generate_tps, ttft, bare), **error, **cpu)


def stages(gen) -> dict:
    """A turn's wait before its first word, stage by stage."""
    t = gen.timings
    return {"tiles": sum(gen.num_tiles), "prompt_tokens": len(gen.prompt_token_ids), "media_s": round(t["media_s"], 2),
            "vision_s": round(t["vision_s"], 2), "prefill_s": round(t["prefill_s"], 2), "ttft_s": round(t["ttft_s"], 2)}


def new_engine(path: Path, args, float32: bool = False) -> Engine:
    # a ~2k-token question is longer than one chat message may be (8,000 characters)
    engine = Engine(str(path), device=args.device, cpu_int8=args.cpu_int8 and not float32, compile_decode=args.compile,
                    limits=replace(LIMITS, max_prompt_chars=max(LIMITS.max_prompt_chars, 10 * args.text_tokens)))
    engine.load()
    engine.stop_ids = set()  # random weights may pick <|im_end|> at any step: always decode the full length
    return engine


@torch.inference_mode()
def int8_error(engine: Engine, reference: Engine, prompt) -> dict:
    """The first step's logits of the int8 engine against float32's, on the same prompt."""
    def first_logits(e: Engine) -> torch.Tensor:
        e.clear_caches()
        return e.runner.prefill(prompt, e.runner.embed_prompt(prompt))[0]

    ours, exact = first_logits(engine), first_logits(reference)
    return {"int8_logit_error": round(float((ours - exact).abs().max() / exact.abs().max()), 4),
            "int8_top1_agrees": bool(ours.argmax() == exact.argmax())}


def decode_weight_bytes(lm) -> int:
    """Bytes of weights a decode step reads: the language model's parameters and quantised layers'
    weight buffers, less the embedding, of which a step reads one row (unless it is also the tied
    lm_head, which is read whole: the 1B and 2B tie them, the 9B does not)."""
    embed = lm.model.embed_tokens.weight
    unread = None if lm.lm_head.weight is embed else embed.data_ptr()
    buffers = [t for name, t in lm.named_buffers() if not name.endswith("inv_freq")]  # rotary: not weights
    tensors = {t.data_ptr(): t for t in (*lm.parameters(), *buffers)}
    return sum(t.numel() * t.element_size() for ptr, t in tensors.items() if ptr != unread)


def summarize(args, size, engine, last, baseline_ids, engine_tps, generate_tps, ttft, bare) -> dict:
    tps = statistics.median(engine_tps)
    summary = {"summary": True, "size": size, "device": args.device, "text_tokens": args.text_tokens or None,
               "prompt_tokens": len(last.prompt_token_ids), "new_tokens": args.new_tokens,
               "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
               "tokens_per_s": round(tps, 1), "engine_tokens_per_s": spread(engine_tps, 1),
               "generate_tokens_per_s": spread(generate_tps, 1), "bare_loop_tokens_per_s": round(bare, 1),
               "ttft_s": round(statistics.median(ttft), 4), "first_word": stages(last),
               "ratio_to_generate": round(tps / statistics.median(generate_tps), 2),
               "ratio_per_run": spread([e / g for e, g in zip(engine_tps, generate_tps)]),
               "stream_overhead": round(bare / tps - 1, 3),
               "greedy_match_tokens": next((i for i, (a, b) in enumerate(zip(last.token_ids, baseline_ids))
                                            if a != b), len(last.token_ids)),
               "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    lm = engine.model.language_model
    if args.device.startswith("cuda"):
        weight_bytes = decode_weight_bytes(lm)
        bandwidth = next((b for name, b in BANDWIDTH.items() if name in torch.cuda.get_device_name()), None)
        if bandwidth:
            summary["roofline_pct"] = round(100 * tps * weight_bytes / bandwidth, 1)
        summary["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return summary


if __name__ == "__main__":
    main()
