"""What the app keeps of a chat beside its messages, and the files it writes for the page.

- Records: per session (a gr.State), answer_key -> what the answer was made with (model, system
  prompt, settings, stats) and its rating; bounded, so old retries drop out.
- `OutputFiles`: the drawings, video frames and exports the app writes, in a folder of its own;
  gradio serves them and deletes them with the uploads.
- `Export`: the chat, its records and the current settings, as a JSON file to download.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

from .chat_history import answer_key, export_json, parts
from .config import GenerationSettings, Limits
from .errors import UserError

DEFAULTS = GenerationSettings()


@functools.cache
def process_folder() -> Path:
    """This process's own temporary folder (made on first use, removed at exit), so that two apps on
    one machine never delete each other's files: gradio's uploads and cache go in `gradio/` (see
    app.py), the drawings, frames and exports in `outputs/`."""
    folder = Path(tempfile.mkdtemp(prefix="eagle2-demo-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def recorded(records: dict | None, key: str, limit: int, fresh: bool = False, **fields) -> dict:
    """`records` (at most `limit` kept) with the record at `key` given `fields`, or made anew with
    them when `fresh`."""
    records = dict(list((records if isinstance(records, dict) else {}).items())[-limit:])
    return {**records, key: {**({} if fresh else records.get(key, {})), **fields}}


def frames_read(records: dict | None, index: int, answer: str) -> int:
    """The video frames the answer at `index` read (the default, where this session has no record)."""
    stats = (((records or {}).get(answer_key(index, answer)) or {}).get("made_with") or {}).get("stats") or {}
    return stats.get("frames") or DEFAULTS.num_frames


class OutputFiles:
    """The files the app writes for the page, under `folder`; `generated` lists them, for gradio to
    delete with the uploads."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.generated: set[str] = set()

    def image(self, image, identity: str, kind: str) -> str:
        """`image` saved as a PNG named after `identity`; its path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{kind}-{hashlib.sha1(identity.encode()).hexdigest()[:16]}.png"
        image.save(path)
        self.generated.add(str(path))
        return str(path)

    def text(self, text: str, name: str) -> str:
        """`text` in a file called `name`, in a folder of its own (so the download keeps that name)."""
        folder = self.folder / hashlib.sha1(text.encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        path.write_text(text, encoding="utf-8")
        self.generated.add(str(path))
        return str(path)


def exported(history: list[dict], model: str, system: str | None, settings: GenerationSettings | None,
             records: dict | None, limits: Limits, files: OutputFiles) -> str | None:
    """The chat and the settings used, as a JSON file to download; None for an empty chat."""
    if not history:
        return None
    system = "" if system is None else system
    chars = len(system) + sum(len(parts(m)[0]) for m in history)
    if len(history) > limits.max_chat_messages or chars > limits.max_chat_chars:  # the chat's own limits
        raise UserError(f"This chat is too long to export ({len(history):,} messages, {chars:,} characters; the "
                        f"limits are {limits.max_chat_messages:,} and {limits.max_chat_chars:,}).", 413)
    data = export_json(history, model, system, settings, records if isinstance(records, dict) else None)
    # a lone surrogate (which no file can hold) becomes "?"
    text = json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8", "replace").decode("utf-8")
    return files.text(text, f"eagle2-chat-{time.strftime('%Y%m%d-%H%M%S')}.json")
