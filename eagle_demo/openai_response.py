"""A /v1 answer on its way back: the `Ticket` between the route and the queued event that makes the
answer, and `Answering`, the response that sends it in OpenAI's exact shapes (a chat.completion, or
chat.completion.chunk server-sent events ending with `data: [DONE]`) while it watches the client's
connection. Stop strings are applied here: the text is cut before the first one, and the decode ends.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
from starlette.responses import JSONResponse

from .errors import UserError
from .openai_request import ChatRequest, RequestError

ERROR_TYPES = {429: "rate_limit_error", 500: "server_error", 502: "server_error",
               503: "service_unavailable_error"}  # any other status: invalid_request_error
END = object()  # what the event delivers last, when the answer has ended
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]


def error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(error: UserError) -> JSONResponse:
    return JSONResponse(error_body(str(error), error.status, getattr(error, "param", None),
                                   getattr(error, "code", None)), status_code=error.status)


class Ticket:
    """One /v1 answer, between the route that waits for it and the queued event that makes it. It ends
    once: when the event has finished with it, or when its client goes before the event began; then
    its files are deleted and its client may ask again (`release`)."""

    def __init__(self, folder: Path, loop: asyncio.AbstractEventLoop, release: Callable[[], None]):
        self.id = uuid.uuid4().hex
        self.folder, self.release = folder, release
        self.request: ChatRequest | None = None
        self.updates: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self._loop = loop
        self._lock = threading.Lock()
        self._state = "waiting"  # then running, then ended

    def deliver(self, item) -> None:
        """From the event's thread: an AnswerUpdate, a RequestError, then END."""
        self._loop.call_soon_threadsafe(self.updates.put_nowait, item)

    def claim(self) -> bool:
        """For the event: whether the answer is still wanted; it runs from now on."""
        with self._lock:
            if self._state != "waiting":
                return False
            self._state = "running"
            return True

    def abandon(self) -> None:
        """The client has gone (or was refused): a waiting ticket ends now, a running one at the event's
        next update."""
        self.cancel.set()
        with self._lock:
            waiting = self._state == "waiting"
            self._state = "ended" if waiting else self._state
        if waiting:
            self.end()

    def end(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.release()


class StopText:
    """The answer's text as the client may be sent it: cut before the first stop string, and while
    more may come, short of an end that could begin one."""

    def __init__(self, stops: list[str]):
        self.stops, self.text, self.sent, self.checked, self.stopped = stops, "", 0, 0, False

    def update(self, text: str) -> str:
        """The answer so far is `text`: what may be sent now."""
        self.text = text
        if not self.stops:
            return self._upto(len(text))
        found = [i for s in self.stops if (i := text.find(s, max(0, self.checked - len(s) + 1))) >= 0]
        self.checked = len(text)
        if found:
            self.text, self.stopped = text[:min(found)], True
            return self._upto(len(self.text))
        held = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return self._upto(len(text) - held)

    def rest(self) -> str:
        return self._upto(len(self.text))

    def _upto(self, end: int) -> str:
        new, self.sent = self.text[self.sent:max(end, self.sent)], max(end, self.sent)
        return new


class Answering:
    """The ASGI response of a queued /v1 request: the whole answer, or its stream. A client that goes
    (the connection closed) ends the request: out of gradio's queue, or stopped at the next token."""

    def __init__(self, ticket: Ticket, event_id: str, queue, session: str, forget: Callable[[str], None]):
        self.ticket, self.event_id, self.queue, self.session, self.forget = ticket, event_id, queue, session, forget
        self.request: ChatRequest = ticket.request
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.text = StopText(self.request.stop)
        self.prompt_token_ids: list[int] = []
        self.token_ids: list[int] = []
        self.finish_reason = "stop"

    async def __call__(self, scope, receive, send) -> None:
        finished = False
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_until_disconnected, receive, group.cancel_scope)
                await (self._stream(send) if self.request.stream else self._whole(send))
                finished = True
                group.cancel_scope.cancel()
        except OSError:  # the client went while a chunk was being sent
            pass
        finally:
            with anyio.CancelScope(shield=True):
                if not finished:
                    self.ticket.abandon()
                    self.forget(self.ticket.id)
                    await self.queue.clean_events(event_id=self.event_id)  # out of the queue, if still in it
                self._tidy()

    async def _updates(self) -> AsyncIterator[str]:
        """The text that may be sent, update by update, keeping the token ids and why it ended; raises
        the RequestError the event delivered. Ends the decode at a stop string."""
        while (item := await self.ticket.updates.get()) is not END:
            if isinstance(item, RequestError):
                raise item
            if item.status:
                continue
            self.prompt_token_ids = item.prompt_token_ids or self.prompt_token_ids
            self.token_ids += item.token_ids
            if item.stats:
                self.finish_reason = "length" if item.stats.get("finish_reason") == "length" else "stop"
            yield self.text.update(item.text)
            if self.text.stopped:
                self.ticket.cancel.set()
                self.finish_reason = "stop"
                return
        yield self.text.rest()

    async def _whole(self, send) -> None:
        try:
            async for _ in self._updates():
                pass
        except RequestError as e:
            return await error_response(e)({"type": "http"}, None, send)
        choice = {"index": 0, "message": {"role": "assistant", "content": self.text.text}, "logprobs": None,
                  "finish_reason": self.finish_reason, **self._ids("token_ids", self.token_ids)}
        body = {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.request.model,
                "choices": [choice], "usage": self._usage(), **self._ids("prompt_token_ids", self.prompt_token_ids)}
        await JSONResponse(body)({"type": "http"}, None, send)

    async def _stream(self, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        began, ids_sent = False, 0
        try:
            async for new in self._updates():
                if not began:  # the role first, as OpenAI sends it; vLLM's prompt ids with it
                    await self._event(send, self._chunk({"role": "assistant", "content": ""},
                                                        **self._ids("prompt_token_ids", self.prompt_token_ids)))
                    began = True
                ids = self.token_ids[ids_sent:]
                if new or (ids and self.request.return_token_ids):
                    await self._event(send, self._chunk({"content": new}, token_ids=ids))
                    ids_sent = len(self.token_ids)
            await self._event(send, self._chunk({}, finish=self.finish_reason))
            if self.request.include_usage:
                await self._event(send, {**self._head(), "choices": [], "usage": self._usage()})
        except RequestError as e:
            await self._event(send, error_body(str(e), e.status, e.param, e.code))
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    # ------------------------------------------------------------------ shapes
    def _head(self) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.request.model}

    def _chunk(self, delta: dict, finish: str | None = None, token_ids: list[int] | None = None, **extra) -> dict:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish,
                  **self._ids("token_ids", token_ids or [])}
        usage = {"usage": None} if self.request.include_usage else {}
        return {**self._head(), "choices": [choice], **usage, **extra}

    def _ids(self, name: str, ids: list[int]) -> dict:
        return {name: ids} if self.request.return_token_ids else {}

    def _usage(self) -> dict:
        prompt, completion = len(self.prompt_token_ids), len(self.token_ids)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    @staticmethod
    async def _event(send, data: dict) -> None:
        body = b"data: " + json.dumps(data).encode() + b"\n\n"
        await send({"type": "http.response.body", "body": body, "more_body": True})

    def _tidy(self) -> None:
        """What gradio keeps for a queued event until a page's stream reads it: nothing reads it here."""
        messages = self.queue.pending_messages_per_session.get(self.session)
        while messages is not None and not messages.empty():
            messages.get_nowait()
        events = self.queue.pending_event_ids_session.get(self.session)
        if events is not None:
            events.discard(self.event_id)
            if not events:
                self.queue.pending_event_ids_session.pop(self.session, None)


async def _until_disconnected(receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
