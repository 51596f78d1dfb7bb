"""The app on ZeroGPU, emulated: `app.py` runs with tests/zerogpu/spaces (the contract of
`spaces.GPU`: a forked worker kept warm, pickled arguments and yields, errors carried back, a
cancel that stops the worker at its next yield) and is driven over HTTP with gradio_client and the
openai client (/v1)."""

from __future__ import annotations

import base64
import json
import math
import os
import pickle
import time

import openai
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from eagle_demo.models import MAX_GPU_SECONDS, SECONDS_PER_TILE
from tests.conftest import ARTIFACTS, ASSETS, CHROMIUM, ROOT, serve_app, stop_app, stream, wait_until_serving
from tests.test_browser import ask

GREEDY = dict(temperature=0.0, top_p=1.0, top_k=0, max_tiles=2, num_frames=4, repetition_penalty=1.0)
KNOBS = ["max_tiles", "num_frames", "temperature", "top_p", "max_new_tokens", "repetition_penalty", "top_k", "seed"]


@pytest.fixture(scope="module")
def zero_gpu_app(tiny_checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("zerogpu") / "calls.jsonl"
    env = {"SPACES_ZERO_GPU": "true", "EAGLE_DEVICE": "cpu", "ZEROGPU_EMULATION_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "zerogpu"), str(ROOT)])}
    proc, url = serve_app(["--model", str(tiny_checkpoint)], env)
    try:
        wait_until_serving(proc, url, 60)
        yield Client(url, verbose=False, analytics_enabled=False), log, tiny_checkpoint.name  # the name clients see
    finally:
        out = stop_app(proc)
        assert "Traceback" not in out, out


def calls(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def ui_chat(client, model, history, max_new_tokens=16, **settings):
    """The chat as the page sends it: the Chatbot's messages, the model, system prompt and knobs."""
    values = {**GREEDY, "max_new_tokens": max_new_tokens, "seed": None, **settings}
    return client.submit(history, model, "You are a helpful assistant.", *[values[k] for k in KNOBS],
                         api_name="/respond")


def user(text, *files):
    return {"role": "user", "content": [*({"type": "file", "file": handle_file(str(f))} for f in files),
                                        {"type": "text", "text": text}]}


def answered(log, n: int, timeout=30.0) -> list[dict]:
    end = time.monotonic() + timeout
    while len(ended := [c for c in calls(log) if c["event"] == "end"]) < n and time.monotonic() < end:
        time.sleep(0.05)
    return ended


def test_ui_chat_streams_through_the_worker_and_a_second_turn_reuses_its_caches(zero_gpu_app):
    client, log, model = zero_gpu_app
    first = [user("What is in this picture?", ASSETS / "scene.jpg")]
    updates = stream(ui_chat(client, model, first))
    history, status = updates[-1]
    assert len(updates) > 2 and history[-1]["role"] == "assistant"
    assert "tiny-eagle2" in history[-1]["metadata"]["log"]  # which model wrote it
    assert "ready" in status
    answer = {"role": "assistant", "content": [history[-1]["content"][0]]}  # its text, as the page keeps it
    follow = [*first, answer, user("And the colours?")]
    history2 = stream(ui_chat(client, model, follow))[-1][0]
    assert history2[-1]["role"] == "assistant"
    ends = answered(log, 2)
    second = pickle.loads(base64.b64decode(ends[-1]["last"]))
    assert second.stats["reused_tokens"] > 256  # the first turn's image, kept in the warm worker
    forks = [c for c in calls(log) if c["event"] == "fork"]
    assert len(forks) == 1 and {c["pid"] for c in ends} == {forks[0]["pid"]}
    assert all(0 < c["duration"] <= 120 for c in calls(log) if c["event"] == "call")


def test_the_gpu_time_asked_counts_the_tiles_the_prepared_request_holds(zero_gpu_app, tmp_path):
    """spaces evaluates `duration` in the caller, on the call's arguments, before it schedules the
    worker. The files are read and tiled in the caller first, outside the lease, so the seconds
    asked follow the tiles the request holds: more for a large picture at more tiles, and nothing
    more for a small picture, which takes one tile whatever the limit."""
    client, log, model = zero_gpu_app
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 64), "red").save(small)
    asked, tiles = {}, {}
    for picture in (ASSETS / "scene.jpg", small):
        for max_tiles in (1, 12):
            before = len(calls(log))
            stream(ui_chat(client, model, [user("What is in this picture?", picture)], max_new_tokens=4,
                           max_tiles=max_tiles))
            made = calls(log)[before:]
            asked[picture.name, max_tiles] = next(c["duration"] for c in made if c["event"] == "call")
            last = pickle.loads(base64.b64decode(next(c["last"] for c in made if c["event"] == "end")))
            tiles[picture.name, max_tiles] = last.stats["image_tiles"]
    more_tiles = tiles["scene.jpg", 12] - tiles["scene.jpg", 1]
    assert more_tiles > 1 and asked["scene.jpg", 12] - asked["scene.jpg", 1] in {
        math.floor(more_tiles * SECONDS_PER_TILE), math.ceil(more_tiles * SECONDS_PER_TILE)}, (asked, tiles)
    assert tiles["small.png", 12] == 1 and asked["small.png", 12] == asked["small.png", 1], (asked, tiles)
    assert max(asked.values()) <= MAX_GPU_SECONDS


def test_chat_api_and_its_errors_come_back_from_the_worker(zero_gpu_app, tmp_path):
    client, log, _ = zero_gpu_app
    job = client.submit("Describe.", [handle_file(str(ASSETS / "chart.png"))], **GREEDY, max_new_tokens=12,
                        api_name="/chat")
    assert len(stream(job)) > 1 and job.result()
    bad = tmp_path / "notes.png"
    bad.write_text("a text file with an image's name")
    with pytest.raises(AppError) as caught:
        client.predict("What is this?", [handle_file(str(bad))], **GREEDY, max_new_tokens=4, api_name="/chat")
    assert "notes.png" in str(caught.value) and "Error" not in str(caught.value)


def test_stop_ends_the_answer_in_the_worker_and_retry_answers_again(zero_gpu_app):
    client, log, model = zero_gpu_app
    before = len(answered(log, 0))
    job = ui_chat(client, model, [user("Tell me a very long story.")], max_new_tokens=4000)
    end = time.monotonic() + 30
    while len(job.outputs()) < 4 and time.monotonic() < end:
        time.sleep(0.01)
    job.cancel()
    stopped = answered(log, before + 1)[-1]
    assert stopped["ended"] == "stopped" and stopped["yielded"] < 3000  # of 4000: it stopped at a yield
    started = time.monotonic()
    history = stream(ui_chat(client, model, [user("Hello")]))[-1][0]
    retried = stream(ui_chat(client, model, history[:-1]))[-1][0]  # Retry: the same question again
    assert retried[-1]["role"] == "assistant" and retried[-1]["content"][0] == history[-1]["content"][0]  # greedy
    print(f"two answers after a stop: {time.monotonic() - started:.2f} s")


def test_v1_answers_inside_the_lease_charged_to_its_caller(zero_gpu_app):
    """/v1 answers run in the page's GPU function (the same warm worker), inside a gradio event whose
    request spaces charges (its X-IP-Token); a second turn reuses the first's caches there."""
    client, log, model = zero_gpu_app
    api = openai.OpenAI(base_url=client.src.rstrip("/") + "/v1", api_key="unused", max_retries=0, timeout=120,
                        default_headers={"X-IP-Token": "visitor-7"})
    image = "data:image/jpeg;base64," + base64.b64encode((ASSETS / "scene.jpg").read_bytes()).decode()
    first = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                          {"type": "text", "text": "What is in this picture?"}]}]
    settings = dict(temperature=0, top_p=1, max_tokens=16, extra_body={"mm_processor_kwargs": {"max_dynamic_patch": 2}})
    before = len(answered(log, 0))
    chunks = list(api.chat.completions.create(model=model, messages=first, stream=True, **settings))
    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    follow = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "And the colours?"}]
    assert api.chat.completions.create(model=model, messages=follow, **settings).choices[0].message.content
    ends = answered(log, before + 2)
    assert pickle.loads(base64.b64decode(ends[-1]["last"])).stats["reused_tokens"] > 256
    v1_calls = [c for c in calls(log) if c["event"] == "call"][-2:]
    assert all(c["request"] and c["ip_token"] == "visitor-7" for c in v1_calls)
    forks = [c for c in calls(log) if c["event"] == "fork"]
    assert len(forks) == 1 and {c["pid"] for c in ends} == {forks[0]["pid"]}


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium: apt-get install -y chromium")
def test_the_page_chats_through_the_worker(zero_gpu_app, browser):
    client, log, _ = zero_gpu_app
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    try:
        page.goto(client.src)
        page.locator("#ask textarea").wait_for()
        ask(page, "What is in this picture?", ASSETS / "scene.jpg")
        page.locator("#chat").get_by_text("tokens/s").wait_for()  # the line under a finished answer
        assert page.locator("#chat").get_by_text("Could not answer").count() == 0
        page.screenshot(path=str(ARTIFACTS / "zerogpu-chat.png"))
    finally:
        page.close()


def test_the_space_front_matter_fits_zero_gpu():
    """ZeroGPU runs Python 3.10.13 or 3.12.12 and transformers 5 needs 3.11+; the weights of every
    model the Space lists are fetched at build time, not inside the first user's request."""
    front = (ROOT / "README.md").read_text(encoding="utf-8").split("---\n")[1]
    assert 'python_version: "3.12"' in front
    listed = front.split("models:\n")[1].split("preload_from_hub:\n")
    models, preloaded = ([line.strip("- ").strip() for line in part.splitlines() if line.startswith("  - ")]
                         for part in listed)
    assert models and set(models) <= set(preloaded)
