"""The remote backend: answers from an OpenAI-compatible server (vLLM with this project's plugin).

`ServerMenu` is the second implementation of `backend.Backend` (beside the native `ModelMenu`), and
`ServerModel` of `backend.ChatModel`: the faces cannot tell them apart. Images are checked and opened by media.py as
for the native engine, and sent as lossless PNG data URLs, so the server tiles the same pixels.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from . import media
from .backend import Progress, no_progress
from .config import LIMITS, GenerationSettings, Limits
from .conversation import Message
from .errors import UserError

UNREACHABLE = ("The model server at {host} does not answer. Check that it runs and that this address is right "
               "(--server / EAGLE_SERVER).")
REFUSED = ("The model server refused this message: it holds more than the server takes (images per message, "
           "or its context length). Send fewer images, or lower Max tiles, and try again.")
NOT_SERVED = "The model server does not serve {model} now. Pick another model, or reload the page."
FAILED = "The model server failed on this answer. Try again; if it goes on failing, its log says why."
TILE_SIZE = 448  # every Eagle2 checkpoint's tile (force_image_size): video frames are sent at it


class ServerError(UserError):
    """What went wrong on the model server, said for the user."""

    status = 502


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

    def model(self, name: str) -> ServerModel:
        return self._models[name]

    def status(self, name: str) -> str:
        return f"served by the model server at {self.host}"

    @contextmanager
    def use(self, name: str, progress: Callable[[float, str], None] | None = None) -> Iterator[ServerModel]:
        yield self.model(name)


class ServerModel:
    """One model of the server."""

    loaded = True  # the server loaded it: nothing to load here

    def __init__(self, menu: ServerMenu, name: str):
        self.menu, self.name = menu, name

    def first_word_estimate(self, images, video, settings) -> None:
        return None  # the server's speed is not known here

    def cpu_default_tiles(self) -> None:
        return None

    def chat(self, messages: list[Message], system: str, settings: GenerationSettings | None = None,
             cancel: threading.Event | None = None, progress: Progress | None = None) -> ServerAnswer:
        settings = settings or GenerationSettings()
        request = ServerRequest.of(messages, system, settings.num_frames, self.menu.limits)
        return ServerAnswer(self, request, settings, cancel or threading.Event(), progress)


def _png_base64(image, compress_level: int) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def image_url(path: str, limits: Limits) -> str:
    """The image as media.py opens it (checked, upright, RGB), as a lossless PNG data URL."""
    return "data:image/png;base64," + _png_base64(media.open_image(path, limits), compress_level=1)


def video_url(clip: media.VideoClip) -> str:
    """A clip's frames as vLLM's frame-list video: lossless PNGs (PIL reads them whatever type the URL
    names) after `data:video/jpeg;base64,`, comma-separated."""
    return "data:video/jpeg;base64," + ",".join(_png_base64(frame, compress_level=6) for frame in clip.frames)


@dataclass
class ServerRequest:
    """The conversation in OpenAI's chat format, and each video's frame times (in prompt order)."""

    messages: list[dict]
    video_timestamps: list[list[float]]

    @classmethod
    def of(cls, messages: list[Message], system: str, num_frames: int, limits: Limits) -> ServerRequest:
        """The system prompt always sent (an empty one too, as the engine writes it); images, then the
        video, then the text, as the app lays them out. Frames are sampled here as the engine samples
        them, at the tile size, so the server tiles the same pixels."""
        out, times = [{"role": "system", "content": system}], []
        for message in messages:
            if message.role == "assistant":
                out.append({"role": "assistant", "content": message.text})
                continue
            parts = [{"type": "image_url", "image_url": {"url": image_url(p, limits)}} for p in message.images]
            if message.video:
                clip = media.sample_video(message.video, num_frames, limits, frame_size=(TILE_SIZE, TILE_SIZE))
                parts.append({"type": "video_url", "video_url": {"url": video_url(clip)}})
                times.append(clip.timestamps)
            out.append({"role": "user", "content": [*parts, {"type": "text", "text": message.text}]})
        return cls(out, times)


class ServerAnswer:
    """Iterate for the answer's text deltas, streamed from the server; afterwards, like the engine's
    Generation: text, token ids, finish reason and timings. Cancelling (or closing) closes the stream,
    and vLLM aborts a request whose client went away."""

    def __init__(self, model: ServerModel, request: ServerRequest, settings: GenerationSettings,
                 cancel: threading.Event, progress: Progress | None):
        self.model, self.request, self.settings, self.cancel = model, request, settings, cancel
        self.progress = progress or no_progress
        self.text, self.prompt_token_ids, self.token_ids, self.finish_reason = "", [], [], None
        self.num_frames = sum(map(len, request.video_timestamps))
        self.num_tiles = [1] * self.num_frames  # a frame is one tile; images are tiled on the server, unseen here
        self.timings: dict = {}

    def _request(self) -> dict:
        s = self.settings
        # the plugin's tiling and frame times; every frame sent kept (vLLM keeps 32 otherwise): these two
        # need the server's --trust-request-mm-kwargs
        processing = {"max_dynamic_patch": s.max_tiles, "video_timestamps": self.request.video_timestamps}
        extra = {"top_k": s.top_k or -1, "repetition_penalty": s.repetition_penalty, "return_token_ids": True,
                 "mm_processor_kwargs": processing, "media_io_kwargs": {"video": {"num_frames": -1}}}
        return dict(model=self.model.name, messages=self.request.messages, stream=True, temperature=s.temperature,
                    top_p=s.top_p, max_tokens=s.max_new_tokens, seed=s.seed, extra_body=extra)

    def __iter__(self) -> Iterator[str]:
        from openai import APIConnectionError, APIStatusError, NotFoundError

        self.progress(None, "sending to the model server…")
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
                self.prompt_token_ids = getattr(chunk, "prompt_token_ids", None) or self.prompt_token_ids
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
