"""The OpenAI-compatible API (/v1) with the real `openai` client over HTTP against app.py's app on the
tiny checkpoint (the session's shared app, and one with --api-key): the models, answers equal to
/chat's with the same settings, usage as the engine counted it, images, a video and a history in one
request, each kind of bad request with its status and the app's message, and a client that leaves
mid-stream. Fairness and hostile values over /v1: test_fairness.py, test_hostile_values.py."""

from __future__ import annotations

import base64
import json
import socket
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from gradio_client import Client, handle_file

from eagle_demo.config import DEFAULT_SYSTEM_PROMPT, LIMITS
from eagle_demo.media import sample_video
from eagle_demo.openai_api import WRONG_KEY, request_folder
from tests.conftest import ASSETS, launched_app, serve_app, stop_app, wait_until_serving
from tests.media_factory import make_image, make_video

# the same answer by either route: the same sampling, tiles and penalty (the page's is 1.1, /v1's 1.0)
GREEDY = dict(temperature=0.0, top_p=1.0, max_tiles=2, max_new_tokens=16, repetition_penalty=1.0)
SAMPLED = dict(temperature=1.0, top_p=1.0, top_k=0, seed=7, max_tiles=2, max_new_tokens=16, repetition_penalty=1.0)


def data_url(path: Path, kind: str = "image/png") -> str:
    return f"data:{kind};base64," + base64.b64encode(Path(path).read_bytes()).decode()


def image_part(path: Path, kind: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(path, kind)}}


def openai_client(app_server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=app_server.url + "v1", api_key=key, max_retries=0, timeout=120)


def v1_settings(settings: dict) -> dict:
    """The page's settings as a /v1 request's fields."""
    named = {"temperature": "temperature", "top_p": "top_p", "max_new_tokens": "max_tokens", "seed": "seed"}
    fields = {named[k]: v for k, v in settings.items() if k in named}
    extra = {"mm_processor_kwargs": {"max_dynamic_patch": settings["max_tiles"]},
             "repetition_penalty": settings["repetition_penalty"], **({"top_k": settings["top_k"]} if "top_k" in
                                                                        settings else {})}
    return {**fields, "extra_body": extra}


@pytest.fixture(scope="module")
def api(app_server) -> openai.OpenAI:
    return openai_client(app_server)


def test_models_lists_the_menu(app_server, api):
    models = api.models.list()
    assert [m.id for m in models] == [app_server.model] and all(m.object == "model" for m in models)


@pytest.mark.parametrize("settings", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_streamed_and_whole_answers_equal_chat(app_server, api, client, settings):
    messages = [{"role": "user", "content": [image_part(ASSETS / "chart.png"), {"type": "text", "text": "Describe."}]}]
    whole = api.chat.completions.create(model=app_server.model, messages=messages, **v1_settings(settings))
    generation = app_server.recorder.generations[-1]
    assert whole.object == "chat.completion" and whole.id.startswith("chatcmpl-") and whole.model == app_server.model
    assert whole.choices[0].message.role == "assistant" and whole.choices[0].finish_reason == generation.finish_reason
    assert whole.usage.prompt_tokens == len(generation.prompt_token_ids)  # usage: the tokens the engine counted
    assert whole.usage.completion_tokens == len(generation.token_ids) == 16
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(api.chat.completions.create(model=app_server.model, messages=messages, stream=True,
                                              stream_options={"include_usage": True}, **v1_settings(settings)))
    assert chunks[0].choices[0].delta.role == "assistant" and all(c.object == "chat.completion.chunk" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert not chunks[-1].choices and chunks[-1].usage == whole.usage
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    chat = client.predict("Describe.", [handle_file(str(ASSETS / "chart.png"))], system=DEFAULT_SYSTEM_PROMPT,
                          **settings, api_name="/chat")
    assert whole.choices[0].message.content == streamed == chat


def test_images_a_video_and_a_history_in_one_request(app_server, api, tmp_path):
    video = make_video(tmp_path / "clip.mp4", frames=30, size=(64, 48))
    first = image_part(make_image(tmp_path / "a.jpg", (96, 64)), "image/jpeg")
    messages = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": [first, {"type": "text", "text": "What is this?"}]},
                {"role": "assistant", "content": "A gradient."},
                {"role": "user", "content": [image_part(ASSETS / "chart.png"),
                                             {"type": "video_url", "video_url": {"url": data_url(video, "video/mp4")}},
                                             {"type": "text", "text": "And these?"}]}]
    answer = api.chat.completions.create(model=app_server.model, messages=messages, max_tokens=4,
                                         extra_body={"mm_processor_kwargs": {"max_dynamic_patch": 1},
                                                     "media_io_kwargs": {"video": {"num_frames": 3}}})
    generation = app_server.recorder.generations[-1]
    assert answer.choices[0].message.content is not None
    assert generation.num_frames == 3 and len(generation.num_tiles) == 2 + 3  # two images, three frames
    assert files_left() == []  # the request's files, deleted once answered


def files_left(timeout: float = 10.0) -> list[Path]:
    """The /v1 requests' files still on disk, once their answers' events have ended."""
    end, left = time.monotonic() + timeout, []
    while time.monotonic() < end:
        try:
            left = list(request_folder().glob("*/*"))
        except FileNotFoundError:  # a request's folder deleted as it was listed: look again
            continue
        if not left:
            break
        time.sleep(0.05)
    return left


def test_a_frame_list_video_is_read_as_sent(app_server, api, tmp_path):
    """vLLM's frame list (what the app's own --server client sends): these frames, at these times."""
    clip = sample_video(make_video(tmp_path / "clip.mp4", frames=40), 4)
    frames = []
    for i, frame in enumerate(clip.frames):
        frame.save(tmp_path / f"f{i}.png")
        frames.append(base64.b64encode((tmp_path / f"f{i}.png").read_bytes()).decode())
    video = {"type": "video_url", "video_url": {"url": "data:video/jpeg;base64," + ",".join(frames)}}
    api.chat.completions.create(model=app_server.model, max_tokens=2, messages=[
        {"role": "user", "content": [video, {"type": "text", "text": "What happens?"}]}],
        extra_body={"mm_processor_kwargs": {"video_timestamps": [[0.5, 1.25, 2.0, 3.75]]},
                    "media_io_kwargs": {"video": {"num_frames": -1}}})
    generation = app_server.recorder.generations[-1]
    prompt = app_server.engine.tokenizer.decode(generation.prompt_token_ids)
    assert generation.num_frames == 4 and "Frame 4 sampled at 3.75 seconds" in prompt


def test_stop_strings_cut_the_answer_and_its_count(app_server, api):
    ask = dict(model=app_server.model, messages=[{"role": "user", "content": "Tell me a story."}], **v1_settings(
        {**SAMPLED, "max_new_tokens": 24}))
    full = api.chat.completions.create(**ask).choices[0].message.content
    stop = full[len(full) // 2:len(full) // 2 + 3]
    cut = api.chat.completions.create(**ask, stop=[stop])
    streamed = "".join(c.choices[0].delta.content or "" for c in api.chat.completions.create(**ask, stop=stop,
                                                                                            stream=True) if c.choices)
    assert cut.choices[0].message.content == streamed == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop" and cut.usage.completion_tokens < 24


def tiny_png(tmp_path: Path) -> str:
    return data_url(make_image(tmp_path / "tiny.png", (16, 16)))


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "What is this?"}]}]


def url_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


MOST_IMAGES, LONGEST = LIMITS.max_images_per_conversation, LIMITS.max_prompt_chars
BAD_REQUESTS = {  # name: (request fields, status, message, param)
    "too many images": (lambda d: dict(messages=user(*[url_part(tiny_png(d))] * (MOST_IMAGES + 1))), 413,
                        f"This conversation has {MOST_IMAGES + 1} images and videos; the limit is {MOST_IMAGES}.",
                        None),
    "a message over the limit": (lambda d: dict(messages=[{"role": "user", "content": "x" * (LONGEST + 1)}]), 413,
                                 f"The message is {LONGEST + 1:,} characters long; the limit is {LONGEST:,}.", None),
    "an http URL": (lambda d: dict(messages=user(url_part("https://example.com/cat.png"))), 400,
                    "this server fetches nothing on a client's behalf", "messages[0].content[0].image_url.url"),
    "bad base64": (lambda d: dict(messages=user(url_part("data:image/png;base64,not*base64!"))), 400,
                   "messages[0].content[0].image_url.url is not valid base64.", "messages[0].content[0].image_url.url"),
    "not an image": (lambda d: dict(messages=user(url_part("data:image/png;base64," + base64.b64encode(
        b"just some text, no picture").decode()))), 400, "image1.png is not an image this app can open",
        "messages[0].content[0].image_url.url"),
    "n=2": (lambda d: dict(messages=user(), n=2), 400, "n must be 1", "n"),
    "an unknown model": (lambda d: dict(messages=user(), model="gpt-4o"), 404, "Unknown model; this app serves",
                         "model"),
    "a bad role": (lambda d: dict(messages=[{"role": "tool", "content": "42"}]), 400,
                   'messages[0].role must be "system", "user" or "assistant".', "messages[0].role"),
    "no messages": (lambda d: dict(messages=[]), 400, "The conversation must end with a user message.", None),
    "temperature out of range": (lambda d: dict(messages=user(), temperature=1.8), 400,
                                 "Temperature must be a number from 0.0 to 1.5.", "temperature"),
    "max_tokens out of range": (lambda d: dict(messages=user(), max_tokens=5000), 400,
                                "Max new tokens must be a whole number from 1 to 4,096.", "max_tokens"),
}


@pytest.mark.parametrize("kind", BAD_REQUESTS)
def test_each_bad_request_is_refused_with_its_status_and_message(app_server, api, tmp_path, kind):
    fields, status, message, param = BAD_REQUESTS[kind]
    with pytest.raises(openai.APIStatusError) as refused:
        api.chat.completions.create(**{"model": app_server.model, "max_tokens": 4, **fields(tmp_path)})
    error = refused.value.body
    assert refused.value.status_code == status and message in error["message"], error
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "/tmp" not in error["message"] and "Error" not in error["message"]
    assert api.chat.completions.create(model=app_server.model, messages=user(), max_tokens=2)  # still serving


def test_a_client_that_leaves_mid_stream_stops_its_decode(app_server, api):
    recorder = app_server.recorder
    story = [{"role": "user", "content": "Write a very long story."}]
    stream = api.chat.completions.create(model=app_server.model, messages=story, temperature=0, max_tokens=4096,
                                         stream=True)
    chunks = iter(stream)
    for _ in range(5):
        next(chunks)
    generation = recorder.generations[-1]
    stream.close()
    end = time.monotonic() + 10
    while generation.finish_reason is None and time.monotonic() < end:
        time.sleep(0.01)
    decoded = len(generation.token_ids)
    assert generation.finish_reason == "cancelled" and decoded < 4096
    seen = len(recorder.generations)
    next_answer = api.chat.completions.create(model=app_server.model, messages=story, temperature=0, max_tokens=4)
    assert next_answer.choices[0].finish_reason == "length" and len(recorder.generations) == seen + 1
    assert len(generation.token_ids) == decoded  # nothing decoded for the client that left


def test_a_client_that_leaves_before_a_whole_answer_stops_its_decode(app_server):
    """Not streamed: the connection closes while the answer is made (a socket of its own, closed once
    the engine decodes for it)."""
    recorder, seen = app_server.recorder, len(app_server.recorder.generations)
    body = json.dumps({"messages": [{"role": "user", "content": "Write a very long story."}], "temperature": 0,
                       "max_tokens": 4096}).encode()
    host, port = app_server.url.split("//")[1].strip("/").split(":")
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body))
        end = time.monotonic() + 30
        while not (recorder.generations[seen:] and len(recorder.generations[seen].token_ids) > 4) \
                and time.monotonic() < end:
            time.sleep(0.01)
    generation = recorder.generations[seen]
    end = time.monotonic() + 10
    while generation.finish_reason is None and time.monotonic() < end:
        time.sleep(0.01)
    assert generation.finish_reason == "cancelled" and len(generation.token_ids) < 4096


def test_a_key_is_required_where_the_app_has_one(tiny_checkpoint):
    with launched_app(tiny_checkpoint, flags=("--api-key", "sesame,open")) as keyed:
        for key in ("wrong", None):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            for reply in (httpx.get(keyed.url + "v1/models", headers=headers),
                          httpx.post(keyed.url + "v1/chat/completions", headers=headers, json={"messages": user()})):
                assert reply.status_code == 401
                assert reply.json() == {"error": {"message": WRONG_KEY, "type": "invalid_request_error",
                                                  "param": None, "code": "invalid_api_key"}}
        for key in ("sesame", "open"):
            answer = openai_client(keyed, key).chat.completions.create(model=keyed.model, messages=user(),
                                                                       max_tokens=2)
            assert answer.usage.completion_tokens >= 1
        page = Client(keyed.url, verbose=False, analytics_enabled=False)  # the page's own API stays as it was
        assert page.predict("Hi", max_tiles=1, max_new_tokens=2, api_name="/chat") is not None
        page.close()



@pytest.fixture(scope="module")
def front(app_server):
    """`python app.py --server <the shared app>`: another instance of the app as the model server."""
    proc, url = serve_app(["--server", app_server.url])
    try:
        wait_until_serving(proc, url, 120)
        yield Client(url, verbose=False, analytics_enabled=False)
    finally:
        out = stop_app(proc)
        assert "Traceback" not in out, out


@pytest.mark.parametrize("visual", ["image", "video"])
def test_the_apps_server_client_gets_what_the_instances_page_gets(app_server, client, front, tmp_path, visual):
    """Through the front app's --server (images as PNG data URLs, a video as vLLM's frame list with
    its times), the back instance's engine reads the same prompt and pixels, and answers the same."""
    files = ([handle_file(str(ASSETS / "chart.png"))], None) if visual == "image" else (
        None, handle_file(str(make_video(tmp_path / "clip.mp4", frames=30))))
    settings = {**SAMPLED, "num_frames": 4, "repetition_penalty": 1.1}
    recorder = app_server.recorder
    through_front = front.predict("Describe.", *files, **settings, api_name="/chat")
    served = recorder.generations[-1]
    own = client.predict("Describe.", *files, **settings, api_name="/chat")
    page = recorder.generations[-1]
    assert served is not page and through_front == own
    assert served.prompt_token_ids == page.prompt_token_ids and served.num_tiles == page.num_tiles
    for a, b in zip(served.prompt.visuals, page.prompt.visuals, strict=True):
        assert torch.equal(a.pixel_values, b.pixel_values)
