"""The app as an OpenAI-compatible server: `GET /v1/models` and `POST /v1/chat/completions`, on the
app's own port, answered by the same answer stream as the page and /chat.

A chat completion goes this way:
- its key is checked (`--api-key`), then the request is read and checked (openai_request.py) before it
  waits for anything: a refusal is an OpenAI error object with its status;
- one answer at a time per client (its key where the app has keys, else its address): another
  while the first is on its way is refused with a 429;
- it joins gradio's own queue as a private event of the page's concurrency group (ui.ANSWERS): /v1
  answers and the page's take the same `--concurrency` slots, in the order they came, and a full
  queue refuses with a 503;
- that event runs the page's answer stream (answers.AnswerStream): the same checks, messages, KV-cache
  and image-feature reuse, and on ZeroGPU the same GPU lease, charged to the caller's request;
- the client's connection is watched throughout: when it goes, its request leaves the queue, or its
  decode stops after the current token, and its files are deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path

import anyio
import gradio as gr
from gradio.data_classes import PredictBodyInternal
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .answers import AnswerStream
from .backend import Backend
from .config import Limits
from .errors import UserError, server_fault
from .openai_request import RequestError, parse_request
from .openai_response import END, Answering, Ticket, error_response
from .records import process_folder
from .request_guard import ENDING_GRACE_S
from .ui import ANSWERS

WRONG_KEY = "Missing or wrong API key: send this app's key as the header 'Authorization: Bearer <key>'."
CLIENT_BUSY = ("You already have an answer on the way. Wait for it to finish, or close its stream, before "
               "asking again.")
QUEUE_FULL = "The app is busy: every place in its queue is taken. Try again in a minute."
NOT_JSON = "The request body must be JSON in OpenAI's chat completion format."


def request_folder() -> Path:
    """Where each /v1 request's images and videos go (deleted when its answer ends): in this process's own."""
    return process_folder() / "openai"


class OpenAIApi:
    """The /v1 routes over the models of `menu`, answered through `answers` (the page's answer stream)."""

    def __init__(self, menu: Backend, limits: Limits, answers: AnswerStream, api_keys: list[str] | None = None):
        self.menu, self.limits, self.answers = menu, limits, answers
        self.api_keys = [key.encode() for key in api_keys or []]
        self.created = int(time.time())
        self.clients = OneAnswerEach()
        self.tickets: dict[str, Ticket] = {}
        self.fn_index: int | None = None
        # a request's JSON: every image at the upload limit, base64 (4 characters for 3 bytes), and its text
        self.max_body = (limits.max_images_per_conversation * limits.max_upload_mb * 2**20 * 4 // 3
                         + 6 * limits.max_chat_chars + 2**20)

    def attach(self, demo: gr.Blocks, concurrency: int) -> list[Route]:
        """Adds the private event that runs /v1 answers to `demo`, in the page's concurrency group;
        the routes to serve beside gradio's (launch's app_kwargs)."""
        with demo:
            gr.api(self.answer, api_name="openai_answer", concurrency_id=ANSWERS, concurrency_limit=concurrency,
                   api_visibility="private")
        self.fn_index = next(index for index, fn in demo.fns.items() if fn.fn == self.answer)
        return [Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"])]

    # ------------------------------------------------------------------ routes
    async def models(self, request: Request) -> JSONResponse:
        if not self._authorized(request):
            return error_response(RequestError(WRONG_KEY, 401, code="invalid_api_key"))
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "created": self.created, "owned_by": "eagle2-demo"}
            for name in self.menu.names]})

    async def chat_completions(self, request: Request):
        if not self._authorized(request):
            return error_response(RequestError(WRONG_KEY, 401, code="invalid_api_key"))
        client = self._client(request)
        if not await self.clients.take(client):
            return error_response(RequestError(CLIENT_BUSY, 429, code="rate_limit_exceeded"))
        request_folder().mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=request_folder()))
        ticket = Ticket(folder, asyncio.get_running_loop(), lambda: self.clients.free(client))
        try:
            body = await self._json(request)
            ticket.request = await anyio.to_thread.run_sync(parse_request, body, self.menu.names, self.limits,
                                                            folder)
            event_id = await self._enqueue(request, ticket, client)
        except UserError as e:
            ticket.abandon()
            return error_response(e)
        except Exception:
            ticket.abandon()
            return error_response(RequestError(server_fault("a /v1 request failed"), 500))
        except BaseException:  # cancelled
            ticket.abandon()
            raise
        return Answering(ticket, event_id, request.app.get_blocks()._queue, _session(client),
                         lambda ticket_id: self.tickets.pop(ticket_id, None))

    def _authorized(self, request: Request) -> bool:
        if not self.api_keys:
            return True
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        given = key.strip().encode()
        return scheme.lower() == "bearer" and any(hmac.compare_digest(given, k) for k in self.api_keys)

    def _client(self, request: Request) -> str:
        """Who asks: the key where the app has keys, else the address (a proxy's client, where
        uvicorn is told to trust it)."""
        if self.api_keys:
            return "key:" + request.headers.get("authorization", "").partition(" ")[2].strip()
        return "address:" + (request.client.host if request.client else "unknown")

    async def _json(self, request: Request):
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise RequestError(f"The request is over {self.max_body / 2**20:,.0f} MB: send fewer or smaller "
                                   "images.", 413)
            chunks.append(chunk)
        try:
            return await anyio.to_thread.run_sync(json.loads, b"".join(chunks))
        except ValueError:  # not JSON, or not UTF-8
            raise RequestError(NOT_JSON) from None

    async def _enqueue(self, request: Request, ticket: Ticket, client: str) -> str:
        """Queues the ticket's answer as the private event; its event id."""
        queue = request.app.get_blocks()._queue
        joined = _as_join(request)
        self.tickets[ticket.id] = ticket
        body = PredictBodyInternal(data=[ticket.id], fn_index=self.fn_index, session_hash=_session(client),
                                   request=joined)
        queued, event_id, state = await queue.push(body=body, request=joined, username=None)
        if not queued:
            self.tickets.pop(ticket.id, None)
            if state == "queue_full":
                raise RequestError(QUEUE_FULL, 503, code="server_is_overloaded")
            raise RuntimeError(f"gradio's queue refused a /v1 request: {event_id}")
        return event_id

    # ------------------------------------------------------------------ the queued event
    def answer(self, ticket: str) -> None:
        """The private event: answers the ticket's request through the page's answer stream, handing
        each update to the route that waits for it. Its client's disconnect ends it at the next update."""
        job = self.tickets.pop(ticket, None)
        if job is None or not job.claim():
            return
        chat = job.request
        try:
            with closing(self.answers.stream(chat.messages, chat.model, chat.system, chat.settings)) as updates:
                for update in updates:
                    if update.error is not None:  # a refusal's message, or a fault's reference
                        raise RequestError(update.error, update.error_status)
                    job.deliver(update)
                    if job.cancel.is_set():
                        break
            job.deliver(END)
        except RequestError as e:
            job.deliver(e)
        except gr.Error as e:  # ZeroGPU's own refusals (no GPU, quota): a message for the user
            job.deliver(RequestError(e.message, 503))
        except Exception:
            job.deliver(RequestError(server_fault("a /v1 answer failed"), 500))
        finally:
            job.end()


def _session(client: str) -> str:
    """The gradio session of a /v1 client (gradio keeps a state per session, as for a page visitor)."""
    return "openai-" + hashlib.sha256(client.encode()).hexdigest()[:16]


def _as_join(request: Request) -> Request:
    """The request as gradio's queue takes an event's: it works out the app's root URL from the path of
    a queue join, and has no other."""
    root = request.scope.get("root_path", "")
    path = f"{root}/gradio_api/queue/join"
    return Request({**request.scope, "path": path, "raw_path": path.encode()}, request.receive)


class OneAnswerEach:
    """The clients with an answer on the way (taken and freed on the event loop's thread or any other)."""

    def __init__(self):
        self._busy: set[str] = set()
        self._lock = threading.Lock()

    async def take(self, client: str) -> bool:
        """Whether `client` may ask now; a previous answer that is closing is waited for a moment."""
        ends = time.monotonic() + ENDING_GRACE_S
        while True:
            with self._lock:
                if client not in self._busy:
                    self._busy.add(client)
                    return True
            if time.monotonic() > ends:
                return False
            await asyncio.sleep(0.05)

    def free(self, client: str) -> None:
        with self._lock:
            self._busy.discard(client)
