"""Latency under load: --clients gradio_client clients ask the app at once over loopback, each
sending --requests requests (an image and a question) back to back. Prints one JSON line with
the p50 and p95 latency in seconds, from submitting a request to its whole answer.

With --storm N, instead: one client submits N long answers (4,096 new tokens) and cancels each at
once with `job.cancel()`; then another client asks a 4-token question. Prints that question's wait
after the storm, the same question's wait on the quiet app before it (the baseline, same run) and
their ratio, and the server's CPU use in the 2 s after (when it serves here).

    python benchmarks/bench_concurrency.py                                 # serves a tiny checkpoint itself
    python benchmarks/bench_concurrency.py --url http://127.0.0.1:7860/    # asks an app already running
    python benchmarks/bench_concurrency.py --storm 50
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import QUESTION, emit  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "assets" / "scene.jpg"


def ask(url: str, requests: int, seed: int, max_new_tokens: int, start: threading.Barrier,
        latencies: list[float], errors: list[str]) -> None:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, analytics_enabled=False)
    start.wait()  # every client connected: they all ask at once
    for i in range(requests):
        began = time.perf_counter()
        try:  # sampled with a seed: random weights then write visible tokens, the same on every run
            client.predict(QUESTION, [handle_file(str(IMAGE))], temperature=1.0, top_p=1.0, top_k=0,
                           seed=seed * 1000 + i, max_tiles=2, max_new_tokens=max_new_tokens, api_name="/chat")
            latencies.append(time.perf_counter() - began)
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
    client.close()


def run(url: str, clients: int, requests: int, max_new_tokens: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    start = threading.Barrier(clients)
    threads = [threading.Thread(target=ask, args=(url, requests, seed, max_new_tokens, start, latencies, errors))
               for seed in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    result = dict(clients=clients, requests=clients * requests, served=len(latencies), errors=errors,
                  wall_s=round(wall, 3))
    if latencies:
        result.update(p50_s=round(statistics.median(latencies), 3),
                      p95_s=round(statistics.quantiles(latencies, n=20, method="inclusive")[18], 3),
                      max_s=round(max(latencies), 3))
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


def serve_tiny(concurrency: int):
    """app.py's app on a fresh tiny checkpoint, on a free loopback port: (url, demo)."""
    import socket

    import app
    from eagle_demo.tiny import write_tiny_checkpoint

    model = write_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="eagle2-tiny-")) / "tiny-eagle2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo, _, launch = app.build(app.parse_args(["--model", str(model), "--port", str(port),
                                                "--concurrency", str(concurrency)]))
    demo.launch(prevent_thread_lock=True, quiet=True, **launch)
    return f"http://127.0.0.1:{port}/", demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an app already serving; default: serve a tiny checkpoint here")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="per client, one after another")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=1, help="the app's --concurrency, when served here")
    parser.add_argument("--storm", type=int, metavar="N", help="the cancel storm of N jobs instead")
    args = parser.parse_args()
    demo = None
    url = args.url
    if url is None:
        url, demo = serve_tiny(args.concurrency)
    try:
        if args.storm:
            emit(**storm(url, args.storm, measure_cpu=demo is not None))
        else:
            emit(**run(url, args.clients, args.requests, args.max_new_tokens))
    finally:
        if demo is not None:
            demo.close()


if __name__ == "__main__":
    main()
