"""Chats kept in the visitor's own browser (a gr.BrowserState in localStorage), so that a reload or
a closed tab loses nothing; the server keeps none of them. The store's rules first, then the
page's handlers (`SavedChats`).

The stored value is `{"chats": [{"id", "title", "saved_at", "messages", "records"}, ...]}`, the
most recently saved first. It comes back from the browser as any JSON a client likes, so each chat
is rebuilt from its parts (`restored`), and a file it names is kept only where this app's uploads
are and the file is still there.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from .chat_history import (
    ERROR_TITLE,
    STOPPED_FOOTER,
    STOPPED_TITLE,
    answer_message,
    answer_text,
    error_message,
    is_error,
    is_progress,
    parts,
    question,
    user_message,
)
from .config import Limits
from .gradio_inputs import page_refusal

TITLE_CHARS = 48


def new_chat_id() -> str:
    return uuid.uuid4().hex[:12]


def chats(saved) -> list[dict]:
    """The stored chats that have the expected form (a client may send anything)."""
    found = saved.get("chats") if isinstance(saved, dict) else None
    return [c for c in found if isinstance(c, dict) and isinstance(c.get("id"), str)
            and isinstance(c.get("messages"), list)] if isinstance(found, list) else []


def title_of(messages: list[dict]) -> str:
    """A chat's name in the list: the words of its first question that has some, or what it asked about."""
    asked = [question(m) for m in messages if m.get("role") == "user"]
    text = next((" ".join(m.text.split()) for m in asked if m.text.strip()), "")
    if text:
        return text if len(text) <= TITLE_CHARS else text[:TITLE_CHARS - 1] + "…"
    return "A video" if any(m.video for m in asked) else "Images" if asked else "An empty chat"


def saved_with(saved, chat_id: str, messages: list[dict], records: dict | None, limits: Limits) -> dict:
    """The store with this chat saved in front (an empty chat is not kept), then as many of the
    others as the limits allow, most recent first."""
    others = [c for c in chats(saved) if c["id"] != chat_id]
    messages = [m for m in messages or [] if not is_progress(m)]
    mine = [{"id": chat_id, "title": title_of(messages), "saved_at": time.time(), "messages": messages,
             "records": records if isinstance(records, dict) else {}}] if messages else []
    kept, chars = [], 0
    for chat in [*mine, *others][:limits.max_saved_chats]:
        chars += len(json.dumps(chat, ensure_ascii=False))
        if chars > limits.max_saved_chars and kept:
            break
        kept.append(chat)
    return {"chats": kept}


def without(saved, *chat_ids: str) -> dict:
    return {"chats": [c for c in chats(saved) if c["id"] not in chat_ids]}


def choices(saved) -> list[tuple[str, str]]:
    """(label, id) of each stored chat, for the list: its title and when it was last saved."""
    out = []
    for chat in chats(saved):
        at = chat.get("saved_at")
        when = time.strftime("%d %b %H:%M", time.localtime(at)) if isinstance(at, (int, float)) else ""
        title = chat.get("title") if isinstance(chat.get("title"), str) else "A chat"
        out.append((f"{title} · {when}" if when else title, chat["id"]))
    return out


def restored(saved, chat_id: str | None, uploads: Path) -> tuple[list[dict], dict, str] | None:
    """(messages, records, id) of the stored chat `chat_id` (the most recent when None), rebuilt from
    its parts: text, the files it holds where they may be served from, and its marks. None if
    there is no such chat."""
    found = [c for c in chats(saved) if chat_id is None or c["id"] == chat_id]
    if not found:
        return None
    chat = found[0]
    messages = [m for m in (_rebuilt(m, uploads) for m in chat["messages"] if isinstance(m, dict)) if m]
    records = chat.get("records") if isinstance(chat.get("records"), dict) else {}
    return messages, records, chat["id"]


def _rebuilt(message: dict, uploads: Path) -> dict | None:
    role = message.get("role")
    try:
        if role == "user":
            asked = question(message)
            files = [f for f in [*asked.images, *([asked.video] if asked.video else [])] if _servable(f, uploads)]
            gone = len(asked.files) - len(files)
            text = asked.text + (f"\n\n({gone} file{'s' * (gone > 1)} no longer on the server)" if gone else "")
            images = [f for f in files if f in asked.images]
            return user_message(text, images, asked.video if asked.video in files else None)
        if role == "assistant" and not is_progress(message):
            metadata = message.get("metadata") if isinstance(message.get("metadata"), dict) else {}
            if is_error(message):
                title = metadata.get("title")
                return error_message(parts(message)[0], title if title in (ERROR_TITLE, STOPPED_TITLE) else ERROR_TITLE)
            drawing = next((f for f in parts(message)[1] if _servable(f, uploads)), None)
            footer = metadata.get("log") if isinstance(metadata.get("log"), str) else None
            return answer_message(answer_text(message), drawing, footer, cut=bool(message.get("options"))
                                  and footer != STOPPED_FOOTER)
    except (TypeError, KeyError, AttributeError):  # a malformed part: the message is left out
        return None
    return None


def _servable(path, uploads: Path) -> bool:
    """A file this app handed out (gradio's upload folder) that is still there."""
    if not isinstance(path, str):
        return False
    try:
        resolved = Path(path).resolve()
        return resolved.is_relative_to(uploads.resolve()) and resolved.is_file()
    except (OSError, ValueError):
        return False


class SavedChats:
    """The page's handlers for the saved chats: keep the store in step with the chat shown, reopen the
    most recent on a reload, open or delete one from the list. `uploads`: where gradio keeps this
    app's files.

    The page's events cross (an answer's last update, Clear, a reload's reopen), so the store is
    never written from a value one event read earlier: every change asks for one `synced`, which
    the page runs one at a time and, when asked again meanwhile, once more on what the page holds
    then. The chat's id is given when its first question is taken (`named`), never by a save."""

    def __init__(self, limits: Limits, uploads: Callable[[], Path]):
        self.limits, self.uploads = limits, uploads

    def _listed(self, saved, chat_id: str):
        return gr.update(choices=choices(saved), value=chat_id if any(c["id"] == chat_id for c in chats(saved))
                         else None)

    @staticmethod
    def named(chat_id: str | None) -> str:
        """The id of a chat whose question was just taken: its own, or a new one for a new chat."""
        return chat_id or new_chat_id()

    def synced(self, history: list[dict], records: dict | None, chat_id: str | None, saved, deleted: list[str],
               answering: bool):
        """(store, list): the store with the chats deleted on this page gone and the chat shown saved
        under its id (a chat with no id yet has asked nothing). Not while an answer runs: its end
        asks again, and a question saved without its answer would come back so after a reload."""
        if answering:
            return gr.skip(), gr.skip()
        saved = without(saved, *(deleted or []))
        if chat_id:
            saved = saved_with(saved, chat_id, history or [], records, self.limits)
        return saved, self._listed(saved, chat_id or "")

    def reopened(self, saved):
        """On a page load: the most recent chat, as it was, and the list."""
        found = restored(saved, None, self.uploads())
        if found is None:
            return gr.skip(), gr.skip(), "", self._listed(saved, "")
        messages, records, chat_id = found
        return messages, records, chat_id, self._listed(saved, chat_id)

    def opened(self, chosen: str | None, chat_id: str | None, saved, answering: bool):
        """A chat picked from the list, in place of the one shown (which stays saved). The list also
        reports an input each time it loses focus, picked or not: the chat shown, or none, is no pick."""
        if not chosen or chosen == chat_id:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        if answering:
            page_refusal("The answer is still coming. Wait for it, or press Stop, then open another chat.")
        found = restored(saved, chosen, self.uploads())
        if found is None:
            page_refusal("That chat is no longer saved in this browser.")
        messages, records, chat_id = found
        return messages, records, chat_id, None

    def deleted(self, chat_id: str | None, deleted: list[str], answering: bool):
        """The chat shown, to be deleted from this browser (by the next `synced`); an empty chat in its place."""
        if answering:
            page_refusal("The answer is still coming. Wait for it, or press Stop, then delete the chat.")
        return [*(deleted or []), *([chat_id] if chat_id else [])], [], {}, "", None
