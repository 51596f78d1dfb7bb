"""The OpenAI-compatible API (/v1) against the engine and against /chat, in one run on the `small`
random-weight checkpoint (the real tokenizer; cached in --cache-dir):

1. Streamed tokens/s. The engine alone, in this process, answering "Tell me a long story." (sampled:
   temperature 1, top_p 1, top_k 0, repetition penalty 1, a fixed seed, --max-new-tokens tokens), its
   own decode rate (tokens after the first / the time from the first to the end); and the same request
   streamed through /v1 of `python app.py --model <checkpoint>` (a process of its own, shut down at
   the end), measured by the `openai` client: completion tokens after the first (its usage) / the time
   from the first text chunk to the last. The two take turns, --repeats times each after a warm-up of
   each, so that both see the same load on the machine; the medians, and their ratio (/v1 / engine).
2. Latency under load, as bench_concurrency.py measures /chat: --clients clients ask the same app at
   once, --requests requests each back to back (an image and a question, 2 tiles, 32 sampled tokens,
   repetition penalty 1.1: the page's); p50 and p95 from submitting a request to its whole answer,
   for /chat (gradio_client) and then for /v1 (the openai client, the image as a data URL). /v1 allows
   one answer at a time per client address, so each /v1 client connects from its own loopback
   address (127.0.0.2, 127.0.0.3, ...).

Prints a JSON line per measurement, then a summary line.

    python benchmarks/bench_openai.py
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_concurrency import IMAGE, Question, run  # noqa: E402
from benchmarks.bench_vllm_cpu import cached_checkpoint  # noqa: E402
from benchmarks.common import QUESTION, emit  # noqa: E402
from eagle_demo.config import DEFAULT_SYSTEM_PROMPT, GenerationSettings  # noqa: E402
from eagle_demo.conversation import Message  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STORY = "Tell me a long story."


def story_settings(max_new_tokens: int, seed: int) -> dict:
    return dict(temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=seed, max_new_tokens=max_new_tokens)


def engine_rate(engine, args) -> dict:
    """The engine alone, in this process: its own decode rate for the story."""
    generation = engine.chat([Message("user", STORY)], DEFAULT_SYSTEM_PROMPT,
                             GenerationSettings(**story_settings(args.max_new_tokens, args.seed)))
    for _ in generation:
        pass
    return dict(tokens=len(generation.token_ids), tokens_per_s=round(generation.timings["decode_tokens_per_s"], 2))


def v1_rate(client, model: str, args) -> dict:
    """The same story streamed through /v1, timed by the client."""
    settings = story_settings(args.max_new_tokens, args.seed)
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": STORY}], stream=True,
        stream_options={"include_usage": True}, max_tokens=settings.pop("max_new_tokens"),
        temperature=settings.pop("temperature"), top_p=settings.pop("top_p"), seed=settings.pop("seed"),
        extra_body=settings)
    first = last = usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
        usage = chunk.usage or usage
    return dict(tokens=usage.completion_tokens, tokens_per_s=round((usage.completion_tokens - 1) / (last - first), 2))


def stream_rates(engine, client, model: str, args) -> tuple[list[dict], list[dict]]:
    """Engine and /v1 runs in turn, after one unmeasured run of each."""
    engine_rate(engine, args)
    v1_rate(client, model, args)
    engine_runs, v1_runs = [], []
    for _ in range(args.repeats):
        engine_runs.append(engine_rate(engine, args))
        v1_runs.append(v1_rate(client, model, args))
    return engine_runs, v1_runs


def v1_load(url: str, model: str, clients: int, requests: int, question: Question) -> dict:
    """As bench_concurrency.run, through /v1: `clients` openai clients at once, `requests` each."""
    from openai import OpenAI

    image = "data:image/jpeg;base64," + base64.b64encode(IMAGE.read_bytes()).decode()
    latencies, errors = [], []
    start = threading.Barrier(clients)

    def ask(seed: int) -> None:
        import httpx

        transport = httpx.HTTPTransport(local_address=f"127.0.0.{seed + 2}")  # a client address of its own
        client = OpenAI(base_url=url + "v1", api_key="unused", max_retries=0, timeout=600,
                        http_client=httpx.Client(transport=transport, timeout=600))
        start.wait()
        for i in range(requests):
            began = time.perf_counter()
            try:
                client.chat.completions.create(
                    model=model, max_tokens=question.max_new_tokens, temperature=1.0, top_p=1.0,
                    seed=seed * 1000 + i, messages=[{"role": "user", "content": [
                        {"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": question.text}]}],
                    extra_body={"top_k": 0, "repetition_penalty": 1.1,
                                "mm_processor_kwargs": {"max_dynamic_patch": question.max_tiles}})
                latencies.append(time.perf_counter() - began)
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=ask, args=(seed,)) for seed in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = dict(clients=clients, requests=clients * requests, served=len(latencies), errors=errors,
                  wall_s=round(time.perf_counter() - began, 3))
    if len(latencies) > 1:
        result.update(p50_s=round(statistics.median(latencies), 3),
                      p95_s=round(statistics.quantiles(latencies, n=20, method="inclusive")[18], 3),
                      max_s=round(max(latencies), 3))
    return result


def serve(checkpoint: Path) -> tuple[subprocess.Popen, str]:
    """`python app.py --model <checkpoint>` on a free loopback port, once it answers."""
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--model", str(checkpoint), "--port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    end = time.monotonic() + 300
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit("the app did not start")
        try:
            if httpx.get(url + "v1/models", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    sys.exit("the app did not answer in 300 s")


def median_rate(runs: list[dict]) -> float:
    return statistics.median(r["tokens_per_s"] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="the story's tokens")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2, help="per client, one after another")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "eagle2-bench-openai")
    args = parser.parse_args()
    checkpoint = cached_checkpoint(args.cache_dir, "small")

    from eagle_demo.engine import Engine

    engine = Engine(str(checkpoint))
    engine.load()
    proc, url = serve(checkpoint)
    try:
        from openai import OpenAI

        client = OpenAI(base_url=url + "v1", api_key="unused", max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        engine_runs, v1 = stream_rates(engine, client, model, args)
        engine.unload()
        emit(measure="engine", checkpoint="small", runs=engine_runs)
        emit(measure="v1_stream", runs=v1)
        question = Question(QUESTION, IMAGE, max_tiles=2, max_new_tokens=32)
        chat = run(url, args.clients, args.requests, question)
        emit(measure="chat_load", **chat)
        api = v1_load(url, model, args.clients, args.requests, question)
        emit(measure="v1_load", **api)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    emit(summary=True, checkpoint="small", max_new_tokens=args.max_new_tokens, repeats=args.repeats,
         engine_tokens_per_s=median_rate(engine_runs), v1_stream_tokens_per_s=median_rate(v1),
         ratio_v1_to_engine=round(median_rate(v1) / median_rate(engine_runs), 3),
         clients=args.clients, requests_per_client=args.requests,
         chat_p50_s=chat.get("p50_s"), chat_p95_s=chat.get("p95_s"), v1_p50_s=api.get("p50_s"),
         v1_p95_s=api.get("p95_s"))


if __name__ == "__main__":
    main()
