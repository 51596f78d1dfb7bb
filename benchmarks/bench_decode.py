"""Decode speed and time to first token of the engine, against plain transformers `generate`.

Standard request: one 12-tile image plus a ~20-token question, 256 new tokens, batch 1, greedy,
random weights of the chosen size (weights' values do not change the cost). Prints JSON lines;
the last one holds the summary. Made for a GPU (`--size 1B|2B|9B`); on a CPU use `--size small`.

    python benchmarks/bench_decode.py --size 1B
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import QUESTION, checkpoint, default_device, emit, transformers_twin, twelve_tile_image  # noqa: E402
from eagle_demo.config import GenerationSettings  # noqa: E402
from eagle_demo.engine import Engine, Message  # noqa: E402

# Memory bandwidth used for the roofline, bytes/s, by GPU name (vendor figures).
BANDWIDTH = {"H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H200": 4.8e12, "A100-SXM4-80GB": 2.04e12}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def engine_run(engine: Engine, image: str, new_tokens: int) -> dict:
    settings = GenerationSettings(temperature=0.0, max_new_tokens=new_tokens, repetition_penalty=1.0)
    engine.clear_caches()  # the image turn is measured cold: tiling, vision tower, full prefill
    gen = engine.chat([Message("user", QUESTION, images=[image])], "You are a helpful assistant.", settings)
    start = time.perf_counter()
    for _ in gen:
        pass
    sync(engine.device)
    return {"gen": gen, "wall_s": time.perf_counter() - start + gen.timings["media_s"]}


@torch.inference_mode()
def generate_baseline(engine: Engine, gen, new_tokens: int) -> tuple[float, list[int]]:
    """transformers' Qwen2ForCausalLM.generate on the same weights and prompt embeddings."""
    from transformers import GenerationConfig

    hf = transformers_twin(engine.model.language_model)
    embeds = engine._embed_prompt(gen.prompt)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)

    def timed(n: int) -> tuple[float, list[int]]:
        config = GenerationConfig(max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)
        sync(engine.device)
        start = time.perf_counter()
        out = hf.generate(inputs_embeds=embeds, attention_mask=mask, generation_config=config)
        sync(engine.device)
        return time.perf_counter() - start, out[0].tolist()

    timed(2)  # warm-up
    first, _ = timed(1)
    total, ids = timed(new_tokens)
    return (new_tokens - 1) / (total - first), ids


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default=None, help="tiny, small, 1B, 2B or 9B (default: 1B on GPU, small on CPU)")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = args.size or ("1B" if args.device.startswith("cuda") else "small")

    start = time.perf_counter()
    path = checkpoint(size)
    engine = Engine(str(path), device=args.device)
    engine.load()
    engine.stop_ids = set()  # random weights may pick <|im_end|> at any step: always decode the full length
    image = twelve_tile_image(Path(tempfile.mkdtemp()))
    emit(stage="load", size=size, device=args.device, seconds=round(time.perf_counter() - start, 2),
         cuda_graphs=bool(engine.decoder.graphs))
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    engine_run(engine, image, 8)  # warm-up
    runs = [engine_run(engine, image, args.new_tokens) for _ in range(args.repeats)]
    for r in runs:
        t = r["gen"].timings
        emit(stage="engine", tiles=r["gen"].num_tiles, prompt_tokens=len(r["gen"].prompt_token_ids),
             tokens=len(r["gen"].token_ids), media_s=round(t["media_s"], 4), vision_s=round(t["vision_s"], 4),
             prefill_s=round(t["prefill_s"], 4), ttft_s=round(t["ttft_s"], 4),
             tokens_per_s=round(t["decode_tokens_per_s"], 1))
    last = runs[-1]["gen"]
    tps = statistics.median(r["gen"].timings["decode_tokens_per_s"] for r in runs)
    ttft = statistics.median(r["gen"].timings["ttft_s"] for r in runs)
    bare = bare_loop(engine, last, args.new_tokens)
    emit(stage="bare_loop", tokens_per_s=round(bare, 1))
    baseline_tps, baseline_ids = generate_baseline(engine, last, args.new_tokens)
    emit(stage="generate", tokens_per_s=round(baseline_tps, 1))

    summary = {"summary": True, "size": size, "device": args.device,
               "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
               "tokens_per_s": round(tps, 1), "ttft_s": round(ttft, 4),
               "ratio_to_generate": round(tps / baseline_tps, 2),
               "stream_overhead": round(bare / tps - 1, 3),
               "greedy_match_tokens": next((i for i, (a, b) in enumerate(zip(last.token_ids, baseline_ids))
                                            if a != b), len(last.token_ids))}
    lm = engine.model.language_model
    if args.device.startswith("cuda"):
        weight_bytes = sum(p.numel() * p.element_size() for p in lm.parameters())
        bandwidth = next((b for name, b in BANDWIDTH.items() if name in torch.cuda.get_device_name()), None)
        if bandwidth:
            summary["roofline_pct"] = round(100 * tps * weight_bytes / bandwidth, 1)
        summary["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    emit(**summary)


if __name__ == "__main__":
    main()
