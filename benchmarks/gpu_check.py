"""Everything that needs an NVIDIA GPU, in one command: run it first on any machine that has one.

    python benchmarks/gpu_check.py            # 1B, 2B and 9B; about 8 minutes on an H100 or H200

Random weights of the true sizes (`python -m eagle_demo tiny --size ...`). For each size: load in
bf16; the captured decode equals eager decode token for token (256 greedy tokens after a 12-tile
image); tokens/s of the engine, the bare loop and transformers `generate`; image-turn TTFT with its
stages; peak memory; the 4-bit export (`python -m eagle_demo quantize`) on the int4 kernel against
bf16: its tensors' bytes, tokens/s, logit error, captured against eager decode, and `--quantize
int4|int8`. For the first size (the 1B) also: `--load-8bit` loads and answers; a second device index
(when there is one); 20 requests forced out of memory, each answered with the message and followed
by a normal answer; `eval run` over 32 OCR-style items against the engine alone. Prints JSON lines,
the last one a summary; a failed check is printed and the script goes on; the exit status is 1 if
anything failed. `--device cpu --sizes tiny` runs the same script on a CPU (the GPU-only checks are
then reported as skipped): the test suite does that.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_decode import bare_loop, engine_run, generate_baseline  # noqa: E402
from benchmarks.bench_eval import eval_check  # noqa: E402
from benchmarks.bench_quant import int4_check  # noqa: E402
from benchmarks.common import QUESTION, checkpoint, emit, twelve_tile_image  # noqa: E402
from eagle_demo.config import GenerationSettings, Limits  # noqa: E402
from eagle_demo.engine import Engine, GenerationError, Message  # noqa: E402

SIZES = ("1B", "2B", "9B")
OOM_REQUESTS = 20


class Skipped(Exception):
    """A check this machine cannot run (e.g. no second GPU)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=",".join(SIZES), help="comma list of tiny, small, 1B, 2B, 9B")
    p.add_argument("--device", default="cuda")
    p.add_argument("--new-tokens", type=int, default=256)
    args = p.parse_args(argv)
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    return args


class Checks:
    """Runs named checks, printing one JSON line each; a failure is recorded and the run goes on."""

    def __init__(self):
        self.results: list[dict] = []

    def run(self, name: str, fn, *args) -> dict | None:
        start = time.perf_counter()
        try:
            fields = fn(*args) or {}
            result = {"check": name, "ok": True, **fields}
        except Skipped as e:
            result = {"check": name, "ok": None, "skipped": str(e)}
            fields = None
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            result = {"check": name, "ok": False, "error": f"{type(e).__name__}: {e}"}
            fields = None
        result["seconds"] = round(time.perf_counter() - start, 2)
        self.results.append(result)
        emit(**result)
        return fields

    def summary(self) -> dict:
        failed = [r["check"] for r in self.results if r["ok"] is False]
        return {"summary": True, "checks": len(self.results), "passed": sum(r["ok"] is True for r in self.results),
                "skipped": [r["check"] for r in self.results if r["ok"] is None], "failed": failed,
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def greedy_turn(engine: Engine, image: str, new_tokens: int) -> dict:
    run = engine_run(engine, Message("user", QUESTION, images=[image]), new_tokens)
    gen = run["gen"]
    return {"gen": gen, "fields": {
        "tiles": gen.num_tiles, "prompt_tokens": len(gen.prompt_token_ids), "tokens": len(gen.token_ids),
        "tokens_per_s": round(gen.timings["decode_tokens_per_s"], 1), "ttft_s": round(gen.timings["ttft_s"], 4),
        "media_s": round(gen.timings["media_s"], 4), "vision_s": round(gen.timings["vision_s"], 4),
        "prefill_s": round(gen.timings["prefill_s"], 4)}}


def new_engine(path: Path, device: str, **options) -> Engine:
    engine = Engine(str(path), device=device, **options)
    engine.load()
    engine.stop_ids = set()  # random weights may pick <|im_end|> early: decode the full length
    return engine


def size_check(size: str, path: Path, image: str, args) -> dict:
    """bf16 load; captured decode == eager decode; speeds, TTFT stages, peak memory."""
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(args.device)
    start = time.perf_counter()
    engine = new_engine(path, args.device, dtype="bfloat16" if cuda else None)
    fields = {"size": size, "load_s": round(time.perf_counter() - start, 2), "cuda_graphs": bool(engine.decoder.graphs)}
    warm = greedy_turn(engine, image, 8)
    generate_baseline(engine, warm["gen"], 2)  # warm-up, both sides
    captured = greedy_turn(engine, image, args.new_tokens)
    fields.update(captured["fields"])
    fields["bare_loop_tokens_per_s"] = round(bare_loop(engine, captured["gen"], args.new_tokens), 1)
    generate_tps, _ = generate_baseline(engine, captured["gen"], args.new_tokens)
    fields["generate_tokens_per_s"] = round(generate_tps, 1)
    if cuda:
        fields["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(args.device) / 2**30, 2)
    ids = captured["gen"].token_ids
    engine.unload()
    if cuda and not fields["cuda_graphs"]:
        raise AssertionError(f"no CUDA graph was captured: {fields}")
    eager = new_engine(path, args.device, dtype="bfloat16" if cuda else None, use_cuda_graphs=False)
    eager_ids = greedy_turn(eager, image, args.new_tokens)["gen"].token_ids
    eager.unload()
    fields["equal_to_eager_tokens"] = next((i for i, (a, b) in enumerate(zip(ids, eager_ids)) if a != b), len(ids))
    if ids != eager_ids:
        raise AssertionError(f"captured and eager decode differ from token {fields['equal_to_eager_tokens']}: {fields}")
    return fields


def answers(engine: Engine, text: str = "Hello", max_new_tokens: int = 8) -> str:
    gen = engine.chat([Message("user", text)], "", GenerationSettings(temperature=0.0, max_new_tokens=max_new_tokens))
    list(gen)
    return gen.text


def eight_bit_check(path: Path, args) -> dict:
    if not args.device.startswith("cuda"):
        raise Skipped("8-bit loading needs CUDA")
    engine = new_engine(path, args.device, load_8bit=True)
    fields = {"answer_tokens": len(answers(engine)), "cuda_graphs": bool(engine.decoder.graphs)}
    engine.unload()
    return fields


def second_device_check(path: Path, args) -> dict:
    if not args.device.startswith("cuda") or torch.cuda.device_count() < 2:
        raise Skipped("one GPU only")
    engine = new_engine(path, "cuda:1")
    fields = {"answer_tokens": len(answers(engine)), "cuda_graphs": bool(engine.decoder.graphs),
              "memory_on_cuda0_mib": round(torch.cuda.memory_allocated(0) / 2**20, 1)}
    engine.unload()
    return fields


def out_of_memory_check(path: Path, image: str, args) -> dict:
    """Cap the process's GPU memory just above the loaded model, then ask about 8 different images
    of 12 tiles (104 tiles through the vision tower at once), 20 times, each followed by a plain answer."""
    if not args.device.startswith("cuda"):
        raise Skipped("out-of-memory needs CUDA")
    images = []
    for i in range(8):  # distinct files: the engine encodes an image it has seen once only
        img = Image.open(image).convert("RGB")
        img.putpixel((i, 0), (i, 255 - i, 0))
        images.append(str(Path(image).with_name(f"oom-{i}.png")))
        img.save(images[-1])
    engine = new_engine(path, args.device, limits=Limits(context_tokens=32768))
    total = torch.cuda.get_device_properties(args.device).total_memory
    cap = (torch.cuda.memory_allocated(args.device) + (256 << 20)) / total
    torch.cuda.set_per_process_memory_fraction(cap, args.device)
    messages, normal = [], 0
    try:
        for _ in range(OOM_REQUESTS):
            gen = engine.chat([Message("user", "Compare these.", images=images)], "",
                              GenerationSettings(max_tiles=12, max_new_tokens=4))
            try:
                list(gen)
            except GenerationError as e:
                messages.append(str(e))
            normal += bool(answers(engine))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, args.device)
        engine.unload()
    if len(messages) != OOM_REQUESTS or normal != OOM_REQUESTS:
        raise AssertionError(f"{len(messages)} out-of-memory messages and {normal} normal answers "
                             f"of {OOM_REQUESTS}")
    return {"requests": OOM_REQUESTS, "message": messages[0], "normal_answers": normal}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    checks = Checks()
    image = twelve_tile_image(Path(tempfile.mkdtemp()))
    for size in args.sizes:
        written = checks.run(f"write {size}", lambda s=size: {"path": str(checkpoint(s))})
        if written is None:
            continue
        path = Path(written["path"])
        checks.run(f"{size} bf16 decode", size_check, size, path, image, args)
        checks.run(f"{size} int4", int4_check, path, image, args)
        if size == args.sizes[0]:  # the 1B by default
            checks.run(f"{size} 8-bit", eight_bit_check, path, args)
            checks.run(f"{size} second device", second_device_check, path, args)
            checks.run(f"{size} out of memory x{OOM_REQUESTS}", out_of_memory_check, path, image, args)
            checks.run(f"{size} eval run", eval_check, path, args)
        shutil.rmtree(path, ignore_errors=True)  # the 9B's random weights take tens of GB of disk
    summary = checks.summary()
    emit(**summary)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
