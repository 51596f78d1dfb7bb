"""Everything that needs an NVIDIA GPU, in one command: run it first on any machine that has one.

    python benchmarks/gpu_check.py            # 1B, 2B and 9B; within 8 minutes on an H100 or H200

Random weights of the true sizes (`python -m eagle_demo tiny --size ...`), 256 greedy tokens after a
12-tile image unless said otherwise. For each size:
- decode: eager (as on ZeroGPU), captured (CUDA graphs) and compiled (`compile_decode`) tokens/s in
  one run, each variant's greedy tokens equal to eager's; the bare loop and transformers `generate`;
  image-turn TTFT with its stages; the engine's peak memory (the transformers twin's apart); the
  eager pace against what the ZeroGPU duration assumes (`eagle_demo.models.GpuTime`);
  a follow-up turn with a new image: its peak memory above the loaded model;
- the 4-bit export on the int4 kernel against bf16, and `--quantize int4|int8`.
For the first size (the 1B) also: cuDNN attention against flash/memory-efficient (a cold plan's
TTFT, a warm one's, a follow-up's continuation prefill, tokens against flash); sampling (seeded,
repeatable); 8k and 16k spans (decode across the bucket boundary, captured equal to eager, a 16k
follow-up's peak memory); a video; `--load-8bit` (int8 weights, bf16 activations, captured) with
and without PyTorch's int8 kernel; each optional package (flash-attn, decord), or a skip saying it
is not installed; a second device index (when there is one); 20 requests forced out of memory, each
answered with the message and followed by a normal answer; `eval run` over 32 OCR-style items.

Prints JSON lines, the last one a summary; a failed check is printed and the script goes on; the
exit status is 1 if anything failed. `--device cpu --sizes tiny` runs the same script on a CPU (the
GPU-only checks are then reported as skipped, with their reasons, and the spans are shorter): the
test suite does that.
"""

from __future__ import annotations

import argparse
import inspect
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_decode import bare_loop, engine_run, generate_baseline, text_prompt  # noqa: E402
from benchmarks.bench_eval import eval_check  # noqa: E402
from benchmarks.bench_quant import int4_check  # noqa: E402
from benchmarks.common import QUESTION, checkpoint, emit, twelve_tile_image  # noqa: E402
from eagle_demo.config import LIMITS, GenerationSettings, Limits  # noqa: E402
from eagle_demo.decoding import Decoder  # noqa: E402
from eagle_demo.engine import Engine, GenerationError, Message  # noqa: E402
from eagle_demo.models import EAGER_BYTES_PER_S, EAGER_STEP_S  # noqa: E402
from tests.media_factory import make_video  # noqa: E402

SIZES = ("1B", "2B", "9B")
OOM_REQUESTS = 20
OPTIONAL_PACKAGES = {"flash-attn": "flash_attn", "decord": "decord"}  # pip name -> module


class Skipped(Exception):
    """A check this machine or revision cannot run (e.g. no second GPU); str(e) says why."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=",".join(SIZES), help="comma list of tiny, small, 1B, 2B, 9B")
    p.add_argument("--device", default="cuda")
    p.add_argument("--new-tokens", type=int, default=256)
    args = p.parse_args(argv)
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    args.cuda = args.device.startswith("cuda")
    args.dtype = "bfloat16" if args.cuda else None
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


# ---------------------------------------------------------------------------------------- helpers
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


def ask(engine: Engine, messages: list[Message], new_tokens: int, **settings):
    """One turn (the caches kept): its Generation, run to the end."""
    values = dict(temperature=0.0, max_new_tokens=new_tokens, repetition_penalty=1.0, max_tiles=12) | settings
    gen = engine.chat(messages, "", GenerationSettings(**values))
    list(gen)
    return gen


def first_difference(a: list[int], b: list[int]) -> int:
    """How many leading tokens two answers share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def use_decoder(engine: Engine, captured: bool) -> None:
    """Decode with a new captured (CUDA graphs; on a CPU, eager) or eager decoder over the engine's KV cache."""
    cache = engine.runner.decoder.cache
    engine.runner.decoder = None  # its graphs go before the new ones are captured
    engine.runner.decoder = Decoder(engine.model.language_model, cache,
                                    use_cuda_graphs=captured and engine.device.startswith("cuda"))
    engine.clear_caches()


def peak_above(device: str, run) -> tuple[object, float | None]:
    """run()'s result and its peak device memory above what was allocated before it, GiB (CUDA)."""
    if not device.startswith("cuda"):
        return run(), None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    result = run()
    return result, round((torch.cuda.max_memory_allocated(device) - before) / 2**30, 3)


def distinct_image(image: str, i: int) -> str:
    """A copy of `image` with one pixel changed: a new image to the engine's caches."""
    img = Image.open(image).convert("RGB")
    img.putpixel((i, 0), (i % 256, 255 - i % 256, 0))
    path = str(Path(image).with_name(f"variant-{i}.png"))
    img.save(path)
    return path


# ---------------------------------------------------------------------------------------- every size
def decode_check(size: str, path: Path, image: str, args) -> dict:
    """Eager, captured and compiled decode in one run: tokens/s each, greedy tokens equal to eager's."""
    if args.cuda:
        torch.cuda.reset_peak_memory_stats(args.device)
    start = time.perf_counter()
    engine = new_engine(path, args.device, dtype=args.dtype)
    fields = {"size": size, "load_s": round(time.perf_counter() - start, 2), "cuda_graphs": bool(engine.decoder.graphs)}
    if args.cuda and not fields["cuda_graphs"]:
        raise AssertionError(f"no CUDA graph was captured: {fields}")
    greedy_turn(engine, image, 8)  # warm-up
    captured = greedy_turn(engine, image, args.new_tokens)
    fields.update(captured["fields"])
    fields["bare_loop_tokens_per_s"] = round(bare_loop(engine, captured["gen"], args.new_tokens), 1)
    if args.cuda:
        fields["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(args.device) / 2**30, 2)
    fields.update(follow_up(engine, image, args))
    use_decoder(engine, captured=False)
    greedy_turn(engine, image, 8)  # warm-up
    eager = greedy_turn(engine, image, args.new_tokens)
    fields["eager_tokens_per_s"] = eager["fields"]["tokens_per_s"]
    (generate_tps, _), twin_peak = peak_above(args.device, lambda: generate_baseline(engine, eager["gen"],
                                                                                      args.new_tokens))
    fields["generate_tokens_per_s"] = round(generate_tps, 1)
    if twin_peak is not None:
        fields["generate_peak_above_engine_gib"] = twin_peak  # the transformers twin, apart from the engine's
    fields["eager_s_per_token"] = round(1 / eager["fields"]["tokens_per_s"], 5)
    fields["zerogpu_assumed_s_per_token"] = round(EAGER_STEP_S + engine.weight_bytes() / EAGER_BYTES_PER_S, 5)
    engine.unload()
    ids, eager_ids = captured["gen"].token_ids, eager["gen"].token_ids
    fields["equal_to_eager_tokens"] = first_difference(ids, eager_ids)
    if ids != eager_ids:
        raise AssertionError(f"captured and eager decode differ from token {fields['equal_to_eager_tokens']}: {fields}")
    args.eager_ids[size] = eager_ids
    if args.cuda and fields["eager_s_per_token"] > fields["zerogpu_assumed_s_per_token"]:
        raise AssertionError(f"eager decode is slower than the ZeroGPU duration assumes: {fields}")
    return fields


def compiled_check(size: str, path: Path, image: str, args) -> dict:
    if "compile_decode" not in inspect.signature(Engine).parameters:
        raise Skipped("this revision has no compiled decode (Engine has no compile_decode option)")
    if not args.cuda:
        raise Skipped("compiled decode is measured on CUDA (on a CPU the compile would take most of the run)")
    if size not in args.eager_ids:
        raise Skipped("no eager tokens to compare with (the decode check failed)")
    engine = new_engine(path, args.device, dtype=args.dtype, compile_decode=True)
    start = time.perf_counter()
    greedy_turn(engine, image, 8)  # warm-up, with the compile
    fields = {"warm_up_s": round(time.perf_counter() - start, 1)}
    turn = greedy_turn(engine, image, args.new_tokens)
    fields.update(tokens_per_s=turn["fields"]["tokens_per_s"], ttft_s=turn["fields"]["ttft_s"])
    engine.unload()
    fields["equal_to_eager_tokens"] = first_difference(turn["gen"].token_ids, args.eager_ids[size])
    if turn["gen"].token_ids != args.eager_ids[size]:
        raise AssertionError(f"compiled and eager decode differ from token {fields['equal_to_eager_tokens']}")
    return fields


def follow_up(engine: Engine, image: str, args) -> dict:
    """A second turn that adds a new 12-tile image: its prefill's peak above the loaded model. (Once a
    second image joins, the prompt labels each image, so the turn reuses little of the first.)"""
    first = Message("user", QUESTION, images=[image])
    answer = ask(engine, [first], 16)
    new_image = distinct_image(image, 1)
    follow = [first, Message("assistant", answer.text), Message("user", "And this one?", images=[new_image])]
    gen, peak = peak_above(args.device, lambda: ask(engine, follow, 16))
    timings = gen.timings
    fields = {"follow_up_prompt_tokens": len(gen.prompt_token_ids), "follow_up_reused_tokens": timings["reused_tokens"],
              "follow_up_ttft_s": round(timings["ttft_s"], 4)}
    if peak is not None:
        fields["follow_up_peak_above_loaded_gib"] = peak
    return fields


# ---------------------------------------------------------------------------------------- first size
def cudnn_check(path: Path, image: str, args) -> dict:
    """cuDNN attention (the engine pins it off) against flash/memory-efficient, on the same engine:
    TTFT at a prompt length not run before (a cold cuDNN plan) and again (warm), a follow-up's
    continuation prefill, and how many greedy tokens agree with flash's."""
    if not args.cuda:
        raise Skipped("cuDNN attention needs CUDA")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
                "cudnn": [SDPBackend.CUDNN_ATTENTION]}
    engine = new_engine(path, args.device, dtype=args.dtype)
    question = [Message("user", QUESTION, images=[image])]
    fields, answers = {}, {}
    for tiles, (name, chosen) in zip((10, 11), backends.items()):  # a new prompt length for each
        try:
            with sdpa_kernel(chosen):
                for when in ("cold", "warm"):
                    engine.clear_caches()
                    answers[name] = ask(engine, question, 32, max_tiles=tiles)
                    fields[f"{name}_{when}_ttft_s"] = round(answers[name].timings["ttft_s"], 4)
                follow = [*question, Message("assistant", answers[name].text), Message("user", "And the colours?")]
                fields[f"{name}_follow_up_ttft_s"] = round(ask(engine, follow, 4, max_tiles=tiles).timings["ttft_s"], 4)
        except Exception as e:  # what the pin avoids: cuDNN raising on a shape instead of falling back
            if name == "flash":
                raise
            fields["cudnn_error"] = f"{type(e).__name__}: {e}"[:300]
    if "cudnn" in answers:
        with sdpa_kernel(backends["flash"]):
            engine.clear_caches()
            flash = ask(engine, question, 32, max_tiles=11)
        fields["cudnn_equal_to_flash_tokens"] = first_difference(answers["cudnn"].token_ids, flash.token_ids)
    engine.unload()
    return fields


def sampling_check(path: Path, image: str, args) -> dict:
    """Sampling with every rule on, twice with one seed (the same tokens), once with another."""
    engine = new_engine(path, args.device, dtype=args.dtype)
    settings = dict(temperature=0.8, top_p=0.9, top_k=50, repetition_penalty=1.1)
    runs = []
    for seed in (7, 7, 8):
        engine.clear_caches()
        runs.append(ask(engine, [Message("user", QUESTION, images=[image])], 64, seed=seed, **settings))
    engine.unload()
    fields = {"tokens": len(runs[0].token_ids), "tokens_per_s": round(runs[0].timings["decode_tokens_per_s"], 1),
              "other_seed_equal_tokens": first_difference(runs[0].token_ids, runs[2].token_ids)}
    same_seed = first_difference(runs[0].token_ids, runs[1].token_ids)
    if runs[0].token_ids != runs[1].token_ids:
        raise AssertionError(f"one seed sampled two answers (equal for {same_seed} tokens)")
    return fields


def span_check(path: Path, args) -> dict:
    """A text prompt ending just short of each span's end: the decode crosses into the next span
    (captured equal to eager), then a follow-up's peak memory at that context."""
    spans = (8192, 16384) if args.cuda else (1024,)  # a CPU shows the path, not the size
    limits = replace(LIMITS, context_tokens=2 * spans[-1], max_prompt_chars=12 * spans[-1])
    engine = new_engine(path, args.device, dtype=args.dtype, limits=limits)
    fields = {}
    for span in spans:
        question = Message("user", text_prompt(span - 80))
        answers = []
        for captured in (True, False):
            use_decoder(engine, captured)
            answers.append(ask(engine, [question], 128))
        gen = answers[0]
        follow = [question, Message("assistant", gen.text), Message("user", "And then?")]
        _, peak = peak_above(args.device, lambda messages=follow: ask(engine, messages, 4))
        fields[str(span)] = {"prompt_tokens": len(gen.prompt_token_ids), "tokens": len(gen.token_ids),
                             "prefill_s": round(gen.timings["prefill_s"], 3),
                             "tokens_per_s": round(gen.timings["decode_tokens_per_s"], 1),
                             "equal_to_eager_tokens": first_difference(gen.token_ids, answers[1].token_ids),
                             **({"follow_up_peak_above_loaded_gib": peak} if peak is not None else {})}
        if gen.token_ids != answers[1].token_ids:
            raise AssertionError(f"captured and eager differ across the {span} span: {fields}")
    engine.unload()
    return fields


def video_check(path: Path, args) -> dict:
    video = make_video(Path(tempfile.mkdtemp()) / "clip.mp4", frames=90, size=(640, 360), fps=30)
    engine = new_engine(path, args.device, dtype=args.dtype)
    gen = engine.chat([Message("user", "What happens in this video?", video=str(video))], "",
                      GenerationSettings(temperature=0.0, max_new_tokens=32, num_frames=8))
    list(gen)
    engine.unload()
    return {"frames": gen.num_frames, "prompt_tokens": len(gen.prompt_token_ids), "tokens": len(gen.token_ids),
            "media_s": round(gen.timings["media_s"], 3), "ttft_s": round(gen.timings["ttft_s"], 3)}


def eight_bit_check(path: Path, image: str, args) -> dict:
    """`--load-8bit`: int8 weights on bf16 activations, captured; tokens/s with PyTorch's int8 kernel
    for decode rows and with the dequantised weight throughout."""
    from eagle_demo.model.quantized import Int8Linear

    engine = new_engine(path, args.device, dtype=args.dtype, load_8bit=True)
    layers = [m for m in engine.model.modules() if isinstance(m, Int8Linear)]
    rows = layers[0].kernel_rows
    fields = {"layers": len(layers), "cuda_graphs": bool(engine.decoder.graphs),
              "kernel_rows": "all" if rows == sys.maxsize else rows}
    for label, kernel_rows in (("kernel", rows), ("dequantised", 0)):
        for layer in layers:
            layer.kernel_rows = kernel_rows
        use_decoder(engine, captured=True)  # a graph holds the path it was captured with
        turn = greedy_turn(engine, image, args.new_tokens)
        fields[f"{label}_tokens_per_s"] = turn["fields"]["tokens_per_s"]
        fields[f"{label}_prefill_s"] = turn["fields"]["prefill_s"]
    engine.unload()
    if args.cuda and not fields["cuda_graphs"]:
        raise AssertionError(f"the 8-bit decode was not captured: {fields}")
    return fields


def optional_package_check(package: str, path: Path, image: str, args) -> dict:
    module = OPTIONAL_PACKAGES[package]
    try:
        __import__(module)
    except ImportError:
        raise Skipped(f"{package} is not installed (pip install {package})") from None
    if module == "decord":  # the video check read its frames with it
        return {"version": getattr(sys.modules[module], "__version__", None)}
    if not args.cuda:
        raise Skipped("flash-attn runs on CUDA only")
    engine = new_engine(path, args.device, dtype=args.dtype, attn="flash_attention_2")
    turn = greedy_turn(engine, image, args.new_tokens)
    fields = {"decode_kernel": engine.decoder.attention[engine.decoder.spans[0]].kernel,
              "tokens_per_s": turn["fields"]["tokens_per_s"], "ttft_s": turn["fields"]["ttft_s"]}
    engine.unload()
    return fields


def second_device_check(path: Path, args) -> dict:
    if not args.cuda or torch.cuda.device_count() < 2:
        raise Skipped("one GPU only")
    engine = new_engine(path, "cuda:1")
    fields = {"answer_tokens": len(ask(engine, [Message("user", "Hello")], 8).token_ids),
              "cuda_graphs": bool(engine.decoder.graphs),
              "memory_on_cuda0_mib": round(torch.cuda.memory_allocated(0) / 2**20, 1)}
    engine.unload()
    return fields


def out_of_memory_check(path: Path, image: str, args) -> dict:
    """Cap the process's GPU memory just above the loaded model, then ask about 8 different images
    of 12 tiles (104 tiles through the vision tower at once), 20 times, each followed by a plain answer."""
    if not args.cuda:
        raise Skipped("out-of-memory needs CUDA")
    images = [distinct_image(image, 100 + i) for i in range(8)]  # the engine encodes an image it has seen once only
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
            normal += bool(ask(engine, [Message("user", "Hello")], 8).text)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, args.device)
        engine.unload()
    if len(messages) != OOM_REQUESTS or normal != OOM_REQUESTS:
        raise AssertionError(f"{len(messages)} out-of-memory messages and {normal} normal answers "
                             f"of {OOM_REQUESTS}")
    return {"requests": OOM_REQUESTS, "message": messages[0], "normal_answers": normal}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.eager_ids = {}
    checks = Checks()
    image = twelve_tile_image(Path(tempfile.mkdtemp()))
    for size in args.sizes:
        written = checks.run(f"write {size}", lambda s=size: {"path": str(checkpoint(s))})
        if written is None:
            continue
        path = Path(written["path"])
        checks.run(f"{size} bf16 decode", decode_check, size, path, image, args)
        checks.run(f"{size} compiled decode", compiled_check, size, path, image, args)
        checks.run(f"{size} int4", int4_check, path, image, args)
        if size == args.sizes[0]:  # the 1B by default
            checks.run(f"{size} cuDNN attention", cudnn_check, path, image, args)
            checks.run(f"{size} sampling", sampling_check, path, image, args)
            checks.run(f"{size} spans", span_check, path, args)
            checks.run(f"{size} video", video_check, path, args)
            checks.run(f"{size} 8-bit", eight_bit_check, path, image, args)
            for package in OPTIONAL_PACKAGES:
                checks.run(f"{size} {package}", optional_package_check, package, path, image, args)
            checks.run(f"{size} second device", second_device_check, path, args)
            checks.run(f"{size} out of memory x{OOM_REQUESTS}", out_of_memory_check, path, image, args)
            checks.run(f"{size} eval run", eval_check, path, args)
        shutil.rmtree(path, ignore_errors=True)  # the 9B's random weights take tens of GB of disk
    summary = checks.summary()
    emit(**summary)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
