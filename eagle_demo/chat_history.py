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


def user_message(text: str, images: list[str], video: str | None) -> dict:
    files = [{"path": p} for p in [*images, *([video] if video else [])]]
    return {"role": "user", "content": [*files, *([{"type": "text", "text": text}] if text else [])]}


def answer_message(text: str, annotated: str | None = None, footer: str | None = None) -> dict:
    """An answer bubble: the model's text, its drawing, and a small line saying which model wrote it.
    Only the first text part is the answer (see `conversation`); the footer is in `metadata` too."""
    # a text *part* keeps the model's text as it is (a bare string would be dedented by gradio)
    content = [{"type": "text", "text": text}, *([{"path": annotated}] if annotated else [])]
    if not footer:
        return {"role": "assistant", "content": content}
    return {"role": "assistant", "content": [*content, {"type": "text", "text": f"<sub>{footer}</sub>"}],
            "metadata": {"log": footer}}


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
    if history and history[-1]["role"] == "user":
        return history + [error_message(STOPPED_NOTE, STOPPED_TITLE)]
    if history and not is_error(history[-1]):
        return history[:-1] + [answer_message(answer_text(history[-1]), footer="stopped")]
    return history


def conversation(history: list[dict]) -> list[Message]:
    """The chat as the model sees it. An error bubble drops itself and the question it answered
    (if nothing was streamed), so a bad upload never sticks."""
    out: list[Message] = []
    for message in history:
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


def export_json(history: list[dict], model: str, system: str, settings: GenerationSettings,
                records: dict | None = None) -> dict:
    """The chat as JSON: each answer with what it was made with and its rating, where this session
    has them (`records`: answer_key -> {"made_with": model, system prompt, settings and stats;
    "rating": "like" or "dislike"}); the current settings besides."""
    messages = []
    for index, message in enumerate(history):
        text = parts(message)[0]
        if is_error(message):
            messages.append({"role": "assistant", "error": text})
        elif message["role"] == "user":
            asked = question(message)
            messages.append({"role": "user", "text": text, "images": [Path(f).name for f in asked.images],
                             "video": asked.video and Path(asked.video).name})
        else:
            record = (records or {}).get(answer_key(index, answer_text(message))) or {}
            messages.append({"role": "assistant", "text": text,
                             **{k: v for k, v in record.items() if k in ("made_with", "rating") and v}})
    return {"app": "Eagle2 Demo", "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": model, "system_prompt": system, "settings": asdict(settings), "messages": messages}
