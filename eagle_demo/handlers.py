"""What the app's events do, as methods of `ChatHandlers`; `ui.build_app` only lays out and wires.

Every answer, the page's and the API's, goes one way: `_stream`, over `answer_updates`, the model
side, which takes and yields plain data, so that on ZeroGPU it can run in the GPU worker. Stop (or
a client's cancel) closes the handler's generator, and the decode ends after its current token.
No model code here: models come from the Backend.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import queue
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from functools import wraps
from pathlib import Path
from typing import Any

import gradio as gr

from . import grounding, media, wait
from .backend import Backend
from .chat_history import (
    answer_footer,
    answer_key,
    answer_message,
    answer_text,
    conversation,
    error_message,
    export_json,
    hide_paths,
    is_error,
    is_video,
    parts,
    question,
    stopped,
    user_message,
    without_answers,
)
from .config import DEFAULT_SYSTEM_PROMPT, SETTING_RANGES, GenerationSettings, Limits, SettingsError
from .conversation import Message
from .errors import UserError
from .gradio_inputs import HISTORY_HINT, InputError
from .models import LoadError

log = logging.getLogger(__name__)

BUSY_SENDING = "The answer is still coming. Wait for it, or press Stop, then send again; your text stays in the box."
BUSY_RETRYING = "The answer is still coming. Wait for it, or press Stop, then retry."
DEFAULTS = GenerationSettings()
OUT_DIR = Path(tempfile.gettempdir()) / "eagle2-demo"  # drawings, exports, frames; gradio copies them
_DONE = object()
# the page redraws the whole answer for each update: one per token at a fast model's rate keeps the
# browser so busy that a click on Stop waits for the answer's end (seen in CI); ~12 a second reads smoothly
PAGE_UPDATE_INTERVAL_S = 0.08


def on_own_thread(work: Callable[[Callable[[Any], None], threading.Event], None]) -> Iterator:
    """Yield what `work(emit, cancel)` emits, running it on one thread of its own.

    The work (loading, decoding) then never waits on gradio. Closing this generator (Stop, a
    client's cancel, ZeroGPU's stop at the next yield) sets `cancel`, and the decode loop ends after
    its current token, freeing the engine.
    """
    items: queue.Queue = queue.Queue()
    cancel = threading.Event()

    def run():
        try:
            work(items.put, cancel)
        except BaseException as e:  # handed to the consumer, who raises it
            items.put(e)
        finally:
            items.put(_DONE)

    worker = threading.Thread(target=run, name="eagle2-decode", daemon=True)
    worker.start()
    try:
        while (item := items.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.set()
        worker.join(timeout=30)  # the engine stops after the token it is on


@dataclass
class AnswerUpdate:
    """What the model side streams (pickled across ZeroGPU's worker): the answer so far, or a status."""

    text: str = ""
    status: str | None = None
    stats: dict | None = None  # with the last update


def settings_from(*values) -> GenerationSettings:
    """The settings a client sent, in SETTING_RANGES' order, checked; a gr.Error naming the first bad one."""
    named = dict(zip(SETTING_RANGES, values))
    seed = named.get("seed")
    if isinstance(seed, str):  # the Seed box: empty for a fresh answer each time
        named["seed"] = None if not seed.strip() else int(seed) if re.fullmatch(r"\s*\d{1,19}\s*", seed) else seed
    try:
        return GenerationSettings.checked(**named)
    except SettingsError as e:
        raise gr.Error(str(e), print_exception=False) from None


def annotate(answer: str, turns: list[Message]) -> str | None:
    """Draw the answer's boxes on the latest image of the chat; the PNG's path, or None."""
    boxes = grounding.parse_boxes(answer)
    images = [p for t in turns for p in t.images]
    if not boxes or not images:
        return None
    try:  # upright and within the limits, as the model saw it
        drawn = grounding.draw_boxes(media.open_image(images[-1]), boxes)
    except media.MediaError:
        return None
    return _saved(drawn, f"{images[-1]}|{boxes}", "boxes")


def _saved(image, identity: str, kind: str) -> str:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{kind}-{hashlib.sha1(identity.encode()).hexdigest()[:16]}.png"
    image.save(path)
    return str(path)


def model_failure(what: str) -> str:
    """A message for an unexpected server-side failure: its details go to the log under a reference."""
    reference = uuid.uuid4().hex[:8]
    log.exception("%s (reference %s)", what, reference)
    return f"Something went wrong on the server (reference {reference}). Try again, or Clear the chat."


@contextmanager
def _only_user_errors(what: str) -> Iterator[None]:
    try:
        yield
    except gr.Error:
        raise
    except Exception:
        raise gr.Error(model_failure(f"{what} failed"), print_exception=False) from None


def error_boundary(handler: Callable) -> Callable:
    """What a handler lets out reaches the user as a gr.Error: its own messages as they are, anything
    unexpected as the reference message (the details go to the log)."""
    if inspect.isgeneratorfunction(handler):
        @wraps(handler)
        def streaming(*args, **kwargs):
            with _only_user_errors(handler.__name__):
                yield from handler(*args, **kwargs)
        return streaming

    @wraps(handler)
    def plain(*args, **kwargs):
        with _only_user_errors(handler.__name__):
            return handler(*args, **kwargs)
    return plain


def _refuse(message: str):
    raise gr.Error(message, print_exception=False)


class _Halt(threading.Event):
    """A page answer's end, asked for by Stop (`keep`: the answer so far stays, marked stopped) or
    by Undo or Clear (it goes)."""

    keep = True


def _recorded(records: dict | None, key: str, limit: int, fresh: bool = False, **fields) -> dict:
    """Session records (answer_key -> made_with, rating), bounded: old retries drop out. The record
    at `key` gains `fields`, or is made anew with them when `fresh`."""
    records = dict(list((records if isinstance(records, dict) else {}).items())[-limit:])
    return {**records, key: {**({} if fresh else records.get(key, {})), **fields}}


class ChatHandlers:
    """The app's handlers over the models of `menu`. `gpu` is `spaces.GPU` on ZeroGPU: it runs the
    model side of each answer in its GPU worker, so what crosses into it is plain picklable data.
    Per-session state comes in as arguments (gr.State): `answering`, and `records`, which holds what
    each answer was made with and its rating, for the export."""

    def __init__(self, menu: Backend, limits: Limits, gpu: Callable | None = None,
                 examples: list[tuple[str, list[str], str | None]] = ()):
        self.menu, self.limits, self.gpu = menu, limits, gpu
        self.examples = list(examples)  # (question, image paths, video path) of the example cards
        self.models = menu.names
        self.generated: set[str] = set()  # drawings, exports, frames: deleted with the uploads
        # session -> the Stop of the page's answer now streaming there (gradio's own cancel alone was
        # not always heard, 6.31); an entry lives as long as its answer
        self._stops: dict[str, _Halt] = {}
        if gpu is not None:  # ZeroGPU asks up front for the seconds of GPU an answer may take
            self.answer_updates = gpu(duration=lambda turns, model, system, settings: menu.gpu_seconds(
                model, settings.max_new_tokens, sum(len(t.files) for t in turns)))(self.answer_updates)

    # ------------------------------------------------------------------ model and status
    def checked_model(self, model: str | None) -> str:
        if model is None:
            return self.models[0]
        if model not in self.models:  # never load whatever a client names
            _refuse(f"Unknown model; this app serves {', '.join(self.models)}.")
        return model

    def status(self, model: str, state: str | None = None) -> str:
        return f"**Model** {model} · {state or self.menu.status(model)}"

    def wait_note(self, model: str, images, video, max_tiles, num_frames) -> str:
        """On a CPU, before sending: the wait for the images, video and settings chosen."""
        paths = [item[0] for item in images or []]
        if self.gpu is not None or not (paths or video):
            return ""
        try:
            settings = GenerationSettings.checked(max_tiles=max_tiles, num_frames=num_frames)
            chat_model = self.menu.model(self.checked_model(model))
            estimate = chat_model.first_word_estimate(paths, video, settings)
        except (UserError, gr.Error):  # a file or value that the answer itself refuses, saying why
            return ""
        return "" if estimate is None else f"**Wait** {wait.describe(estimate, loaded=chat_model.loaded)}"

    def default_tiles(self, model: str):
        """On a CPU, the tile limit for a first word in about 10 s there (see wait.py)."""
        tiles = None if self.gpu is not None else self.menu.model(self.checked_model(model)).cpu_default_tiles()
        return gr.skip() if tiles is None else tiles

    # ------------------------------------------------------------------ what waits to be sent
    def in_chat(self, history: list[dict]) -> int:
        return sum(len(t.files) for t in conversation(history or []))

    def gallery_update(self, history: list[dict], records: dict | None, items, **changes) -> dict:
        """The gallery's label (what the chat holds and what waits, against the chat's limit) and,
        with `items`, its images numbered as the model will see them (`<image k>`: images and
        video frames counted over the chat; a video's frames as its answer read them)."""
        label = (f"Images · {self.in_chat(history) + len(items or [])} of {self.limits.max_images_per_conversation} "
                 "in this chat")
        if items is None:
            return gr.update(label=label, **changes)
        seen = self._visuals_before(history or [], records)
        numbered = [(item[0], f"<image {seen + k}>") for k, item in enumerate(items, 1)]
        return gr.update(label=label, value=numbered or None, **changes)

    @staticmethod
    def _frames_read(records: dict | None, index: int, answer: str) -> int:
        """The video frames the answer at `index` read (the default, where this session has no record)."""
        stats = (((records or {}).get(answer_key(index, answer)) or {}).get("made_with") or {}).get("stats") or {}
        return stats.get("frames") or DEFAULTS.num_frames

    def _visuals_before(self, history: list[dict], records: dict | None) -> int:
        """Images and video frames the model sees in the chat (as `conversation` keeps it: a question
        answered by an error drops out)."""
        seen, video_waiting = 0, False
        for index, message in enumerate(history):
            if is_error(message):
                if index and history[index - 1]["role"] == "user":
                    seen, video_waiting = seen - len(question(history[index - 1]).images), False
            elif message["role"] == "user":
                asked = question(message)
                seen, video_waiting = seen + len(asked.images), bool(asked.video)
            elif video_waiting:
                seen, video_waiting = seen + self._frames_read(records, index, answer_text(message)), False
        return seen

    def _checked_images(self, paths: list[str], history: list[dict], waiting: int) -> list[str]:
        """Of `paths` (added to `waiting` images), those that open, are within the limits and fit in
        the chat; a toast for each one refused, saying why and what to do."""
        kept, room = [], self.limits.max_images_per_conversation - self.in_chat(history) - waiting
        for path in paths:
            try:
                media.image_size(path, self.limits)
            except media.MediaError as e:
                gr.Warning(f"{e} It was not added.")
                continue
            if len(kept) >= room:
                gr.Warning(f"{Path(path).name} was not added: a chat holds {self.limits.max_images_per_conversation} "
                           "images and videos. Remove one from the gallery, or Clear the chat for more.")
                continue
            kept.append(path)
        return kept

    def check_gallery(self, images, history: list[dict], records: dict | None):
        """The gallery after any change (an upload, a removal): each image checked, a refused one out
        at once, the rest numbered. Unchanged when all is in order (its own update changes it again)."""
        items = list(images or [])
        kept = set(self._checked_images([item[0] for item in items], history, 0))
        update = self.gallery_update(history, records, [item for item in items if item[0] in kept])
        in_order = [tuple(item) for item in items] == list(update.get("value") or [])
        return gr.skip() if in_order else update

    def take_attached(self, box: dict | None, images, video, history: list[dict], records: dict | None,
                      taken: list[str] | None):
        """Files pasted, dropped or attached in the message box move to the gallery (images, checked and
        numbered) or the video slot; the box keeps its text. `taken`: what the last call moved (the
        box reports a file twice), to be left alone."""
        files = [f for f in (box or {}).get("files") or [] if isinstance(f, str) and f not in (taken or [])]
        if not files:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        items = list(images or [])
        videos = [f for f in files if is_video(f)]
        added = self._checked_images([f for f in files if not is_video(f)], history, len(items))
        if len(videos) > 1 or (videos and video):
            gr.Info(f"A message holds one video: {Path(videos[-1]).name} takes the video slot.")
        # the gallery untouched when nothing joins it: a removal meanwhile must stand
        gallery = self.gallery_update(history, records, items + [(p, None) for p in added]) if added else gr.skip()
        return ({"text": (box or {}).get("text") or "", "files": []}, gallery, videos[-1] if videos else gr.skip(),
                files)

    def add_message(self, box: dict | None, images, video, history: list[dict], answering: bool):
        """The question into the chat, the inputs emptied. Refused (a toast; the text stays in the box)
        while an answer streams, or when there is nothing to send; the answer then does not start."""
        text = (box or {}).get("text") or ""
        images = [item[0] for item in images or []]
        if answering:
            _refuse(BUSY_SENDING)
        if (box or {}).get("files"):  # not yet moved to the gallery: sent as they are
            images += [f for f in box["files"] if isinstance(f, str) and not is_video(f)]
        if not (text.strip() or images or video):
            _refuse("Type a question, or add an image or a video.")
        history = history + [user_message(text, images, video)]
        return (history, {"text": "", "files": []}, self.gallery_update(history, None, None, value=None), None, "",
                True, None)

    def run_example(self, example: gr.SelectData, history: list[dict], answering: bool):
        """A tapped example card: its question, images and video asked at once (found by its index:
        what a client sends is never taken as a path)."""
        text, images, video = self.examples[example.index]
        return self.add_message({"text": text}, [(p, None) for p in images], video, history, answering)

    # ------------------------------------------------------------------ answering
    def answer_updates(self, turns: list[Message], model: str, system: str,
                       settings: GenerationSettings) -> Iterator[AnswerUpdate]:
        """The model side of an answer (in ZeroGPU's worker there): load if needed, then stream.
        Every failure leaves as a gr.Error whose message is meant for the user."""
        menu = self.menu

        def work(emit, cancel):
            def loading(fraction, text):
                emit(AnswerUpdate(status=text if fraction is None else f"{text} ({fraction:.0%})"))

            def stage(fraction, text):  # its text counts what is done already
                emit(AnswerUpdate(status=text))

            with menu.use(model, loading) as chat_model:
                emit(AnswerUpdate(status=menu.status(model)))
                generation = chat_model.chat(turns, system, settings, cancel=cancel, progress=stage)
                text = ""
                for delta in generation:
                    text += delta
                    emit(AnswerUpdate(text=text))
                emit(AnswerUpdate(text=text, stats={
                    "model": model, "weights": getattr(chat_model, "weights", None),  # "4-bit weights", if so
                    "tokens": len(generation.token_ids),
                    "ttft_s": generation.timings.get("ttft_s"),
                    "tokens_per_s": generation.timings.get("decode_tokens_per_s"),
                    "image_tiles": sum(generation.num_tiles) - generation.num_frames,
                    "frames": generation.num_frames, "reused_tokens": generation.timings.get("reused_tokens"),
                    "finish_reason": generation.finish_reason}))

        try:
            yield from on_own_thread(work)
        except UserError as e:  # the user can act on it (a LoadError is the operator's too)
            if isinstance(e, LoadError):
                log.warning("%s", e)
            raise gr.Error(hide_paths(str(e), turns), print_exception=False) from None
        except Exception:
            raise gr.Error(model_failure(f"answering with {model} failed"), print_exception=False) from None

    def _stream(self, turns: list[Message], model: str, system: str | None,
                settings: GenerationSettings) -> Iterator[AnswerUpdate]:
        """The one way to an answer, for the page and the API; the last update holds the stats."""
        updates = self.answer_updates(turns, self.checked_model(model), "" if system is None else system, settings)
        try:
            yield from updates
        finally:
            updates.close()  # stops the decode (in ZeroGPU's worker: at its next yield)

    @error_boundary
    def respond(self, history: list[dict], model: str, system: str, max_tiles, num_frames, temperature, top_p,
                max_new_tokens, repetition_penalty, top_k, seed, records: dict | None = None,
                request: gr.Request = None) -> Iterator[tuple]:
        """Streams (chat, status, answering, records) for the chat's last question."""
        if not history or history[-1]["role"] != "user" or is_error(history[-1]):
            yield gr.skip(), gr.skip(), False, gr.skip()  # nothing asked
            return
        turns, model, settings = conversation(history), self.checked_model(model), settings_from(
            max_tiles, num_frames, temperature, top_p, max_new_tokens, repetition_penalty, top_k, seed)
        text, stats, shown_at = "", None, 0.0
        session = getattr(request, "session_hash", None) or uuid.uuid4().hex
        stop = self._stops[session] = _Halt()
        try:  # closing: Stop closes this generator, and that must reach the decode at once
            with closing(self._stream(turns, model, system, settings)) as updates:
                for update in updates:
                    if stop.is_set():  # the same chat as Stop's (or Undo's, Clear's) reply, whichever comes last
                        kept = [answer_message(text)] if text else []
                        shown = stopped(history + kept) if stop.keep else gr.skip()
                        yield shown, self.status(model), False, gr.skip()
                        return
                    if update.status:
                        yield history, self.status(model, update.status), gr.skip(), gr.skip()
                        continue
                    text, stats = update.text, update.stats or stats
                    if time.monotonic() - shown_at >= PAGE_UPDATE_INTERVAL_S:  # the rest: with the next, or the last
                        shown_at = time.monotonic()
                        yield history + [answer_message(text)], gr.skip(), gr.skip(), gr.skip()
        except gr.Error as e:
            kept = [answer_message(text)] if text else []
            yield history + kept + [error_message(e.message)], self.status(model), False, gr.skip()
            return
        finally:
            if self._stops.get(session) is stop:
                del self._stops[session]
        drawn = annotate(text, turns)
        if drawn:
            self.generated.add(drawn)
        footer = answer_footer(model, stats) if stats else None
        if not text.strip():  # a blank bubble would look like a fault of the page
            footer = " · ".join(filter(None, ["the model ended its answer without writing anything", footer]))
        made_with = {"model": model, "system_prompt": system, "settings": asdict(settings),
                     "stats": stats}
        # a new record: a rating of an earlier answer in this place does not carry over
        records = _recorded(records, answer_key(len(history), text), self.limits.max_chat_messages, fresh=True,
                             made_with=made_with)
        yield history + [answer_message(text, drawn, footer)], self.status(model), False, records

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
        settings = settings_from(max_tiles, num_frames, temperature, top_p, max_new_tokens, repetition_penalty,
                                 top_k, seed)
        text = ""
        with closing(self._stream(turns, self.checked_model(model), system, settings)) as updates:
            for update in updates:  # a client's cancel closes this generator, and so the decode
                if not update.status and update.text != text:
                    text = update.text
                    yield text
        if not text:
            yield text

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
            _refuse(BUSY_RETRYING)
        history = without_answers(history)
        if not history:
            _refuse("Nothing to retry yet: ask a question first.")
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
        return _recorded(records, key, self.limits.max_chat_messages, rating=rating)

    def frames_seen(self, history: list[dict], records: dict | None):
        """The frames the last answer about a video read, with their times, for the expandable row."""
        turns = conversation(history or [])
        video = next((t.video for t in reversed(turns) if t.video), None)
        if video is None:
            return None
        answers = [i for i, m in enumerate(history) if m["role"] == "assistant" and not is_error(m)]
        frames = self._frames_read(records, answers[-1], answer_text(history[answers[-1]])) if answers \
            else DEFAULTS.num_frames
        try:
            clip = media.sample_video(video, frames, self.limits, frame_size=(224, 224))
        except media.MediaError:
            return None
        shown = []
        for i, (frame, t) in enumerate(zip(clip.frames, clip.timestamps), 1):
            path = _saved(frame, f"{video}|{frames}|{i}", "frame")
            self.generated.add(path)
            shown.append((path, f"Frame {i} · {t:.2f} s"))
        return shown

    @error_boundary
    def export(self, history: list[dict], model: str | None = None, system: str = DEFAULT_SYSTEM_PROMPT,
               max_tiles=DEFAULTS.max_tiles, num_frames=DEFAULTS.num_frames, temperature=DEFAULTS.temperature,
               top_p=DEFAULTS.top_p, max_new_tokens=DEFAULTS.max_new_tokens,
               repetition_penalty=DEFAULTS.repetition_penalty, top_k=DEFAULTS.top_k, seed=None,
               records: dict | None = None) -> str | None:
        """The chat and the settings used, as a JSON file to download."""
        if not history:
            return None
        model, system = self.checked_model(model), "" if system is None else system
        settings = settings_from(max_tiles, num_frames, temperature, top_p, max_new_tokens, repetition_penalty,
                                 top_k, seed)
        chars, limits = len(system) + sum(len(parts(m)[0]) for m in history), self.limits
        if len(history) > limits.max_chat_messages or chars > limits.max_chat_chars:  # the chat's own limits
            _refuse(f"This chat is too long to export ({len(history):,} messages, {chars:,} characters; the "
                    f"limits are {limits.max_chat_messages:,} and {limits.max_chat_chars:,}).")
        data = export_json(history, model, system, settings, records if isinstance(records, dict) else None)
        # a lone surrogate (which no file can hold) becomes "?"
        text = json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8", "replace").decode("utf-8")
        folder = OUT_DIR / hashlib.sha1(text.encode()).hexdigest()[:16]  # one folder per export: a clean name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"eagle2-chat-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(text, encoding="utf-8")
        self.generated.add(str(path))
        return str(path)

