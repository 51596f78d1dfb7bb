"""The chat's two outside forms: the Chatbot's messages (each question holds its files, then its
text) and the exported JSON, and how each becomes the model's conversation (`conversation.Message`).
No Gradio here: these are plain dicts and dataclasses.
"""

from __future__ import annotations

import hashlib
import mimetypes
import time
from dataclasses import asdict
from pathlib import Path

from .config import GenerationSettings
from .conversation import Message

ERROR_TITLE = "⚠️ Could not answer"  # metadata title that marks error bubbles (never sent to the model)
STOPPED_TITLE = "Stopped"  # a question stopped before its answer began: dropped like an error
STOPPED_NOTE = "Stopped before the answer began. Send a question when you are ready."
STOPPED_FOOTER = "stopped"  # the line under an answer cut short by Stop
PROGRESS_ID = "progress"  # metadata id of the bubble that shows what runs before the first word
CONTINUE = "continue"  # the value of an answer's "Continue" option (an answer cut at Max new tokens)


def is_video(path: str) -> bool:
    return (mimetypes.guess_type(path)[0] or "").startswith("video/")


# ----------------------------------------------------------------------------- Chatbot messages
def parts(message: dict) -> tuple[str, list[str]]:
    """(text, file paths) of a Chatbot message in any of the shapes gradio hands around."""
    content = message.get("content")
    texts, files = [], []
    for item in content if isinstance(content, list) else [content]:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and item.get("type") == "text":
            texts.append(item.get("text") or "")
        elif isinstance(item, dict) and item.get("type") == "file":
            files.append(item["file"]["path"])
        elif isinstance(item, dict) and item.get("path"):
            files.append(item["path"])
    return "\n".join(t for t in texts if t), files


def question(message: dict) -> Message:
    """A Chatbot question as the model sees it: its text, images and video (the last, if several)."""
    text, files = parts(message)
    videos = [f for f in files if is_video(f)]
    return Message("user", text, [f for f in files if not is_video(f)], videos[-1] if videos else None)


def answer_text(message: dict) -> str:
    """An answer's own text: its first text part (a footer may follow it)."""
    content = message.get("content")
    for item in content if isinstance(content, list) else [content]:
        if isinstance(item, str):
            return item
        if isinstance(item, dict) and item.get("type") == "text":
            return item.get("text") or ""
    return ""


def is_error(message: dict) -> bool:
    """An error bubble, or a question's stopped-before-it-began note: neither is an answer."""
    return (message.get("metadata") or {}).get("title") in (ERROR_TITLE, STOPPED_TITLE)


def is_progress(message: dict) -> bool:
    """The bubble that stands in for an answer until its first word (see `progress_message`)."""
    return (message.get("metadata") or {}).get("id") == PROGRESS_ID


def is_stopped(message: dict) -> bool:
    return message["role"] == "assistant" and (message.get("metadata") or {}).get("log") == STOPPED_FOOTER


def progress_message(text: str) -> dict:
    """Where the answer will be: what runs now (loading, reading the images), with a spinner."""
    return {"role": "assistant", "content": "", "metadata": {"title": text, "status": "pending", "id": PROGRESS_ID}}


def without_progress(history: list[dict]) -> list[dict]:
    return [m for m in history if not is_progress(m)]


def user_message(text: str, images: list[str], video: str | None) -> dict:
    files = [{"path": p} for p in [*images, *([video] if video else [])]]
    return {"role": "user", "content": [*files, *([{"type": "text", "text": text}] if text else [])]}


def question_messages(text: str, images: list[str], video: str | None) -> list[dict]:
    """A question as the page shows it: its files in one message, its text in the next, so that the
    text can be edited in the chat (the Chatbot edits text-only messages). The model sees them as
    one question (consecutive questions merge, see conversation.checked_turns)."""
    return [*([user_message("", images, video)] if images or video else []),
            *([user_message(text, [], None)] if text or not (images or video) else [])]


def question_starts(history: list[dict]) -> list[int]:
    """Where each question of the chat starts: a run of user messages is one question, as the
    Chatbot shows it in one bubble."""
    return [i for i, m in enumerate(history) if m["role"] == "user" and (i == 0 or history[i - 1]["role"] != "user")]


def last_question(history: list[dict]) -> int:
    """Where the chat's last question starts (its messages run to the end, answers dropped first)."""
    start = len(history)
    while start and history[start - 1]["role"] == "user" and not is_error(history[start - 1]):
        start -= 1
    return start


def answer_message(text: str, annotated: str | None = None, footer: str | None = None, cut: bool = False) -> dict:
    """An answer bubble: the model's text, its drawing, and a small line saying which model wrote it.
    Only the first text part is the answer (see `conversation`); the footer is in `metadata` too.
    `cut`: the answer reached Max new tokens, and offers to continue."""
    # a text *part* keeps the model's text as it is (a bare string would be dedented by gradio)
    content = [{"type": "text", "text": text}, *([{"path": annotated}] if annotated else [])]
    options = {"options": [{"label": "Continue", "value": CONTINUE}]} if cut else {}
    if not footer:
        return {"role": "assistant", "content": content, **options}
    return {"role": "assistant", "content": [*content, {"type": "text", "text": f"<sub>{footer}</sub>"}],
            "metadata": {"log": footer}, **options}


def error_message(text: str, title: str = ERROR_TITLE) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}], "metadata": {"title": title}}


def without_answers(history: list[dict]) -> list[dict]:
    """The chat up to its last question: trailing answers and error bubbles dropped."""
    end = len(history)
    while end and history[end - 1]["role"] == "assistant":
        end -= 1
    return history[:end]


def stopped(history: list[dict]) -> list[dict]:
    """The chat after Stop: the answer so far marked as stopped, or, when none had begun (the model
    was loading, or reading the images), a note in its place, so the next question stands alone."""
    history = without_progress(history)
    if history and history[-1]["role"] == "user":
        return history + [error_message(STOPPED_NOTE, STOPPED_TITLE)]
    if history and not is_error(history[-1]) and not is_stopped(history[-1]):
        return history[:-1] + [answer_message(answer_text(history[-1]), footer=STOPPED_FOOTER)]
    return history


def conversation(history: list[dict]) -> list[Message]:
    """The chat as the model sees it. An error bubble drops itself and the question it answered
    (if nothing was streamed), so a bad upload never sticks."""
    out: list[Message] = []
    for message in without_progress(history):
        if is_error(message):
            if out and out[-1].role == "user":
                out.pop()
            continue
        if message["role"] == "user":
            out.append(question(message))
        elif message["role"] == "assistant":  # files in answers are our own drawings, the footer is ours
            out.append(Message("assistant", answer_text(message)))
    return out


def hide_paths(text: str, turns: list[Message]) -> str:
    """Upload paths in a message -> bare file names: users need not see the server's folders."""
    for turn in turns:
        for path in turn.files:
            text = text.replace(str(path), Path(path).name)
    return text


# ----------------------------------------------------------------------------- per-answer records
def answer_footer(model: str, stats: dict) -> str:
    """The line under an answer: which model wrote it (and its weights' bits, when quantised), how fast,
    and what it read."""
    parts_ = [model, *([stats["weights"]] if stats.get("weights") else []), f"{stats['tokens']} tokens"]
    if stats.get("ttft_s") is not None:
        parts_.append(f"{stats['ttft_s']:.1f} s to first token")
    if stats.get("tokens_per_s"):
        parts_.append(f"{stats['tokens_per_s']:.0f} tokens/s")
    if stats.get("image_tiles"):
        parts_.append(f"{stats['image_tiles']} image tiles")
    if stats.get("frames"):
        parts_.append(f"{stats['frames']} video frames")
    return " · ".join(parts_)


def answer_key(index: int, text: str) -> str:
    """What the record of the answer at `index` of the chat (what it was made with, its rating) is
    found by: its place and its text's digest, so two answers alike in words keep their own."""
    return f"{index}:{hashlib.sha1(text.encode('utf-8', 'replace')).hexdigest()}"


def export_json(history: list[dict], model: str, system: str, settings: GenerationSettings | None,
                records: dict | None = None) -> dict:
    """The chat as JSON: each answer with what it was made with and its rating, where this session
    has them (`records`: answer_key -> {"made_with": model, system prompt, settings and stats;
    "rating": "like" or "dislike"}); the current settings besides."""
    messages = []
    for index, message in enumerate(history):
        text = parts(message)[0]
        if is_progress(message):
            continue
        if is_error(message):
            messages.append({"role": "assistant", "error": text})
        elif message["role"] == "user":
            asked = question(message)
            entry = {"role": "user", "text": text, "images": [Path(f).name for f in asked.images],
                     "video": asked.video and Path(asked.video).name}
            if messages and messages[-1]["role"] == "user" and "error" not in messages[-1]:  # one question
                before = messages.pop()
                entry = {"role": "user", "text": "\n".join(filter(None, [before["text"], text])),
                         "images": before["images"] + entry["images"], "video": entry["video"] or before["video"]}
            messages.append(entry)
        else:
            text = answer_text(message)  # without its footer
            record = (records or {}).get(answer_key(index, text)) or {}
            messages.append({"role": "assistant", "text": text, **({"stopped": True} if is_stopped(message) else {}),
                             **{k: v for k, v in record.items() if k in ("made_with", "rating") and v}})
    return {"app": "Eagle2 Demo", "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": model, "system_prompt": system, "settings": settings and asdict(settings), "messages": messages}
