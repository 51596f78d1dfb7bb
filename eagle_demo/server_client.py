"""The remote backend: answers from an OpenAI-compatible server (vLLM with this project's plugin).

`ServerMenu` is the second implementation of `backend.Backend` (beside the native `ModelMenu`), and
`ServerModel` of `backend.ChatModel`: the faces cannot tell them apart. A conversation passes the same checks as for
the native engine (conversation.checked_turns, then media.py on each file) before anything is sent. Images go as
their files' own bytes, which the plugin decodes with media.py as the engine does (a big JPEG at reduced scale), so
the server tiles the same pixels; videos as the frames the engine would sample.
"""

from __future__ import annotations

import base64
import io
import mimetypes
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from . import media
from .backend import Progress, no_progress
from .config import LIMITS, GenerationSettings, Limits
from .conversation import Message, Turn, checked_turns
from .errors import UserError

UNREACHABLE = ("The model server at {host} does not answer. Check that it runs and that this address is right "
               "(--server / EAGLE_SERVER).")
REFUSED = ("The model server refused this message: it holds more than the server takes ({context} of context, "
           "and its own number of images per message). Send fewer images or video frames, lower Max tiles, or "
           "Clear the chat, and try again.")
NOT_SERVED = "The model server does not serve {model} now. Pick another model, or reload the page."
FAILED = "The model server failed on this answer. Try again; if it goes on failing, its log says why."
# The tokens the engine ends an answer at (Eagle2's turn markers, its tokenizer's eos and pad): vLLM ends
# at the eos alone unless told
STOP_TOKENS = "<|im_end|><|im_start|><|endoftext|>"
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
            served = list(self.client.models.list())
        except Exception as e:  # openai's connection and status errors
            raise ServerError(UNREACHABLE.format(host=self.host)) from e
        self.names = [model.id for model in served]
        # vLLM names each model's context (--max-model-len): the limit a refusal tells the user
        self._models = {model.id: ServerModel(self, model.id, getattr(model, "max_model_len", None))
                        for model in served}

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

    def __init__(self, menu: ServerMenu, name: str, context_tokens: int | None = None):
        self.menu, self.name, self.context_tokens = menu, name, context_tokens
        self._stop_token_ids: list[int] | None = None

    def stop_token_ids(self) -> list[int]:
        """The ids of STOP_TOKENS in the server's tokenizer (vLLM's /tokenize), read once; none from a
        server without that endpoint, or whose tokenizer lacks them."""
        if self._stop_token_ids is None:
            try:
                reply = httpx.post(self.menu.url.rstrip("/") + "/tokenize", timeout=60,
                                   json={"model": self.name, "prompt": STOP_TOKENS, "add_special_tokens": False})
            except httpx.HTTPError as e:
                raise ServerError(UNREACHABLE.format(host=self.menu.host)) from e
            try:
                tokens = reply.json().get("tokens", []) if reply.status_code == 200 else []
            except ValueError:  # not JSON: not vLLM's endpoint
                tokens = []
            self._stop_token_ids = tokens if len(tokens) == STOP_TOKENS.count("<|") else []
        return self._stop_token_ids

    def first_word_estimate(self, images, video, settings) -> None:
        return None  # the server's speed is not known here

    def cpu_default_tiles(self) -> None:
        return None

    def chat(self, messages: list[Message], system: str, settings: GenerationSettings | None = None,
             cancel: threading.Event | None = None, progress: Progress | None = None) -> ServerAnswer:
        settings = settings or GenerationSettings()
        turns = checked_turns(messages, system, self.menu.limits)
        request = ServerRequest.of(turns, system, settings.num_frames, self.menu.limits)
        return ServerAnswer(self, request, settings, cancel or threading.Event(), progress)

    def refused(self) -> str:
        return REFUSED.format(context=f"{self.context_tokens:,} tokens" if self.context_tokens else "its length")


def _png_base64(image, compress_level: int) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def image_url(path: str, limits: Limits) -> str:
    """The image file's own bytes as a data URL, once media.py has opened it as the engine would (the same
    checks, the same messages). The plugin decodes those bytes with media.py, as the engine decodes the file."""
    media.open_image(path, limits)
    kind = mimetypes.guess_type(path)[0] or "application/octet-stream"  # vLLM reads the format from the bytes
    return f"data:{kind};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


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
    def of(cls, turns: list[Turn], system: str, num_frames: int, limits: Limits) -> ServerRequest:
        """The checked turns (conversation.checked_turns): the system prompt always sent (an empty one
        too, as the engine writes it); each question's images, then its video, then its text, as the
        app lays them out. Frames are sampled here as the engine samples them, at the tile size, so the
        server tiles the same pixels."""
        out, times = [{"role": "system", "content": system}], []
        for turn in turns:
            question = turn.question
            parts = [{"type": "image_url", "image_url": {"url": image_url(p, limits)}} for p in question.images]
            if question.video:
                clip = media.sample_video(question.video, num_frames, limits, frame_size=(TILE_SIZE, TILE_SIZE))
                parts.append({"type": "video_url", "video_url": {"url": video_url(clip)}})
                times.append(clip.timestamps)
            out.append({"role": "user", "content": [*parts, {"type": "text", "text": question.text}]})
            if turn.answer is not None:
                out.append({"role": "assistant", "content": turn.answer})
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
        # the engine's repetition penalty (over the answer alone) is the plugin's; vLLM's own covers the prompt too
        extra = {"top_k": s.top_k or -1, "vllm_xargs": {"answer_repetition_penalty": s.repetition_penalty},
                 "return_token_ids": True,
                 "stop_token_ids": self.model.stop_token_ids(), "mm_processor_kwargs": processing,
                 "media_io_kwargs": {"video": {"num_frames": -1}}}
        return dict(model=self.model.name, messages=self.request.messages, stream=True, temperature=s.temperature,
                    top_p=s.top_p, max_tokens=s.max_new_tokens, seed=s.seed, extra_body=extra)

    def _failure(self, error: Exception) -> ServerError:
        """What an error of the openai client means for the user, in one of this module's messages."""
        from openai import APIConnectionError, APIStatusError, NotFoundError

        if isinstance(error, NotFoundError):
            return ServerError(NOT_SERVED.format(model=self.model.name), 404)
        if isinstance(error, APIStatusError) and error.status_code in (400, 413, 422):
            return ServerError(self.model.refused(), 413)  # this message, as it is: not the server's fault
        if isinstance(error, APIConnectionError):
            return ServerError(UNREACHABLE.format(host=self.model.menu.host))
        return ServerError(FAILED)

    def __iter__(self) -> Iterator[str]:
        from openai import APIError

        self.progress(None, "sending to the model server…")
        start = time.perf_counter()
        try:
            stream = self.model.menu.client.chat.completions.create(**self._request())
        except APIError as e:  # every error the openai client raises (status, connection, a malformed reply)
            raise self._failure(e) from e
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
        except APIError as e:  # also an error the server sends within the stream
            raise self._failure(e) from e
        finally:
            stream.close()  # also when the caller stops early: the server ends the request
            if first is not None:
                self.timings["ttft_s"] = first - start
                if last > first and len(self.token_ids) > 1:
                    self.timings["decode_tokens_per_s"] = (len(self.token_ids) - 1) / (last - first)
