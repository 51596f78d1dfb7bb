"""In front of gradio's routes: one answer at a time per client, no answer decoded for a client that
has left, and uploads of bounded size.

An ASGI middleware over gradio's own routes, because what it needs happens before any handler runs:
- A join (`/gradio_api/queue/join`) for an answer is refused while the same client (gradio's
  session) has an answer queued or still streaming. Without this, one client can queue hundreds.
- `/gradio_api/reset`, which both gradio clients send to cancel an event once they know its id, is a
  no-op in gradio 6. gradio_client's `job.cancel()` often comes before the join has an id, so its
  `/cancel` names none and the job ran for nobody. Here a reset ends the event: removed from the
  queue, or closed at its next yield (which stops the decode).
- An upload (`/gradio_api/upload`) may carry as many files as a chat may hold, and their sizes
  together as many times the file limit; gradio itself takes 1,000 files a request.
A closed stream (a tab closed, a client gone) is gradio's own: it drops that session's events.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import time

from gradio.server_messages import ProcessCompletedMessage
from starlette.responses import JSONResponse

BUSY = ("You already have an answer on the way. Wait for it to finish, or press Stop, "
        "before asking again.")
ENDING_GRACE_S = 1.0  # a client's previous answer may still be closing when its next join arrives


class UploadTooLarge(Exception):
    """Raised from `receive` when an upload passes its limits; answered with a 413."""


class RequestGuard:
    """Middleware for the answer events of one gradio concurrency group (`concurrency_id`), and for
    uploads of at most `max_files` files of `max_file_bytes` each."""

    def __init__(self, app, concurrency_id: str, max_files: int, max_file_bytes: int):
        self.app = app
        self.concurrency_id = concurrency_id
        self.max_files, self.max_file_bytes = max_files, max_file_bytes
        # events their clients reset (Stop, job.cancel()): ended for the client, though one may still
        # be closing (a ZeroGPU worker stops at its next yield); kept a minute, by reset time
        self.reset_at: dict[str, float] = {}

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" and scope.get("method") == "POST" else ""
        if path.endswith("/gradio_api/upload"):
            return await self._upload(scope, receive, send)
        if not path.endswith(("/gradio_api/queue/join", "/gradio_api/reset")):
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if isinstance(request, dict):
            server = scope["app"]
            if path.endswith("/reset") and isinstance(request.get("event_id"), str):
                self._forget_old_resets()
                self.reset_at[request["event_id"]] = time.monotonic()
                await _end_event(server.get_blocks()._queue, request["event_id"])
            elif path.endswith("/join") and await self._refused(server, request):
                api_client = (b"x-gradio-user", b"api") in scope.get("headers", [])
                return await _busy_reply(server, request, api_client)(scope, receive, send)
        await self.app(scope, _replay(body, receive), send)

    async def _upload(self, scope, receive, send):
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        boundary = re.search(r'boundary="?([^";]+)', headers.get("content-type", ""))
        if boundary is None:  # gradio refuses it itself
            return await self.app(scope, receive, send)
        delimiter = b"--" + boundary.group(1).encode("latin-1")
        max_bytes = self.max_files * (self.max_file_bytes + 64 * 1024)  # a part's headers are small
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > max_bytes:  # anything else: counted as it streams
            return await _too_large(self.max_files, self.max_file_bytes)(scope, receive, send)
        seen, parts, tail = 0, 0, b""

        async def metered():
            nonlocal seen, parts, tail
            message = await receive()
            chunk = message.get("body", b"")
            seen += len(chunk)
            window = tail + chunk  # a delimiter may straddle two chunks
            parts += window.count(delimiter) - tail.count(delimiter)
            tail = window[-len(delimiter):]
            if seen > max_bytes or parts > self.max_files + 1:  # the last delimiter closes the form
                raise UploadTooLarge
            return message

        started = False

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, metered, watched_send)
        except UploadTooLarge:
            if not started:
                await _too_large(self.max_files, self.max_file_bytes)(scope, receive, send)

    async def _refused(self, server, request: dict) -> bool:
        blocks, session = server.get_blocks(), request.get("session_hash")
        fn = blocks.fns.get(request.get("fn_index")) if isinstance(request.get("fn_index"), int) else None
        if fn is None or fn.concurrency_id != self.concurrency_id or not isinstance(session, str):
            return False
        ends = time.monotonic() + ENDING_GRACE_S
        while self._answering(server, session):
            if time.monotonic() > ends:
                return True
            await asyncio.sleep(0.05)
        return False

    def _forget_old_resets(self) -> None:
        old = time.monotonic() - 60.0
        self.reset_at = {event_id: at for event_id, at in self.reset_at.items() if at > old}

    def _answering(self, server, session: str) -> bool:
        """Whether `session` has an answer queued, or running and not yet at its end."""
        queue = server.get_blocks()._queue
        waiting = queue.event_queue_per_concurrency_id.get(self.concurrency_id)
        if waiting and any(event.session_hash == session for event in waiting.queue):
            return True
        # gradio stores a generator's iterator per event, and None once it has run to its end
        return any(event.session_hash == session and event.concurrency_id == self.concurrency_id
                   and event._id not in self.reset_at
                   and server.iterators.get(event._id, "not started") is not None
                   for job in queue.active_jobs if job for event in job)


async def _end_event(queue, event_id: str) -> None:
    """What gradio's /cancel does for an event it can name: out of the queue, or closed at its next
    yield; and its client told it is complete, so that client's stream can close once idle."""
    event = queue.event_ids_to_events.get(event_id)
    await queue.clean_events(event_id=event_id)
    session = event.session_hash if event else None
    if session in queue.pending_messages_per_session and event_id in queue.pending_event_ids_session.get(session, ()):
        queue.pending_messages_per_session[session].put_nowait(
            ProcessCompletedMessage(output={}, success=True, event_id=event_id))


def _busy_reply(server, request: dict, api_client: bool) -> JSONResponse:
    """A refused join, in the form each client shows: gradio_client (which marks its requests
    `x-gradio-user: api`) raises a ValidationError from a validator's reply; the page toasts a text."""
    if not api_client:
        return JSONResponse({"detail": BUSY}, status_code=422)
    fn = server.get_blocks().fns[request["fn_index"]]
    first = next(iter(inspect.signature(fn.fn).parameters), "message")
    refusal = {"__type__": "validate", "is_valid": False, "message": BUSY, "parameter_name": first}
    return JSONResponse({"detail": [refusal]}, status_code=422)


def _too_large(max_files: int, max_file_bytes: int) -> JSONResponse:
    return JSONResponse({"detail": f"Upload at most {max_files} files at a time, each up to "
                                   f"{max_file_bytes // 2**20} MB."}, status_code=413)


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    """A `receive` that hands the app the body already read, then the client's later messages."""
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
