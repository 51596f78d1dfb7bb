"""What the chat's events do: send a question (typed, or an example card's), stream its answer,
Stop, Undo, Clear, Retry, rate an answer, export the chat; and the `chat` endpoint for API and MCP
clients. Every answer goes through `answers.AnswerStream`; Stop (or a client's cancel) closes its
generator, and the decode ends after its current token. No model code here.

Per-session state comes in as arguments (gr.State): `answering`, and `records` (see records.py).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict

import gradio as gr

from . import grounding, media
from .answers import AnswerStream, unknown_model
from .attachments import Attachments
from .chat_history import (
    answer_footer,
    answer_key,
    answer_message,
    answer_text,
    conversation,
    error_message,
    is_error,
    is_video,
    parts,
    question,
    stopped,
    user_message,
    without_answers,
)
from .config import DEFAULT_SYSTEM_PROMPT, GenerationSettings, Limits
from .conversation import Message
from .gradio_inputs import HISTORY_HINT, InputError, error_boundary, refuse, settings_from
from .records import OutputFiles, exported, recorded

BUSY_SENDING = "The answer is still coming. Wait for it, or press Stop, then send again; your text stays in the box."
BUSY_RETRYING = "The answer is still coming. Wait for it, or press Stop, then retry."
DEFAULTS = GenerationSettings()
# the page redraws the whole answer for each update: one per token at a fast model's rate keeps the
# browser so busy that a click on Stop waits for the answer's end; ~12 a second reads smoothly
PAGE_UPDATE_INTERVAL_S = 0.08


def annotate(answer: str, turns: list[Message], files: OutputFiles) -> str | None:
    """Draw the answer's boxes on the latest image of the chat; the PNG's path, or None."""
    boxes = grounding.parse_boxes(answer)
    images = [p for t in turns for p in t.images]
    if not boxes or not images:
        return None
    try:  # upright and within the limits, as the model saw it
        drawn = grounding.draw_boxes(media.open_image(images[-1]), boxes)
    except media.MediaError:
        return None
    return files.image(drawn, f"{images[-1]}|{boxes}", "boxes")


class _Halt(threading.Event):
    """A page answer's end, asked for by Stop (`keep`: the answer so far stays, marked stopped) or
    by Undo or Clear (it goes)."""

    keep = True


class ChatActions:
    """The chat's handlers over the answers of `answers`; `attachments` handles what waits to be
    sent, `files` holds what the app writes. `examples`: (question, image paths, video path) of the
    example cards."""

    def __init__(self, answers: AnswerStream, attachments: Attachments, limits: Limits, files: OutputFiles,
                 examples: list[tuple[str, list[str], str | None]] = ()):
        self.answers, self.attachments, self.limits, self.files = answers, attachments, limits, files
        self.menu = answers.backend
        self.models = self.menu.names
        self.examples = list(examples)
        # session -> the Stop of the page's answer now streaming there (gradio's own cancel alone was
        # not always heard); an entry lives as long as its answer
        self._stops: dict[str, _Halt] = {}

    # ------------------------------------------------------------------ model and status
    def checked_model(self, model: str | None) -> str:
        if model is None:
            return self.models[0]
        if model not in self.models:  # never load whatever a client names
            refuse(str(unknown_model(self.models)))
        return model

    def status(self, model: str, state: str | None = None) -> str:
        return f"**Model** {model} · {state or self.menu.status(model)}"

    def default_tiles(self, model: str):
        """On a CPU, the tile limit for a first word in about 10 s there (see wait.py)."""
        tiles = None if self.attachments.on_gpu else self.menu.model(self.checked_model(model)).cpu_default_tiles()
        return gr.skip() if tiles is None else tiles

    # ------------------------------------------------------------------ asking
    def add_message(self, box: dict | None, images, video, history: list[dict], answering: bool):
        """The question into the chat, the inputs emptied. Refused (a toast; the text stays in the box)
        while an answer streams, or when there is nothing to send; the answer then does not start."""
        text = (box or {}).get("text") or ""
        images = [item[0] for item in images or []]
        if answering:
            refuse(BUSY_SENDING)
        if (box or {}).get("files"):  # not yet moved to the gallery: sent as they are
            images += [f for f in box["files"] if isinstance(f, str) and not is_video(f)]
        if not (text.strip() or images or video):
            refuse("Type a question, or add an image or a video.")
        history = history + [user_message(text, images, video)]
        return (history, {"text": "", "files": []}, self.attachments.gallery_update(history, None, None, value=None),
                None, "", True, None)

    def run_example(self, example: gr.SelectData, history: list[dict], answering: bool):
        """A tapped example card: its question, images and video asked at once (found by its index:
        what a client sends is never taken as a path)."""
        text, images, video = self.examples[example.index]
        return self.add_message({"text": text}, [(p, None) for p in images], video, history, answering)

    # ------------------------------------------------------------------ answering
    @error_boundary
    def respond(self, history: list[dict], model: str, system: str, records: dict | None = None,
                request: gr.Request = None, **settings) -> Iterator[tuple]:
        """Streams (chat, status, answering, records) for the chat's last question."""
        if not history or history[-1]["role"] != "user" or is_error(history[-1]):
            yield gr.skip(), gr.skip(), False, gr.skip()  # nothing asked
            return
        turns, model, generation = conversation(history), self.checked_model(model), settings_from(**settings)
        text, stats, shown_at = "", None, 0.0
        session = getattr(request, "session_hash", None) or uuid.uuid4().hex
        stop = self._stops[session] = _Halt()
        try:  # closing: Stop closes this generator, and that must reach the decode at once
            with closing(self.answers.stream(turns, model, "" if system is None else system, generation)) as updates:
                for update in updates:
                    if stop.is_set():  # the same chat as Stop's (or Undo's, Clear's) reply, whichever comes last
                        kept = [answer_message(text)] if text else []
                        shown = stopped(history + kept) if stop.keep else gr.skip()
                        yield shown, self.status(model), False, gr.skip()
                        return
                    if update.error is not None:
                        raise gr.Error(update.error, print_exception=False)
                    if update.status:
                        yield history, self.status(model, update.status), gr.skip(), gr.skip()
                        continue
                    text, stats = update.text, update.stats or stats
                    if time.monotonic() - shown_at >= PAGE_UPDATE_INTERVAL_S:  # the rest: with the next, or the last
                        shown_at = time.monotonic()
                        yield history + [answer_message(text)], gr.skip(), gr.skip(), gr.skip()
        except gr.Error as e:  # the answer's own failure, or ZeroGPU's (its quota, say)
            kept = [answer_message(text)] if text else []
            yield history + kept + [error_message(e.message)], self.status(model), False, gr.skip()
            return
        finally:
            if self._stops.get(session) is stop:
                del self._stops[session]
        yield self._answered(history, turns, model, system, generation, text, stats, records)

    def _answered(self, history: list[dict], turns: list[Message], model: str, system: str,
                  settings: GenerationSettings, text: str, stats: dict | None, records: dict | None) -> tuple:
        """The last update of an answer that ended by itself: its bubble with its drawing and footer,
        and its record."""
        drawn = annotate(text, turns, self.files)
        footer = answer_footer(model, stats) if stats else None
        if not text.strip():  # a blank bubble would look like a fault of the page
            footer = " · ".join(filter(None, ["the model ended its answer without writing anything", footer]))
        made_with = {"model": model, "system_prompt": system, "settings": asdict(settings), "stats": stats}
        # a new record: a rating of an earlier answer in this place does not carry over
        records = recorded(records, answer_key(len(history), text), self.limits.max_chat_messages, fresh=True,
                           made_with=made_with)
        return history + [answer_message(text, drawn, footer)], self.status(model), False, records

    @error_boundary
    def chat(self, message: str, images: list[str] | None = None, video: str | None = None,
             history: list[dict] | None = None, system: str = DEFAULT_SYSTEM_PROMPT,
             max_tiles=DEFAULTS.max_tiles, num_frames=DEFAULTS.num_frames, temperature=DEFAULTS.temperature,
             top_p=DEFAULTS.top_p, max_new_tokens=DEFAULTS.max_new_tokens,
             repetition_penalty=DEFAULTS.repetition_penalty, top_k=DEFAULTS.top_k, seed: int | None = None,
             model: str | None = None, image: str | None = None) -> Iterator[str]:
        """Answer a question about images or a video with an Eagle2 vision-language model.

        Args:
            message: the question or instruction
            images: image files to ask about (MCP: send one image as `image` instead)
            video: a video file to ask about
            history: earlier turns, a list of {"role": "user" | "assistant", "content": text} messages
            system: the system prompt
            max_tiles: most 448-pixel tiles an image is cut into; more read finer detail, but take longer
            num_frames: frames sampled evenly over the video
            temperature: sampling temperature; 0 always picks the likeliest token
            top_p: nucleus sampling's probability mass
            max_new_tokens: longest answer, in tokens
            repetition_penalty: above 1 discourages repeating earlier tokens
            top_k: sample from the k likeliest tokens; 0 turns it off
            seed: a whole number makes sampling repeatable
            model: the model to answer with, a name from the app's menu
            image: one more image file, after `images`
        Returns:
            the answer
        """
        history = [] if history is None else history
        if not isinstance(history, list) or not all(
                isinstance(h, dict) and h.get("role") in ("user", "assistant") for h in history):
            raise InputError(f"history must be {HISTORY_HINT}.")
        turns = [Message(h["role"], parts(h)[0]) for h in history]
        turns.append(Message("user", message or "", [*(images or []), *([image] if image else [])], video))
        settings = settings_from(max_tiles=max_tiles, num_frames=num_frames, temperature=temperature, top_p=top_p,
                                 max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty, top_k=top_k,
                                 seed=seed)
        text = ""
        answer = self.answers.stream(turns, self.checked_model(model), "" if system is None else system, settings)
        with closing(answer) as updates:
            for update in updates:  # a client's cancel closes this generator, and so the decode
                if update.error is not None:
                    refuse(update.error)
                if not update.status and update.text != text:
                    text = update.text
                    yield text
        if not text:
            yield text

    # ------------------------------------------------------------------ the chat's buttons
    def _halt(self, request: gr.Request | None, keep: bool) -> None:
        """The answer streaming in this session (if any) ends after its current token."""
        stop = self._stops.get(getattr(request, "session_hash", None))
        if stop is not None:
            stop.keep = keep
            stop.set()

    def stop(self, history: list[dict], request: gr.Request = None):
        """Stop: the answer so far stays, marked stopped."""
        self._halt(request, keep=True)
        return stopped(history), False

    def clear(self, request: gr.Request = None):
        """Clear: no chat, no export, nothing answering, no records."""
        self._halt(request, keep=False)
        return [], None, False, {}

    def retry(self, history: list[dict], answering: bool):
        if answering:
            refuse(BUSY_RETRYING)
        history = without_answers(history)
        if not history:
            refuse("Nothing to retry yet: ask a question first.")
        return history, True, None

    def undo(self, history: list[dict], request: gr.Request = None):
        """Remove the last question and its answer; put the question back in the inputs."""
        self._halt(request, keep=False)
        history = without_answers(history)
        if not history:
            return history, gr.skip(), gr.skip(), gr.skip(), False
        asked = question(history[-1])
        return (history[:-1], {"text": asked.text, "files": []}, [(f, None) for f in asked.images] or None,
                asked.video, False)

    def rate(self, like: gr.LikeData, history: list[dict], records: dict | None) -> dict:
        """A like or dislike on an answer, kept for the export (a second click takes it back)."""
        if not isinstance(like.index, int) or not 0 <= like.index < len(history or []):
            return gr.skip()
        rating = {True: "like", False: "dislike"}.get(like.liked)
        key = answer_key(like.index, answer_text(history[like.index]))
        return recorded(records, key, self.limits.max_chat_messages, rating=rating)

    @error_boundary
    def export(self, history: list[dict], model: str | None = None, system: str = DEFAULT_SYSTEM_PROMPT,
               records: dict | None = None, **settings) -> str | None:
        """The chat and the settings used, as a JSON file to download."""
        if not history:
            return None
        return exported(history, self.checked_model(model), system, settings_from(**settings), records, self.limits,
                        self.files)
