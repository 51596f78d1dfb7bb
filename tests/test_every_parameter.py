"""Every public endpoint (`/chat`, `/export`, and the page's `/respond`), every parameter, a corpus
of malformed values, sent raw over HTTP to the real app: each is answered, or refused with the one
message of a fixed set that names that parameter and says what to send. Never gradio's text, a
Python type, an exception or a path; and the app keeps answering."""

from __future__ import annotations

import json
import re

import pytest

from eagle_demo.config import SETTING_RANGES
from tests.test_hostile_values import INTERNAL, call_raw

MALFORMED = ["null", '"abc"', '""', '"\\ud800"', "5", "-1", "true", str(10**30), "NaN", "Infinity", "-Infinity",
             "[]", "{}", '[[[{"a": [1]}]]]', '{"path": "/etc/passwd"}', '["/etc/passwd"]']
CHATBOT = json.dumps([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
# each endpoint's parameters, in order, with a good value for each
ENDPOINTS = {
    "chat": dict(message='"Hi"', images="null", video="null", history="[]", system='"sys"', max_tiles="1",
                 num_frames="4", temperature="0", top_p="1.0", max_new_tokens="4", repetition_penalty="1.0",
                 top_k="0", seed="0", model="null", image="null"),
    "export": dict(history=CHATBOT, model="null", system='"sys"', max_tiles="1", num_frames="4", temperature="0",
                   top_p="1.0", max_new_tokens="4", repetition_penalty="1.0", top_k="0", seed="0"),
}
ENDPOINTS["respond"] = ENDPOINTS["export"]  # the page's Send: the chat so far, then the same settings
FILES = (r"Could not read the request\. Check images, video and image: each must be one of the files uploaded "
         r"to this app")
SURROGATE = "contains characters that are not valid text; remove them and send it again."


def expected(endpoint: str, name: str) -> str:
    """The message (a regex) a refused value of `name` must get."""
    if name in SETTING_RANGES:
        return rf"^{re.escape(SETTING_RANGES[name].label)} must be (a|0 \(greedy\))"
    chat_history = r'^history must be a list of \{"role"'
    return {
        "message": rf"^(The message must be text\.|Type a question or add an image or video\.|The message {SURROGATE})",
        "system": rf"^(The system prompt must be text\.|The system prompt {SURROGATE})",
        "model": r"^Unknown model; this app serves tiny-eagle2\.$",
        "images": FILES, "video": FILES, "image": FILES,
        "history": chat_history if endpoint == "chat" else r"^Could not read the request\. Check history: it must be",
    }[name]


def may_be_answered(endpoint: str, name: str, value: str) -> bool:
    """Values that are good ones: a missing value takes the default (so does the page's empty seed),
    text is text, a whole number in range is one, no images are no images. An export keeps a lone
    surrogate as "?", and the page shows its refusal in the chat, as an answer."""
    if value == "null" or (name, value) in (("seed", '""'), ("images", "[]"), ("history", "[]")):
        return True
    if name == "system" and value == '"\\ud800"':
        return endpoint != "chat"
    if name in ("message", "system"):
        return value in ('"abc"', '""')
    if name in SETTING_RANGES and value == "5":
        return SETTING_RANGES[name].low <= 5 <= SETTING_RANGES[name].high
    return False


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_every_parameter_with_malformed_values(app_server, endpoint):
    good = ENDPOINTS[endpoint]
    problems = []
    for position, name in enumerate(good):
        for value in MALFORMED:
            values = list(good.values())
            values[position] = value
            message = call_raw(app_server.url, values, endpoint)
            if message is None:
                if not may_be_answered(endpoint, name, value):
                    problems.append(f"{endpoint} {name}={value}: answered")
            elif INTERNAL.search(message) or not re.search(expected(endpoint, name), message):
                problems.append(f"{endpoint} {name}={value}: {message}")
    assert not problems, "\n".join(problems)
    assert call_raw(app_server.url, list(good.values()), endpoint) is None  # still answering


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_too_few_values_says_how_many(app_server, endpoint):
    message = call_raw(app_server.url, list(ENDPOINTS[endpoint].values())[:3], endpoint)
    assert message.startswith(f"This endpoint takes {len(ENDPOINTS[endpoint])} values (")
    assert "Send them all, or call it with gradio_client" in message
