"""Many users at once, over loopback, on the real app with a tiny checkpoint (default
--concurrency 1): everyone is served, the model runs one request at a time, a cancel frees it for
the queue within a couple of tokens, and threads and memory return to where they were."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import time

from gradio_client import Client, handle_file

from eagle_demo.ui import ANSWERS
from tests.conftest import ASSETS, ROOT, rss, stream, threads_left_behind

CLIENTS = 8


def bench(url: str, requests: int) -> dict:
    """benchmarks/bench_concurrency.py against the app: its clients run in a process of their own,
    so this process's threads and memory are the server's alone."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_concurrency.py"), "--url", url,
                          "--clients", str(CLIENTS), "--requests", str(requests)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("{")))


def test_eight_clients_at_once_are_all_served_one_at_a_time(app_server):
    recorder = app_server.recorder
    bench(app_server.url, requests=1)  # warm-up: gradio's worker pools grow to what a burst needs
    gc.collect()
    threads, memory = set(threading.enumerate()), rss()
    seen = len(recorder.generations)

    result = bench(app_server.url, requests=2)
    print(f"{CLIENTS} clients at once: {json.dumps(result)}")
    assert result["served"] == result["requests"] == 2 * CLIENTS and not result["errors"]

    asked = recorder.asked_at[seen:]
    runs = [(g.timings["run_start"], g.timings["run_end"]) for g in recorder.generations[seen:]]
    assert len(runs) == 2 * CLIENTS and all(g.finish_reason for g in recorder.generations[seen:])
    order = sorted(range(len(runs)), key=lambda i: asked[i])
    for before, after in zip(order, order[1:]):
        # --concurrency 1: the next request reaches the engine only after the last one's decode
        assert runs[before][1] <= asked[after] <= runs[after][0]

    gc.collect()
    left, grown = threads_left_behind(threads), (rss() - memory) / 2**20
    print(f"server threads left behind: {left}; RSS grew by {grown:.0f} MB")
    assert not left
    assert grown < 100


def test_concurrency_is_one_queue_for_everything_that_runs_the_model(tiny_checkpoint):
    sys.path.insert(0, str(ROOT))
    import app

    demo, _, _ = app.build(app.parse_args(["--model", str(tiny_checkpoint), "--concurrency", "3"]))
    model_runs = [fn for fn in demo.fns.values() if fn.name in ("respond", "chat", "answer")]
    # Send, a clicked example, Retry (the button, the chat's), an edit, Continue, the chat endpoint, /v1's answers
    assert len(model_runs) == 8
    assert all(fn.concurrency_id == ANSWERS and fn.concurrency_limit == 3 for fn in model_runs)


def test_a_cancel_frees_the_engine_for_the_queue_within_two_tokens(app_server):
    recorder = app_server.recorder
    clients = [Client(app_server.url, verbose=False, analytics_enabled=False) for _ in range(4)]
    seen = len(recorder.generations)
    long = clients[0].submit("Write a very long story.", temperature=0, max_new_tokens=4000, api_name="/chat")
    end = time.monotonic() + 30
    while len(long.outputs()) < 3 and time.monotonic() < end:  # it is streaming: the engine is busy
        time.sleep(0.005)
    queued = [c.submit("What is this?", [handle_file(str(ASSETS / "chart.png"))], temperature=1.0, top_k=0, seed=i,
                       max_tiles=2, max_new_tokens=8, api_name="/chat") for i, c in enumerate(clients[1:])]
    generation = recorder.generations[seen]

    at_cancel = []
    watcher = threading.Thread(target=lambda: (generation.cancel.wait(30),
                                               at_cancel.append(len(generation.token_ids))))
    watcher.start()
    long.cancel()
    watcher.join()
    answers = [stream(job)[-1] for job in queued]
    final = len(generation.token_ids)
    nxt = min(g.timings["run_start"] for g in recorder.generations[seen + 1:])
    print(f"cancel reached the engine at token {at_cancel[0]}; it stopped at {final} of 4000, and the next "
          f"request started {1000 * (nxt - generation.timings['run_end']):.1f} ms later")
    assert generation.finish_reason == "cancelled"
    assert final - at_cancel[0] <= 2
    assert nxt >= generation.timings["run_end"]
    assert len(answers) == 3 and all(a.strip() for a in answers)
    for client in clients:
        client.close()
