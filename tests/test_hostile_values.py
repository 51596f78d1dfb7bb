"""Hostile values over HTTP against the real app on a tiny checkpoint: settings that gradio's own
checks let through (NaN, tiny floats, huge ints, booleans), lone surrogates, images whose metadata
is malformed, an export past the chat's limits, and the server's paths kept private. Each is
answered or refused with a message that names what to change, never with internal text. The same
over the OpenAI-compatible API (/v1), whose refusals are OpenAI error objects."""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from eagle_demo.config import LIMITS
from tests.media_factory import make_image, make_video

QUICK = dict(temperature=1.0, top_p=1.0, top_k=0, seed=0, max_tiles=1, max_new_tokens=4)
INTERNAL = re.compile(r"[A-Z]\w*(Error|Exception)\b|Traceback|NoneType|<class|/tmp/|/work/|/root/")


def refused(client, *args, **kwargs) -> str:
    with pytest.raises(AppError) as caught:
        client.predict(*args, **{**QUICK, **kwargs}, api_name="/chat")
    message = str(caught.value)
    assert not INTERNAL.search(message), message
    return message


def call_raw(url: str, values: list[str], endpoint: str = "chat") -> str | None:
    """POST the values as written (NaN and lone-surrogate escapes included) to `endpoint`; None
    when it answers, else its error message."""
    base = url.rstrip("/") + f"/gradio_api/call/{endpoint}"
    reply = httpx.post(base, content='{"data": [' + ", ".join(values) + "]}",
                       headers={"content-type": "application/json"}, timeout=30)
    assert reply.status_code == 200, reply.text
    with httpx.stream("GET", f"{base}/{reply.json()['event_id']}", timeout=60) as events:
        text = "".join(events.iter_text())
    if "event: error" not in text:
        assert "event: complete" in text, text
        return None
    error = json.loads(text.split("event: error", 1)[1].split("data:", 1)[1].strip().splitlines()[0])
    assert error and error.get("error"), f"an error with no message: {text}"
    return error["error"]


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("temperature", 1e-40, "Temperature must be 0 (greedy) or at least 0.01."),
    ("top_k", 1e-40, "Top-k must be a whole number from 0 to 200."),
    ("seed", 2**70, "Seed must be a whole number from 0 to 9,223,372,036,854,775,807."),
    ("seed", -1, "Seed must be a whole number from 0 to 9,223,372,036,854,775,807."),
    ("max_tiles", True, "Max tiles per image must be a whole number from 1 to 24."),
    ("repetition_penalty", True, "Repetition penalty must be a number from 1.0 to 2.0."),
])
def test_settings_past_gradio_checks_are_refused_by_name(client, setting, value, message):
    assert refused(client, "Hi", **{setting: value}) == message
    assert client.predict("Hi", **QUICK, api_name="/chat")


@pytest.mark.parametrize(("position", "value", "message"), [
    (7, "NaN", "Temperature must be a number from 0.0 to 1.5."),
    (10, "NaN", "Repetition penalty must be a number from 1.0 to 2.0."),
    (8, "NaN", "Top-p must be a number from 0.05 to 1.0."),
    (0, '"Hi \\ud800 there"', "The message contains characters that are not valid text"),
    (4, '"\\udfff"', "The system prompt contains characters that are not valid text"),
])
def test_nan_infinity_and_lone_surrogates_sent_raw(app_server, client, position, value, message):
    # message, images, video, history, system, max_tiles, num_frames, temperature, top_p,
    # max_new_tokens, repetition_penalty, top_k, seed, model, image
    data = ['"Hi"', "null", "null", "[]", '"You are a helpful assistant."', "1", "4", "1.0", "1.0", "4", "1.0",
            "0", "0", "null", "null"]
    data[position] = value
    error = call_raw(app_server.url, data)
    assert error is not None and message in error and not INTERNAL.search(error), error
    assert client.predict("Hi", **QUICK, api_name="/chat")


def test_a_lone_surrogate_in_the_history_is_refused(app_server):
    history = '[{"role": "user", "content": "a \\ud800"}, {"role": "assistant", "content": "b"}]'
    data = ['"Hi"', "null", "null", history, '"sys"', "1", "4", "1.0", "1.0", "4", "1.0", "0", "0", "null",
            "null"]
    error = call_raw(app_server.url, data)
    assert error is not None and "The message contains characters that are not valid text" in error


@pytest.mark.parametrize("name,save", [
    ("exif-not-tiff.png", dict(exif=b"this is not a TIFF header")),
    ("exif-not-tiff.webp", dict(exif=b"MM\x00\x2a\xff\xff\xff\xff")),
    ("exif-garbage.jpg", dict(exif=b"Exif\x00\x00\x00\x01\x02\x03")),
    ("icc-not-a-profile.png", dict(icc_profile=b"not an ICC profile")),
    ("icc-zeros.jpg", dict(icc_profile=b"\x00" * 300)),
    ("icc-garbage.webp", dict(icc_profile=b"garbage")),
    ("xmp-broken.jpg", dict(xmp=b"<?xpacket begin=\xff\xfe <<< not XML")),
])
def test_images_with_malformed_metadata_still_open(client, tmp_path, name, save):
    """EXIF is read for the orientation (and ignored when unreadable); ICC and XMP are never read."""
    path = make_image(tmp_path / name, (320, 240), **save)
    info = Image.open(path).info
    assert info.get("exif") or info.get("icc_profile") or info.get("xmp")  # the broken block is really there
    assert client.predict("What is this?", [handle_file(str(path))], **QUICK, api_name="/chat")


def test_the_most_video_frames_fit_the_context(client, tmp_path):
    video = make_video(tmp_path / "long.mp4", frames=LIMITS.max_video_frames * 2, size=(64, 48), fps=10)
    answer = client.predict("What happens?", None, handle_file(str(video)),
                            **{**QUICK, "num_frames": LIMITS.max_video_frames}, api_name="/chat")
    assert answer


def test_server_paths_are_not_public(app_server, client, tiny_checkpoint):
    folder = str(tiny_checkpoint)
    for page in ("config", "gradio_api/info"):
        text = httpx.get(app_server.url + page, timeout=10).text
        assert folder not in text and str(tiny_checkpoint.parent) not in text
    assert json.dumps(client.view_api(print_info=False, return_format="dict")).count(tiny_checkpoint.name) >= 1
    message = refused(client, "Hi", model="Eagle2-404B")
    assert "tiny-eagle2" in message and folder not in message  # the choices, by the names clients see
    assert client.predict("Hi", **QUICK, model=tiny_checkpoint.name, api_name="/chat")


def test_export_holds_to_the_chats_limits(client):
    huge = [{"role": "user", "content": [{"type": "text", "text": "x" * 1_000_000}]},
            {"role": "assistant", "content": [{"type": "text", "text": "y"}]}] * 10
    with pytest.raises(AppError) as caught:
        client.predict(huge, api_name="/export")
    assert "too long to export" in str(caught.value)
    ok = client.predict([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], api_name="/export")
    assert json.loads(open(ok, encoding="utf-8").read())["model"] == "tiny-eagle2"


# ------------------------------------------------------------------ the OpenAI-compatible API (/v1)
def v1_raw(url: str, body: str) -> httpx.Response:
    """POST `body` as written (NaN and lone-surrogate escapes included) to /v1/chat/completions."""
    return httpx.post(url + "v1/chat/completions", content=body, headers={"content-type": "application/json"},
                      timeout=60)


def v1_refusal(reply: httpx.Response, status: int = 400) -> dict:
    error = reply.json()["error"]
    assert reply.status_code == status and set(error) == {"message", "type", "param", "code"}, reply.text
    assert not INTERNAL.search(error["message"]), error
    return error


HI = '"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2'


@pytest.mark.parametrize(("fields", "message", "param"), [
    ('"temperature": NaN', "Temperature must be a number from 0.0 to 1.5.", "temperature"),
    ('"top_p": Infinity', "Top-p must be a number from 0.05 to 1.0.", "top_p"),
    ('"temperature": 1e-40', "Temperature must be 0 (greedy) or at least 0.01.", "temperature"),
    ('"top_k": 1e-40', "Top-k must be a whole number from 0 to 200.", "top_k"),
    (f'"seed": {2**70}', "Seed must be a whole number from 0 to 9,223,372,036,854,775,807.", "seed"),
    ('"max_tokens": true', "Max new tokens must be a whole number from 1 to 4,096.", "max_tokens"),
    ('"repetition_penalty": "1.2"', "Repetition penalty must be a number from 1.0 to 2.0.", "repetition_penalty"),
    ('"mm_processor_kwargs": {"max_dynamic_patch": 99}', "Max tiles per image must be a whole number from 1 to 24.",
     "mm_processor_kwargs.max_dynamic_patch"),
    ('"stop": [""]', "stop must be a string or a list of up to 4 strings, each of 1 to 200 characters.", "stop"),
    (f'"stop": "{"x" * 201}"', "stop must be a string or a list of up to 4 strings, each of 1 to 200 characters.",
     "stop"),
    ('"stream": "yes"', "stream must be true or false.", "stream"),
])
def test_v1_settings_past_json_are_refused_by_name(app_server, fields, message, param):
    error = v1_refusal(v1_raw(app_server.url, "{" + HI + ", " + fields + "}"))
    assert error["message"] == message and error["param"] == param


@pytest.mark.parametrize(("body", "message"), [
    ('{"messages": [{"role": "user", "content": "Hi \\ud800 there"}]}',
     "The message contains characters that are not valid text"),
    ('{"messages": [{"role": "system", "content": "\\udfff"}, {"role": "user", "content": "Hi"}]}',
     "The system prompt contains characters that are not valid text"),
    ('{"messages": [{"role": "user", "content": 42}]}', "messages[0].content must be a string or a list of parts."),
    ('{"messages": [{"role": "user", "content": [{"type": "text", "text": 42}]}]}',
     "The text parts of messages[0] must be text."),
    ('{"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}',
     "messages[0].content[0] must be a text, image_url or video_url part."),
    ('{"messages": "Hi"}', 'messages must be a list of {"role", "content"} messages.'),
    ('[1, 2]', "The request must be a JSON object in OpenAI's chat completion format."),
    ('{"messages": [', "The request body must be JSON in OpenAI's chat completion format."),
])
def test_v1_malformed_requests_say_what_to_change(app_server, body, message):
    assert message in v1_refusal(v1_raw(app_server.url, body))["message"]


def test_v1_a_file_that_fails_as_the_answer_reads_it_keeps_its_status(app_server, tmp_path):
    """A damaged image passes the header check but not the decode: refused as the page refuses it."""
    import base64

    path = make_image(tmp_path / "cut.png", (320, 240))
    data = path.read_bytes()
    url = "data:image/png;base64," + base64.b64encode(data[:len(data) // 2]).decode()
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": "What?"}]}], "max_tokens": 2}
    error = v1_refusal(httpx.post(app_server.url + "v1/chat/completions", json=body, timeout=60))
    assert error["message"] == "image1.png is truncated or corrupt."
    with httpx.stream("POST", app_server.url + "v1/chat/completions", json={**body, "stream": True},
                      timeout=60) as events:
        lines = [line for line in events.iter_lines() if line.startswith("data: ")]
    assert json.loads(lines[0][6:])["error"]["message"] == "image1.png is truncated or corrupt."
    assert lines[-1] == "data: [DONE]"
    api = openai.OpenAI(base_url=app_server.url + "v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIError) as caught:  # how the openai client tells it
        list(api.chat.completions.create(model=app_server.model, stream=True, **body))
    assert caught.value.message == "image1.png is truncated or corrupt."


def test_v1_an_image_with_malformed_metadata_still_opens(app_server, tmp_path):
    import base64

    path = make_image(tmp_path / "exif.jpg", (320, 240), exif=b"Exif\x00\x00\x00\x01\x02\x03")
    url = "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
            "max_tokens": 2, "mm_processor_kwargs": {"max_dynamic_patch": 1}}
    reply = httpx.post(app_server.url + "v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1
