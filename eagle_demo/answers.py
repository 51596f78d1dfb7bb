"""The model side of every answer, the page's and the APIs': load the model if needed, then stream.

Plain data in (the conversation, a model's name, the system prompt, `GenerationSettings`) and plain
data out (`AnswerUpdate`s), so that on ZeroGPU it runs in the GPU worker, which pickles both ways.
Errors leave as data too, already in their two kinds (see errors.py): a `UserError`'s message as
it is, anything else as the reference message. No Gradio here.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .backend import Backend
from .chat_history import hide_paths
from .config import GenerationSettings
from .conversation import Message
from .errors import UserError, server_fault
from .models import LoadError

if TYPE_CHECKING:  # the engine's modules import torch: the page starts without it
    from .generation import Request

log = logging.getLogger(__name__)

_DONE = object()


@dataclass
class AnswerUpdate:
    """One step of an answer: its text so far and its tokens, or what runs now (`status`). The last
    update holds the answer's `stats`, or, for an answer that failed, the `error` to show and its
    HTTP status."""

    text: str = ""
    tokens: int = 0
    status: str | None = None
    stats: dict | None = None
    error: str | None = None
    error_status: int = 500
    token_ids: list[int] = field(default_factory=list)  # the answer's tokens this update adds
    prompt_token_ids: list[int] | None = None  # with the answer's first update that holds text (or its last)


def unknown_model(names: list[str]) -> UserError:
    return UserError(f"Unknown model; this app serves {', '.join(names)}.", 404)


def on_own_thread(work: Callable[[Callable[[Any], None], threading.Event], None]) -> Iterator:
    """Yield what `work(emit, cancel)` emits, running it on one thread of its own.

    The work (loading, decoding) then never waits on the web server. Closing this generator (Stop,
    a client's cancel, ZeroGPU's stop at the next yield) sets `cancel`, and the decode loop ends
    after its current token, freeing the engine.
    """
    items: queue.Queue = queue.Queue()
    cancel = threading.Event()

    def run():
        try:
            work(items.put, cancel)
        except BaseException as e:  # handed to the consumer, who raises it
            items.put(e)
        finally:
            items.put(_DONE)

    worker = threading.Thread(target=run, name="eagle2-decode", daemon=True)
    worker.start()
    try:
        while (item := items.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.set()
        worker.join(timeout=30)  # the engine stops after the token it is on


def answer_stats(model: str, answer, weights: str | None = None) -> dict:
    """What the export and the answer's footer tell of a finished answer (a backend.Answer);
    `weights`: "4-bit weights" and the like, for a quantised model."""
    return {"model": model, **({"weights": weights} if weights else {}), "tokens": len(answer.token_ids),
            "ttft_s": answer.timings.get("ttft_s"),
            "tokens_per_s": answer.timings.get("decode_tokens_per_s"),
            "image_tiles": sum(answer.num_tiles) - answer.num_frames, "frames": answer.num_frames,
            "reused_tokens": answer.timings.get("reused_tokens"), "finish_reason": answer.finish_reason}


class AnswerStream:
    """`stream(turns, model, system, settings)`: the updates of one answer by the `backend`'s model
    of that name. `gpu` is `spaces.GPU` on ZeroGPU: the answer's files are then read, tiled and put
    into its prompt here, outside the lease, and only the prepared request (plain data, its tiles
    as uint8) goes to the GPU worker, which is asked up front for the seconds of GPU its tiles and
    tokens may take."""

    def __init__(self, backend: Backend, gpu: Callable | None = None):
        self.backend = backend
        self._on_gpu = None if gpu is None else gpu(duration=self._gpu_seconds)(self._prepared_side)

    def stream(self, turns: list[Message], model: str, system: str,
               settings: GenerationSettings) -> Iterator[AnswerUpdate]:
        """The answer's updates; closing this generator stops the decode (in ZeroGPU's worker: at
        its next yield)."""
        if model not in self.backend.names:  # never load whatever a client names
            error = unknown_model(self.backend.names)
            yield AnswerUpdate(error=str(error), error_status=error.status)
            return
        if self._on_gpu is None:
            updates = self._answered(turns, model, lambda chat_model, cancel, stage: chat_model.chat(
                turns, system, settings, cancel=cancel, progress=stage))
        else:
            yield AnswerUpdate(status=self.backend.status(model))
            try:
                with self.backend.use(model) as engine:  # ZeroGPU loads every model at start-up
                    request = engine.prepare(turns, system, settings)
            except Exception as e:
                yield failed(e, model, turns)
                return
            updates = self._on_gpu(request, model)
        with closing(updates):
            yield from updates

    def _gpu_seconds(self, request: Request, model: str) -> int:
        """Counts every tile and frame of the request: a new worker has none of their features yet."""
        return self.backend.gpu_seconds(model, request.max_new_tokens, sum(request.prompt.num_tiles))

    def _prepared_side(self, request: Request, model: str) -> Iterator[AnswerUpdate]:
        """The answer to a prepared request, in ZeroGPU's worker."""
        yield from self._answered([], model, lambda engine, cancel, stage: engine.answer(request, cancel, stage))

    def _answered(self, turns: list[Message], model: str, start: Callable) -> Iterator[AnswerUpdate]:
        """The updates of the Generation `start(chat_model, cancel, stage)` begins, once `model` is
        loaded; `turns`: the files its error messages may name."""
        backend = self.backend

        def work(emit, cancel):
            def loading(fraction, text):
                emit(AnswerUpdate(status=text if fraction is None else f"{text} ({fraction:.0%})"))

            def stage(fraction, text):  # its text counts what is done already
                emit(AnswerUpdate(status=text))

            with backend.use(model, loading) as chat_model:
                emit(AnswerUpdate(status=backend.status(model)))
                answer = start(chat_model, cancel, stage)
                text, sent = "", 0
                for delta in answer:
                    first, text, ids = not text, text + delta, answer.token_ids
                    emit(AnswerUpdate(text=text, tokens=len(ids), token_ids=ids[sent:],
                                      prompt_token_ids=list(answer.prompt_token_ids) if first else None))
                    sent = len(ids)
                emit(AnswerUpdate(text=text, tokens=len(answer.token_ids), token_ids=answer.token_ids[sent:],
                                  prompt_token_ids=None if text else list(answer.prompt_token_ids),
                                  stats=answer_stats(model, answer, getattr(chat_model, "weights", None))))

        try:
            yield from on_own_thread(work)
        except Exception as e:
            yield failed(e, model, turns)


def failed(error: Exception, model: str, turns: list[Message]) -> AnswerUpdate:
    """An answer's failure as data: a UserError's words (the user can act on them; a LoadError is
    the operator's too, so it is logged), anything else the reference message."""
    if isinstance(error, UserError):
        if isinstance(error, LoadError):
            log.warning("%s", error)
        return AnswerUpdate(error=hide_paths(str(error), turns), error_status=error.status)
    return AnswerUpdate(error=server_fault(f"answering with {model} failed"))
