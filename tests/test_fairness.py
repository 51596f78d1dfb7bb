"""Fairness over HTTP on the real app (tiny checkpoint, --concurrency 1): one answer at a time per
client, and nothing decoded for a client that has gone, whether it cancelled (even before its job
had an id), closed its stream, or left while its job was still queued. A bounded queue says so.
The same over the OpenAI-compatible API, whose answers take the page's slots in the same queue."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import time

import httpx
import openai
import pytest
from gradio_client import Client
from gradio_client.exceptions import ValidationError

from eagle_demo.config import LIMITS, QUEUED_PER_ANSWER_SLOT
from eagle_demo.openai_api import CLIENT_BUSY, QUEUE_FULL
from eagle_demo.request_guard import BUSY, ENDING_GRACE_S
from tests.conftest import ASSETS

STORY = "Write a very long story."  # greedy on the tiny checkpoint: no end token for thousands of tokens
LONG = dict(temperature=0, max_tiles=1, max_new_tokens=4096, api_name="/chat")


def connect(app_server) -> Client:
    return Client(app_server.url, verbose=False, analytics_enabled=False)


def settle(recorder, seen: int, timeout: float = 30.0) -> list:
    """The generations since `seen`, once every one has ended and none has started for a while: a
    join may wait out the guard's grace before it is queued, and reach the engine only then."""
    end, quiet = time.monotonic() + timeout, 2 * ENDING_GRACE_S + 0.5
    count, since = -1, time.monotonic()
    while time.monotonic() < end:
        ran = recorder.generations[seen:]
        if len(ran) != count:
            count, since = len(ran), time.monotonic()
        elif all(g.finish_reason for g in ran) and time.monotonic() - since > quiet:
            break
        time.sleep(0.05)
    return recorder.generations[seen:]


def streaming(job, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while len(job.outputs()) < 2 and time.monotonic() < end:
        time.sleep(0.01)
    assert len(job.outputs()) >= 2, "the answer did not start"


def test_a_cancel_storm_decodes_nothing_for_nobody(app_server):
    recorder, seen = app_server.recorder, len(app_server.recorder.generations)
    stormer, other = connect(app_server), connect(app_server)
    jobs = []
    for seed in range(30):  # gradio_client cancels before the join has an id: no /cancel names it
        job = stormer.submit(STORY, seed=seed, **LONG)
        job.cancel()
        jobs.append(job)
    concurrent.futures.wait([job.future for job in jobs], timeout=60)
    storm = settle(recorder, seen)
    assert other.predict("Hi", temperature=0, max_tiles=1, max_new_tokens=4, api_name="/chat")
    tokens = [len(g.token_ids) for g in storm]
    print(f"storm of 30: {len(storm)} reached the engine, {sum(tokens)} tokens decoded in all")
    assert not any(g.finish_reason == "length" for g in storm)  # cancelled, or an end token sampled early
    assert sum(tokens) < 4096  # without the guard: every job runs to 4,096 tokens
    assert len(settle(recorder, seen)) == len(storm) + 1  # nothing of the storm ran after it
    stormer.close()
    other.close()


def test_one_answer_at_a_time_per_client(app_server):
    client, neighbour = connect(app_server), connect(app_server)
    first = client.submit(STORY, **LONG)
    streaming(first)
    with pytest.raises(ValidationError) as refused:
        client.predict("And another?", **LONG)
    assert BUSY in str(refused.value)
    assert neighbour.predict("Hi", temperature=0, max_tiles=1, max_new_tokens=4, api_name="/chat")
    first.cancel()
    concurrent.futures.wait([first.future], timeout=30)
    for _ in range(4):  # back to back, as scripts do: the previous answer's end never refuses the next
        assert client.predict("Hi", temperature=0, max_tiles=1, max_new_tokens=4, api_name="/chat")
    client.close()
    neighbour.close()


CLIENT = """
import sys, time
from gradio_client import Client
client = Client(sys.argv[1], verbose=False, analytics_enabled=False)
job = client.submit("Write a very long story.", temperature=0, max_tiles=1, max_new_tokens=4096, api_name="/chat")
while job.status().code.name in ("STARTING", "JOINING_QUEUE"):
    time.sleep(0.01)
print(job.status().code.name, flush=True)
time.sleep(600)
"""


def client_process(url: str) -> subprocess.Popen:
    """A gradio_client in a process of its own, which the test kills: its connections close as a
    client's do when it goes away (gradio_client's close() leaves its stream open)."""
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, url], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() in ("IN_QUEUE", "PROCESSING", "ITERATING")
    return proc


def test_a_client_that_goes_away_stops_its_answer_and_its_queued_job(app_server):
    recorder = app_server.recorder
    seen = len(recorder.generations)
    leaving = client_process(app_server.url)
    end = time.monotonic() + 30
    while not recorder.generations[seen:] and time.monotonic() < end:
        time.sleep(0.01)
    waiting = client_process(app_server.url)  # queued behind the running answer
    time.sleep(0.5)
    waiting.kill()  # goes away before its job started
    waiting.wait()
    time.sleep(0.5)
    leaving.kill()  # and this one while its answer streams
    leaving.wait()
    ran = settle(recorder, seen)
    assert ran[0].finish_reason == "cancelled" and len(ran[0].token_ids) < 4096
    time.sleep(1.0)
    assert len(recorder.generations) == seen + 1  # the queued job never reached the engine


def test_a_full_queue_refuses_politely_and_resets_end_queued_jobs(app_server):
    """Raw joins from many sessions (no streams open): the queue holds QUEUED_PER_ANSWER_SLOT;
    one more is told the app is busy; a /reset for each queued id removes it, run or not."""
    recorder = app_server.recorder
    info = httpx.get(app_server.url + "config").json()
    fn_index = next(d["id"] for d in info["dependencies"] if d.get("api_name") == "chat")
    data = [STORY, None, None, [], "sys", 1, 4, 0, 1.0, 4096, 1.0, 0, 0, None, None]
    seen = len(recorder.generations)
    joined, statuses = [], []
    for i in range(QUEUED_PER_ANSWER_SLOT + 3):
        reply = httpx.post(app_server.url + "gradio_api/queue/join",
                           json={"data": data, "fn_index": fn_index, "session_hash": f"raw-{i}"}, timeout=10)
        statuses.append(reply.status_code)
        if reply.status_code == 200:
            joined.append(reply.json()["event_id"])
    assert 503 in statuses and statuses.count(200) <= QUEUED_PER_ANSWER_SLOT + 1  # one may already run
    for event_id in reversed(joined):  # the queued ones first: each job that ends lets the next one start
        httpx.post(app_server.url + "gradio_api/reset", json={"event_id": event_id}, timeout=10)
    ran = settle(recorder, seen)
    assert all(g.finish_reason == "cancelled" for g in ran) and len(ran) <= 2
    time.sleep(1.0)
    assert len(recorder.generations) == seen + len(ran)


def upload(url: str, files: list[tuple[str, bytes]]) -> httpx.Response:
    return httpx.post(url + "gradio_api/upload", files=[("files", (name, data)) for name, data in files], timeout=60)


def test_an_upload_carries_at_most_a_chats_worth_of_files(app_server):
    png = (ASSETS / "chart.png").read_bytes()
    ok = upload(app_server.url, [(f"p{i}.png", png) for i in range(LIMITS.max_images_per_conversation)])
    assert ok.status_code == 200 and len(ok.json()) == LIMITS.max_images_per_conversation
    many = upload(app_server.url, [(f"p{i}.png", b"x") for i in range(1000)])  # gradio alone takes 1,000
    assert many.status_code == 413
    assert many.json()["detail"] == (f"Upload at most {LIMITS.max_images_per_conversation} files at a time, "
                                     f"each up to {LIMITS.max_upload_mb} MB.")
    client = connect(app_server)  # and the app goes on serving
    assert client.predict("Hi", temperature=0, max_tiles=1, max_new_tokens=4, api_name="/chat")
    client.close()


def test_the_page_is_told_in_words_it_can_toast(app_server):
    """The page's client toasts a join refused with a text (gradio_client gets a ValidationError)."""
    info = httpx.get(app_server.url + "config").json()
    fn_index = next(d["id"] for d in info["dependencies"] if d.get("api_name") == "chat")
    data = [STORY, None, None, [], "sys", 1, 4, 0, 1.0, 4096, 1.0, 0, 0, None, None]
    join = {"data": data, "fn_index": fn_index, "session_hash": "a-page"}
    first = httpx.post(app_server.url + "gradio_api/queue/join", json=join, timeout=10)
    second = httpx.post(app_server.url + "gradio_api/queue/join", json=join, timeout=10)
    assert first.status_code == 200
    assert second.status_code == 422 and second.json() == {"detail": BUSY}
    httpx.post(app_server.url + "gradio_api/reset", json={"event_id": first.json()["event_id"]}, timeout=10)


# ------------------------------------------------------------------ the OpenAI-compatible API (/v1)
def v1(app_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=app_server.url + "v1", api_key="unused", max_retries=0, timeout=120)


def v1_story(api, app_server, max_tokens: int = 4096):
    """A /v1 answer that streams until it is closed (greedy on the tiny checkpoint: no end token)."""
    return api.chat.completions.create(model=app_server.model, messages=[{"role": "user", "content": STORY}],
                                       temperature=0, max_tokens=max_tokens, stream=True)


def v1_hi(api, app_server):
    return api.chat.completions.create(model=app_server.model, messages=[{"role": "user", "content": "Hi"}],
                                       temperature=0, max_tokens=4)


def started(recorder, seen: int, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while len(recorder.generations) <= seen and time.monotonic() < end:
        time.sleep(0.01)
    return recorder.generations[seen]


def test_v1_and_the_page_take_the_same_answer_slots(app_server):
    """With --concurrency 1, a /v1 answer and a page answer never run at once: each waits in gradio's
    one queue for the other. A /v1 answer's slot is freed once its decode has ended; a page answer's
    Stop frees its slot at once (gradio's cancel), and its decode ends at the token it is on, before
    the next one starts (as test_concurrency checks for two page answers)."""
    recorder, api, page = app_server.recorder, v1(app_server), connect(app_server)
    seen = len(recorder.generations)
    stream = v1_story(api, app_server)
    next(iter(stream))
    job = page.submit("Hi", temperature=0, max_tiles=1, max_new_tokens=4, api_name="/chat")
    end = time.monotonic() + 30
    while job.status().code.name != "IN_QUEUE" and time.monotonic() < end:
        time.sleep(0.01)
    assert job.status().code.name == "IN_QUEUE" and len(recorder.generations) == seen + 1
    stream.close()
    assert job.result(timeout=60) is not None
    v1_answer, page_answer = recorder.generations[seen:seen + 2]
    assert recorder.asked_at[seen + 1] >= v1_answer.timings["run_end"]

    long_job = page.submit(STORY, **LONG)
    streaming(long_job)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(v1_hi, api, app_server)
        time.sleep(1.0)
        assert not waiting.done() and len(recorder.generations) == seen + 3  # queued behind the page's answer
        long_job.cancel()
        assert waiting.result(timeout=60).choices[0].finish_reason == "length"
    assert recorder.generations[seen + 3].timings["run_start"] >= recorder.generations[seen + 2].timings["run_end"]
    page.close()


def test_v1_allows_one_answer_at_a_time_per_client(app_server):
    api, page = v1(app_server), connect(app_server)
    stream = v1_story(api, app_server)
    next(iter(stream))
    with pytest.raises(openai.RateLimitError) as refused:
        v1_hi(api, app_server)
    assert refused.value.status_code == 429 and refused.value.body["message"] == CLIENT_BUSY
    assert page.predict("Hi", temperature=0, max_tiles=1, max_new_tokens=4, api_name="/chat")  # queued, not refused
    stream.close()
    for _ in range(4):  # back to back: the previous answer's end never refuses the next
        assert v1_hi(api, app_server).choices[0].finish_reason == "length"
    page.close()


def test_a_v1_client_that_leaves_the_queue_is_never_answered(app_server):
    recorder, api, page = app_server.recorder, v1(app_server), connect(app_server)
    seen = len(recorder.generations)
    long_job = page.submit(STORY, **LONG)
    streaming(long_job)
    leaving = v1_story(api, app_server)  # queued behind the page's answer (the headers come at once)
    time.sleep(0.5)
    leaving.close()
    time.sleep(0.5)
    long_job.cancel()
    ran = settle(recorder, seen)
    assert len(ran) == 1 and ran[0].finish_reason == "cancelled"  # the /v1 request never reached the engine
    assert v1_hi(api, app_server)
    page.close()


def test_a_full_queue_refuses_v1_politely(app_server):
    info = httpx.get(app_server.url + "config").json()
    fn_index = next(d["id"] for d in info["dependencies"] if d.get("api_name") == "chat")
    data = [STORY, None, None, [], "sys", 1, 4, 0, 1.0, 4096, 1.0, 0, 0, None, None]
    joined = []
    for i in range(QUEUED_PER_ANSWER_SLOT + 1):
        reply = httpx.post(app_server.url + "gradio_api/queue/join",
                           json={"data": data, "fn_index": fn_index, "session_hash": f"full-{i}"}, timeout=10)
        if reply.status_code == 200:
            joined.append(reply.json()["event_id"])
    api = v1(app_server)
    with pytest.raises(openai.APIStatusError) as refused:
        v1_hi(api, app_server)
    assert refused.value.status_code == 503 and refused.value.body["message"] == QUEUE_FULL
    for event_id in reversed(joined):
        httpx.post(app_server.url + "gradio_api/reset", json={"event_id": event_id}, timeout=10)
    settle(app_server.recorder, len(app_server.recorder.generations))
    assert v1_hi(api, app_server).choices[0].finish_reason == "length"
