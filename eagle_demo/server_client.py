"""The remote backend: answers from an OpenAI-compatible server (vLLM with this project's plugin).

`ServerMenu` stands where the native `ModelMenu` stands, and `ServerModel.chat` where `Engine.chat`
does: the handlers and the UI cannot tell them apart. Images are checked and opened by media.py as
for the native engine, and sent as lossless PNG data URLs, so the server tiles the same pixels.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from . import media
from .config import LIMITS, GenerationSettings, Limits
from .conversation import Message

UNREACHABLE = ("The model server at {host} does not answer. Check that it runs and that this address is right "
               "(--server / EAGLE_SERVER).")
REFUSED = ("The model server refused this message: it holds more than the server takes (images per message, "
           "or its context length). Send fewer images, or lower Max tiles, and try again.")
NOT_SERVED = "The model server does not serve {model} now. Pick another model, or reload the page."
FAILED = "The model server failed on this answer. Try again; if it goes on failing, its log says why."


class ServerError(ValueError):
    """What went wrong on the model server, said for the user (the handlers show ValueError texts)."""


def _client(url: str):
    from openai import OpenAI  # imported only by the server path

    # no retries: a refused or failed request is the user's to retry, with a message saying why
    return OpenAI(base_url=url.rstrip("/") + "/v1", api_key="unused", max_retries=0, timeout=600)


class ServerMenu:
    """The server's models (its /v1/models), as the app's model menu."""

    def __init__(self, url: str, limits: Limits = LIMITS):
        self.url, self.host, self.limits = url, urlsplit(url).netloc or url, limits
        self.client = _client(url)
        try:
            self.names = [model.id for model in self.client.models.list()]
        except Exception as e:  # openai's connection and status errors
            raise ServerError(UNREACHABLE.format(host=self.host)) from e
        self._models = {name: ServerModel(self, name) for name in self.names}

    def checkpoint(self, name: str) -> str:
        return name

    def engine(self, name: str) -> ServerModel:
        return self._models[name]

    def status(self, name: str) -> str:
        return f"served by the model server at {self.host}"

    @contextmanager
    def use(self, name: str, progress: Callable[[float, str], None] | None = None) -> Iterator[ServerModel]:
        yield self.engine(name)


class ServerModel:
    """One served model, with the parts of the Engine's interface the handlers use."""

    model = "remote"  # never None: nothing to load here

    def __init__(self, menu: ServerMenu, name: str):
        self.menu, self.name = menu, name

    def first_word_estimate(self, images, video, settings) -> None:
        return None  # the server's speed is not known here

    def cpu_default_tiles(self) -> None:
        return None

    def chat(self, messages: list[Message], system: str, settings: GenerationSettings | None = None,
             cancel: threading.Event | None = None, progress: Callable[[str], None] | None = None) -> ServerAnswer:
        if any(m.video for m in messages):
            raise ServerError("Videos are not sent to a model server yet: ask about images, or run the app "
                              "with its own model (without --server).")
        request = request_messages(messages, system, self.menu.limits)
        return ServerAnswer(self, request, settings or GenerationSettings(), cancel or threading.Event(), progress)


def image_url(path: str, limits: Limits) -> str:
    """The image as media.py opens it (checked, upright, RGB), as a lossless PNG data URL."""
    buffer = io.BytesIO()
    media.open_image(path, limits).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def request_messages(messages: list[Message], system: str, limits: Limits) -> list[dict]:
    """The conversation in OpenAI's chat format; the system prompt always sent (an empty one too, as
    the engine writes it), images before the text, as the app lays them out."""
    out = [{"role": "system", "content": system}]
    for message in messages:
        if message.role == "assistant":
            out.append({"role": "assistant", "content": message.text})
            continue
        parts = [{"type": "image_url", "image_url": {"url": image_url(p, limits)}} for p in message.images]
        out.append({"role": "user", "content": [*parts, {"type": "text", "text": message.text}]})
    return out


class ServerAnswer:
    """Iterate for the answer's text deltas, streamed from the server; afterwards, like the engine's
    Generation: text, token ids, finish reason and timings. Cancelling (or closing) closes the stream,
    and vLLM aborts a request whose client went away."""

    num_frames = 0

    def __init__(self, model: ServerModel, messages: list[dict], settings: GenerationSettings,
                 cancel: threading.Event, progress: Callable[[str], None] | None):
        self.model, self.messages, self.settings, self.cancel = model, messages, settings, cancel
        self.progress = progress or (lambda stage: None)
        self.text, self.token_ids, self.finish_reason = "", [], None
        self.num_tiles: list[int] = []  # tiled on the server: not known here
        self.timings: dict = {}

    def _request(self) -> dict:
        s = self.settings
        extra = {"top_k": s.top_k or -1, "repetition_penalty": s.repetition_penalty, "return_token_ids": True,
                 "mm_processor_kwargs": {"max_dynamic_patch": s.max_tiles}}  # needs --trust-request-mm-kwargs
        return dict(model=self.model.name, messages=self.messages, stream=True, temperature=s.temperature,
                    top_p=s.top_p, max_tokens=s.max_new_tokens, seed=s.seed, extra_body=extra)

    def __iter__(self) -> Iterator[str]:
        from openai import APIConnectionError, APIStatusError, NotFoundError

        self.progress("sending to the model server…")
        start = time.perf_counter()
        try:
            stream = self.model.menu.client.chat.completions.create(**self._request())
        except NotFoundError as e:
            raise ServerError(NOT_SERVED.format(model=self.model.name)) from e
        except APIStatusError as e:
            raise ServerError(REFUSED if e.status_code in (400, 413, 422) else FAILED) from e
        except APIConnectionError as e:
            raise ServerError(UNREACHABLE.format(host=self.model.menu.host)) from e
        first = last = None
        try:
            for chunk in stream:
                if self.cancel.is_set():
                    self.finish_reason = "cancelled"
                    return
                for choice in chunk.choices:
                    self.token_ids += getattr(choice, "token_ids", None) or []
                    self.finish_reason = choice.finish_reason or self.finish_reason
                    delta = choice.delta.content or ""
                    if delta:
                        last = time.perf_counter()
                        first = first or last
                        self.text += delta
                        yield delta
        except APIConnectionError as e:
            raise ServerError(UNREACHABLE.format(host=self.model.menu.host)) from e
        finally:
            stream.close()  # also when the caller stops early: the server ends the request
            if first is not None:
                self.timings["ttft_s"] = first - start
                if last > first and len(self.token_ids) > 1:
                    self.timings["decode_tokens_per_s"] = (len(self.token_ids) - 1) / (last - first)
