"""Reading what a client sends, before any handler sees it.

gradio parses each input with its component (bounds, choices, file paths, pydantic models), and
what it refuses reaches the client as gradio's own text ("Value 30 is greater than maximum value
24.", a Python type in a dropdown's message) or as a bare "error" with no text at all. Here:
- the settings and the model are passed through as sent, because the handlers check them once,
  by name, with the same rules as the CLI (`GenerationSettings.checked`, the model menu);
- text inputs must be text;
- anything else gradio cannot read (a malformed file or chat history, missing values) becomes one
  message naming the inputs to fix.
And on the way back, `error_boundary`: what a handler lets out reaches the client in the two kinds
of errors.py.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps

import gradio as gr

from .answers import unknown_model
from .config import GenerationSettings
from .errors import UserError, server_fault

FILE_HINT = "files uploaded to this app (with gradio_client: handle_file(path))"
HISTORY_HINT = 'a list of {"role": "user" | "assistant", "content": text} messages'  # /chat's history
CHATBOT_HINT = 'a list of {"role": "user" | "assistant", "content": [{"type": "text", "text": text}]} messages'


class InputError(gr.Error):
    """A client's value that cannot be used; the message names it and says what to send."""

    def __init__(self, message: str):
        super().__init__(message, print_exception=False)


def refuse(message: str):
    """End the handler with an error that says what to change (an API client's, or a toast)."""
    raise gr.Error(message, print_exception=False)


def checked_model(model: str | None, names: list[str]) -> str:
    """The model a request names (the first when it names none); refused unless it is on the menu,
    so that no client makes the app load whatever it names."""
    if model is None:
        return names[0]
    if model not in names:
        refuse(str(unknown_model(names)))
    return model


def page_refusal(message: str):
    """End a page event with one toast that says what to change, and nothing else: no component is
    marked as failed (wire the event with `show_progress_on=[]`), and its `.success` chain stops."""
    gr.Warning(message)
    raise gr.Error(message, visible=False, print_exception=False)


def settings_from(**sent) -> GenerationSettings:
    """The settings a client sent, by name, checked (a SettingsError names the first bad one)."""
    seed = sent.get("seed")
    if isinstance(seed, str):  # the Seed box: empty for a fresh answer each time
        sent["seed"] = None if not seed.strip() else int(seed) if re.fullmatch(r"\s*\d{1,19}\s*", seed) else seed
    return GenerationSettings.checked(**sent)


@contextmanager
def _two_kinds(what: str) -> Iterator[None]:
    try:
        yield
    except gr.Error:
        raise
    except UserError as e:
        raise gr.Error(str(e), print_exception=False) from None
    except Exception:
        raise gr.Error(server_fault(f"{what} failed"), print_exception=False) from None


def error_boundary(handler: Callable) -> Callable:
    """What a handler lets out reaches the client as a gr.Error: a UserError's message as it is,
    anything unexpected as the reference message (the details go to the log)."""
    if inspect.isgeneratorfunction(handler):
        @wraps(handler)
        def streaming(*args, **kwargs):
            with _two_kinds(handler.__name__):
                yield from handler(*args, **kwargs)
        return streaming

    @wraps(handler)
    def plain(*args, **kwargs):
        with _two_kinds(handler.__name__):
            return handler(*args, **kwargs)
    return plain


def taken_as_sent(component: gr.components.Component) -> None:
    """The handler checks this input itself (settings, the model), so gradio passes it on as sent."""
    component.preprocess = lambda payload: payload


def text_only(component: gr.Textbox, name: str) -> None:
    """Refuse anything but text (gradio would turn a number or a list into its repr)."""
    preprocess = component.preprocess

    def checked(payload):
        if payload is not None and not isinstance(payload, str):
            raise InputError(f"{name} must be text.")
        return preprocess(payload)

    component.preprocess = checked


def unreadable(block_fn, inputs: list) -> str:
    """What to change when gradio could not read a request's values."""
    # a session's State is the server's own, never a client's to send
    sent = [(n, c) for n, c in zip(block_fn.input_parameter_names, block_fn.inputs) if not isinstance(c, gr.State)]
    names = [n for n, _ in sent]
    if len(inputs) < len(sent):
        return (f"This endpoint takes {len(sent)} values ({', '.join(names)}); {len(inputs)} were sent. "
                "Send them all, or call it with gradio_client, which fills in the defaults.")
    files = [n for n, c in sent if isinstance(c, (gr.File, gr.Gallery, gr.Video))]
    chats = [n for n, c in sent if isinstance(c, gr.Chatbot)]
    checks = [*([f"{_listed(files)}: each must be one of the {FILE_HINT}"] if files else []),
              *([f"{_listed(chats)}: it must be {CHATBOT_HINT}"] if chats else [])]
    return "Could not read the request. Check " + "; ".join(checks or [", ".join(names)]) + "."


def _listed(names: list[str]) -> str:
    """Names as a sentence lists them: a; a and b; a, b and c."""
    return " and ".join(filter(None, [", ".join(names[:-1]), names[-1]]))


class CheckedBlocks(gr.Blocks):
    """Blocks that answer a request gradio cannot parse with a message that says what to change."""

    async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except InputError:
            raise
        except Exception:  # gradio's and pydantic's texts name its internals, never the client's field
            raise InputError(unreadable(block_fn, inputs)) from None


# /chat's history as a JSON Schema. gr.JSON describes itself as {"type": {}}, which is none: gradio's
# MCP server passes it on as the tool's inputSchema, and the MCP SDK, which validates each call's
# arguments against that schema, then refuses every call.
HISTORY_SCHEMA = {"type": "array", "items": {
    "type": "object", "required": ["role", "content"],
    "properties": {"role": {"type": "string", "enum": ["user", "assistant"]}, "content": {"type": "string"}}}}


def described_as(component: gr.components.Component, schema: dict) -> None:
    """API clients see this input as `schema` (the API page, gradio_client's view_api, an MCP tool's
    inputSchema) in place of gradio's own description of it; what it accepts is unchanged."""
    component.api_info = lambda: schema


def self_contained(schema: dict) -> dict:
    """`schema` with each `#/$defs/...` reference replaced by its definition. gradio puts a file
    list's `$defs` inside the list's own schema; in an MCP tool's inputSchema, where that schema is one
    property, the references resolve against the root, which has none."""
    defs = schema.get("$defs", {})

    def inline(node, seen: tuple = ()):
        if isinstance(node, list):
            return [inline(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref", "")
        if ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            if name in seen:
                raise ValueError(f"{name} refers to itself: a schema that cannot be written out")
            rest = {k: v for k, v in node.items() if k != "$ref"}
            return inline({**defs[name], **rest}, (*seen, name))
        return {k: inline(v, seen) for k, v in node.items() if k != "$defs"}

    return inline(schema)
