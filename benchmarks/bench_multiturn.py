"""Time to first token of a text follow-up after a ~3.4k-token image turn: with the engine's image
feature and KV-cache reuse, against a full re-prefill of the same conversation (what the upstream
demo does every turn). Runs on CPU or GPU; the last JSON line holds `ttft_ratio`.

    python benchmarks/bench_multiturn.py --size small
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import QUESTION, checkpoint, default_device, emit, twelve_tile_image  # noqa: E402
from eagle_demo.config import GenerationSettings  # noqa: E402
from eagle_demo.engine import Engine, Message  # noqa: E402

SETTINGS = GenerationSettings(temperature=0.0, max_new_tokens=32, repetition_penalty=1.0)
SYSTEM = "You are a helpful assistant."


def first_token(engine: Engine, messages: list[Message]):
    gen = engine.chat(messages, SYSTEM, SETTINGS)
    for _ in gen:
        pass
    return gen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default=None, help="tiny, small, 1B, 2B or 9B (default: 1B on GPU, small on CPU)")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = args.size or ("1B" if args.device.startswith("cuda") else "small")

    engine = Engine(str(checkpoint(size)), device=args.device)
    engine.load()
    image = twelve_tile_image(Path(tempfile.mkdtemp()))
    turn1 = [Message("user", QUESTION, images=[image])]
    answer = first_token(engine, turn1)  # also warms up every code path
    follow_up = turn1 + [Message("assistant", answer.text), Message("user", "What colour is the sun?")]

    reused, full, seen_calls = [], [], []
    for _ in range(args.repeats):
        engine.clear_caches()
        first_token(engine, turn1)  # the image turn, as the user saw it
        calls = engine.vision_calls
        warm = first_token(engine, follow_up)
        seen_calls.append(engine.vision_calls - calls)
        emit(stage="follow_up", ttft_s=round(warm.timings["ttft_s"], 4), reused_tokens=warm.timings["reused_tokens"],
             prefill_tokens=warm.timings["prefill_tokens"], vision_calls=seen_calls[-1])
        reused.append(warm.timings["ttft_s"])
        engine.clear_caches()
        cold = first_token(engine, follow_up)
        emit(stage="full_reprefill", ttft_s=round(cold.timings["ttft_s"], 4),
             prefill_tokens=cold.timings["prefill_tokens"])
        full.append(cold.timings["ttft_s"])
        assert warm.token_ids == cold.token_ids, "KV reuse changed the greedy answer"

    emit(summary=True, size=size, device=args.device, prompt_tokens=len(cold.prompt_token_ids),
         ttft_follow_up_s=round(statistics.median(reused), 4), ttft_full_s=round(statistics.median(full), 4),
         vision_calls_for_seen_images=max(seen_calls),
         ttft_ratio=round(statistics.median(reused) / statistics.median(full), 3))


if __name__ == "__main__":
    main()
