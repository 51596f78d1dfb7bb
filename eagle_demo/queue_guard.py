"""Fairness in front of gradio's queue: one answer at a time per client, and no answer decoded for a
client that has left.

An ASGI middleware over gradio's own routes, because what it needs happens before any handler runs:
- A join (`/gradio_api/queue/join`) for an answer is refused while the same client (gradio's
  session) has an answer queued or still streaming. Without this, one client can queue hundreds.
- `/gradio_api/reset`, which both gradio clients send to cancel an event once they know its id, is a
  no-op in gradio 6. gradio_client's `job.cancel()` often comes before the join has an id, so its
  `/cancel` names none and the job ran for nobody. Here a reset ends the event: removed from the
  queue, or closed at its next yield (which stops the decode).
A closed stream (a tab closed, a client gone) is gradio's own: it drops that session's events.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time

from starlette.responses import JSONResponse

BUSY = ("You already have an answer on the way. Wait for it to finish, or press Stop, "
        "before asking again.")
_ENDING_GRACE_S = 1.0  # a client's previous answer may still be closing when its next join arrives


class AnswerGuard:
    """Middleware for the answer events of one gradio concurrency group (`concurrency_id`)."""

    def __init__(self, app, concurrency_id: str):
        self.app = app
        self.concurrency_id = concurrency_id

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "") if scope["type"] == "http" and scope.get("method") == "POST" else ""
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
                await server.get_blocks()._queue.clean_events(event_id=request["event_id"])
            elif path.endswith("/join") and await self._refused(server, request):
                return await _busy_reply(server, request)(scope, receive, send)
        await self.app(scope, _replay(body, receive), send)

    async def _refused(self, server, request: dict) -> bool:
        blocks, session = server.get_blocks(), request.get("session_hash")
        fn = blocks.fns.get(request.get("fn_index")) if isinstance(request.get("fn_index"), int) else None
        if fn is None or fn.concurrency_id != self.concurrency_id or not isinstance(session, str):
            return False
        ends = time.monotonic() + _ENDING_GRACE_S
        while self._answering(server, session):
            if time.monotonic() > ends:
                return True
            await asyncio.sleep(0.05)
        return False

    def _answering(self, server, session: str) -> bool:
        """Whether `session` has an answer queued, or running and not yet at its end."""
        queue = server.get_blocks()._queue
        waiting = queue.event_queue_per_concurrency_id.get(self.concurrency_id)
        if waiting and any(event.session_hash == session for event in waiting.queue):
            return True
        # gradio stores a generator's iterator per event, and None once it has run to its end
        return any(event.session_hash == session and event.concurrency_id == self.concurrency_id
                   and server.iterators.get(event._id, "not started") is not None
                   for job in queue.active_jobs if job for event in job)


def _busy_reply(server, request: dict) -> JSONResponse:
    """The reply gradio gives a join that its validator refuses, so both clients show the message
    (the page on the event's first input, gradio_client as a ValidationError)."""
    fn = server.get_blocks().fns[request["fn_index"]]
    first = next(iter(inspect.signature(fn.fn).parameters), "message")
    refusal = {"__type__": "validate", "is_valid": False, "message": BUSY, "parameter_name": first}
    return JSONResponse({"detail": [refusal]}, status_code=422)


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
