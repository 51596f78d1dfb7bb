"""The Gradio app: image gallery and video uploads, settings, a streaming chat, grounding boxes,
conversation export, and a `chat` endpoint for gradio_client.

Declarative Blocks: each event is `fn, inputs, outputs`, chained with `.then`. The conversation
lives in the Chatbot (each user message holds its files, then its text). No model code here:
engines come from the ModelMenu, and only the engine module's `Message` is imported, when the
first request arrives. The model side of an answer (`answer_updates`) takes and yields plain
data, so that on ZeroGPU it can run in the GPU worker; Stop closes the handler's generator.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import mimetypes
import queue
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import wraps
from pathlib import Path
from typing import Any

import gradio as gr

from . import grounding, media, wait
from .config import DEFAULT_SYSTEM_PROMPT, LIMITS, SETTING_RANGES, GenerationSettings, Limits, SettingsError
from .gradio_inputs import HISTORY_HINT, CheckedBlocks, InputError, taken_as_sent, text_only
from .models import LoadError, ModelMenu

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
ERROR_TITLE = "⚠️ Could not answer"  # metadata title that marks error bubbles (never sent to the model)
STOPPED_TITLE = "Stopped"  # a question stopped before its answer began: dropped like an error
BUSY_SENDING = "The answer is still coming. Wait for it, or press Stop, then send again; your text stays in the box."
BUSY_RETRYING = "The answer is still coming. Wait for it, or press Stop, then retry."
DEFAULTS = GenerationSettings()
EXAMPLES = [  # (question, images, video) from assets/, drawn by assets/make_assets.py
    ("What does this chart show? Which quarter had the best profit margin?", ["chart.png"], None),
    ("Who is this letter addressed to, and what is the total amount?", ["document.jpg"], None),
    ("Describe this picture in detail.", ["scene.jpg"], None),
    ("Please provide the bounding box coordinate of the region this sentence describes: <ref>the house</ref>",
     ["scene.jpg"], None),
    ("What are the differences between these two pictures?", ["compare_a.jpg", "compare_b.jpg"], None),
    ("What happens in this video?", [], "ball.mp4"),
]
ANSWERS = "answers"  # the concurrency group of every event that runs a model (see request_guard)
OUT_DIR = Path(tempfile.gettempdir()) / "eagle2-demo"  # annotated images and exports; gradio copies them

CSS = """
#chat .message img {max-height: 240px; width: auto;}
/* a question's images as a compact row of thumbnails (a click enlarges one), its text below */
#chat .user-row .message.user {display: flex; flex-wrap: wrap; justify-content: flex-end; gap: 6px;}
#chat .user-row .message.user > .message.component {width: auto; max-width: 168px;}
#chat .user-row .message.user > .message.component img {max-height: 120px;}
#chat .user-row .message.user > .message:not(.component) {flex-basis: 100%;}
@media (max-width: 640px) {
  #examples {max-width: calc(100vw - 64px); overflow-x: auto;}
  #chat {height: 60vh !important;}
}
"""


def theme() -> gr.themes.Base:
    """NVIDIA green on a soft theme, with system fonts only (no font downloads: works offline)."""
    sans = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
    mono = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
    return gr.themes.Soft(primary_hue="lime", secondary_hue="emerald", neutral_hue="slate",
                          font=sans, font_mono=mono)


# ----------------------------------------------------------------------------- chat messages
def _parts(message: dict) -> tuple[str, list[str]]:
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


def _answer_text(message: dict) -> str:
    """An answer's own text: its first text part (a footer may follow it)."""
    content = message.get("content")
    for item in content if isinstance(content, list) else [content]:
        if isinstance(item, str):
            return item
        if isinstance(item, dict) and item.get("type") == "text":
            return item.get("text") or ""
    return ""


def _is_video(path: str) -> bool:
    return (mimetypes.guess_type(path)[0] or "").startswith("video/")


def _is_error(message: dict) -> bool:
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


def stopped(history: list[dict]) -> list[dict]:
    """The chat after Stop: the answer so far marked as stopped, or, when none had begun (the model
    was loading, or reading the images), a note in its place, so the next question stands alone."""
    if history and history[-1]["role"] == "user":
        return history + [error_message("Stopped before the answer began. Send a question when you are ready.",
                                        STOPPED_TITLE)]
    if history and not _is_error(history[-1]):
        text = _answer_text(history[-1])
        return history[:-1] + [answer_message(text, footer="stopped")]
    return history


def controls(history: list[dict], answering: bool, exported) -> tuple:
    """Stop, Retry, Undo, Clear and Export: each enabled only when it can act (Export once the file
    of the chat so far is written: a new question empties it)."""
    asked = any(m["role"] == "user" for m in history or [])
    return (gr.update(interactive=answering), gr.update(interactive=asked and not answering),
            gr.update(interactive=bool(history)), gr.update(interactive=bool(history)),
            gr.update(interactive=bool(exported) and not answering))


def conversation(history: list[dict]) -> list[dict]:
    """The chat as the model sees it: [{role, text, images, video}]. An error bubble drops itself
    and the question it answered (if nothing was streamed), so a bad upload never sticks."""
    out: list[dict] = []
    for message in history:
        if _is_error(message):
            if out and out[-1]["role"] == "user":
                out.pop()
            continue
        text, files = _parts(message)
        if message["role"] == "user":
            videos = [f for f in files if _is_video(f)]
            out.append({"role": "user", "text": text, "images": [f for f in files if not _is_video(f)],
                        "video": videos[-1] if videos else None})
        elif message["role"] == "assistant":  # files in answers are our own drawings, the footer is ours
            out.append({"role": "assistant", "text": _answer_text(message), "images": [], "video": None})
    return out


def hide_paths(text: str, turns: list[dict]) -> str:
    """Upload paths in a message -> bare file names: users need not see the server's folders."""
    for turn in turns:
        for path in [*turn["images"], *([turn["video"]] if turn["video"] else [])]:
            text = text.replace(str(path), Path(path).name)
    return text


def engine_messages(turns: list[dict]) -> list:
    from .engine import Message  # imported late: it brings torch, which the page does not need

    return [Message(t["role"], t["text"], list(t["images"]), t["video"]) for t in turns]


_DONE = object()


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


def settings_from(max_tiles, num_frames, temperature, top_p, max_new_tokens, repetition_penalty,
                  top_k=DEFAULTS.top_k, seed=None) -> GenerationSettings:
    """The settings a client sent, checked; a gr.Error naming the first bad one."""
    if isinstance(seed, str):  # the Seed box: empty for a fresh answer each time
        seed = None if not seed.strip() else int(seed) if re.fullmatch(r"\s*\d{1,19}\s*", seed) else seed
    try:
        return GenerationSettings.checked(
            max_tiles=max_tiles, num_frames=num_frames, temperature=temperature, top_p=top_p, top_k=top_k,
            max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty, seed=seed)
    except SettingsError as e:
        raise gr.Error(str(e), print_exception=False) from None


def slider(name: str, step: float, **options) -> gr.Slider:
    """A setting's slider, over the range every entry point accepts."""
    r = SETTING_RANGES[name]
    return gr.Slider(r.low, r.high, getattr(DEFAULTS, name), step=step, label=r.label, **options)


# ----------------------------------------------------------------------------- grounding
def annotate(answer: str, turns: list[dict]) -> str | None:
    """Draw the answer's boxes on the latest image of the chat; the PNG's path, or None."""
    boxes = grounding.parse_boxes(answer)
    images = [p for t in turns for p in t["images"]]
    if not boxes or not images:
        return None
    try:  # upright and within the limits, as the model saw it
        drawn = grounding.draw_boxes(media.open_image(images[-1]), boxes)
    except media.MediaError:
        return None
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(f"{images[-1]}|{boxes}".encode()).hexdigest()[:16]
    path = OUT_DIR / f"boxes-{key}.png"
    drawn.save(path)
    return str(path)


# ----------------------------------------------------------------------------- export
def export_json(history: list[dict], model: str, system: str, settings: GenerationSettings,
                made: dict | None = None) -> dict:
    """The chat as JSON: each answer with what it was made with (`made`: answer_key -> model,
    system prompt, settings and stats), where this session made it; the current settings besides."""
    messages = []
    for message in history:
        text, files = _parts(message)
        if _is_error(message):
            messages.append({"role": "assistant", "error": text})
        elif message["role"] == "user":
            messages.append({"role": "user", "text": text,
                             "images": [Path(f).name for f in files if not _is_video(f)],
                             "video": next((Path(f).name for f in files if _is_video(f)), None)})
        else:
            record = (made or {}).get(answer_key(_answer_text(message)))
            messages.append({"role": "assistant", "text": text, **({"made_with": record} if record else {})})
    return {"app": "Eagle2 Demo", "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": model, "system_prompt": system, "settings": asdict(settings), "messages": messages}


# ----------------------------------------------------------------------------- the app
def load_hint(model: str) -> str:
    if Path(model).exists():
        return ""
    return ("\n\nNo network? Make a tiny test checkpoint and serve it instead: "
            "`python -m eagle_demo tiny --out ./tiny-eagle2 && python app.py --model ./tiny-eagle2`, "
            "or pass `--model` a folder that holds a downloaded Eagle2 checkpoint.")


def limits_markdown(limits: Limits) -> str:
    return (f"**Limits** · one answer at a time per visitor · "
            f"up to {limits.max_images_per_conversation} images and videos per chat · "
            f"files up to {limits.max_upload_mb} MB · images up to {limits.max_image_pixels / 1e6:.0f} MP "
            f"({limits.max_image_side:,} px a side) · videos up to {limits.max_video_pixels / 1e6:.1f} MP a frame "
            f"and {limits.max_video_seconds / 3600:g} h, {limits.max_video_frames} sampled frames · messages up to "
            f"{limits.max_prompt_chars:,} characters · {limits.context_tokens:,} tokens of context (tiles per image "
            f"are lowered to fit)")


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


def answer_footer(model: str, stats: dict) -> str:
    """The line under an answer: which model wrote it, and how fast."""
    parts = [model, f"{stats['tokens']} tokens"]
    if stats.get("ttft_s") is not None:
        parts.append(f"{stats['ttft_s']:.1f} s to first token")
    if stats.get("tokens_per_s"):
        parts.append(f"{stats['tokens_per_s']:.0f} tokens/s")
    if stats.get("tiles"):
        parts.append(f"{stats['tiles']} tiles and frames")
    return " · ".join(parts)


def answer_key(text: str) -> str:
    """What an answer's record (see `respond`) is found by in the export: its text's digest."""
    return hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()


def build_app(menu: ModelMenu, limits: Limits = LIMITS, gpu: Callable | None = None, concurrency: int = 1,
              delete_cache: tuple[int, int] | None = None) -> gr.Blocks:
    """The Blocks app over the models of `menu`. `gpu` is `spaces.GPU` on ZeroGPU: it runs the model
    side of each answer in its GPU worker, so what crosses into it is plain picklable data."""
    generated: set[str] = set()  # drawings and exports: deleted with the uploads (see delete_cache below)
    models = menu.names

    def checked_model(model: str | None) -> str:
        if model is None:
            return models[0]
        if model not in models:  # never load whatever a client names
            raise gr.Error(f"Unknown model; this app serves {', '.join(models)}.", print_exception=False)
        return model

    def status(model: str, state: str | None = None) -> str:
        return f"**Model** {model} · {state or menu.status(model)}"

    def wait_note(model: str, images, video, max_tiles, num_frames) -> str:
        """On a CPU, before sending: the wait for the images, video and settings chosen."""
        paths = [item[0] for item in images or []]
        if gpu is not None or not (paths or video):
            return ""
        try:
            settings = GenerationSettings.checked(max_tiles=max_tiles, num_frames=num_frames)
            engine = menu.engine(checked_model(model))
            estimate = engine.first_word_estimate(paths, video, settings)
        except (ValueError, gr.Error):  # a file or value that the answer itself refuses, saying why
            return ""
        return "" if estimate is None else f"**Wait** {wait.describe(estimate, loaded=engine.model is not None)}"

    def default_tiles(model: str):
        """On a CPU, the tile limit for a first word in about 10 s there (see wait.py)."""
        tiles = None if gpu is not None else menu.engine(checked_model(model)).cpu_default_tiles()
        return gr.skip() if tiles is None else tiles

    def in_chat(history: list[dict]) -> int:
        return sum(len(t["images"]) + bool(t["video"]) for t in conversation(history or []))

    def gallery_label(history: list[dict], images) -> str:
        """The gallery's label, counting what the chat holds and what waits to be sent."""
        return f"Images · {in_chat(history) + len(images or [])} of {limits.max_images_per_conversation} in this chat"

    def check_added(images, history: list[dict]):
        """Images as they are added: each one must open and be within the limits, and the chat must
        have room for it. A refused file leaves the gallery at once, with a toast saying why."""
        kept, room = [], limits.max_images_per_conversation - in_chat(history)
        for item in images or []:
            try:
                media.image_size(item[0], limits)
            except media.MediaError as e:
                gr.Warning(f"{e} It was not added.")
                continue
            if len(kept) >= room:
                gr.Warning(f"{Path(item[0]).name} was not added: a chat holds {limits.max_images_per_conversation} "
                           "images and videos. Remove one from the gallery, or Clear the chat for more.")
                continue
            kept.append(item)
        refused = len(kept) < len(images or [])
        return gr.update(label=gallery_label(history, kept), **(dict(value=kept) if refused else {}))

    def add_message(text: str, images, video, history: list[dict], answering: bool):
        """The question into the chat, the inputs emptied. Refused (a toast; the text stays in the box)
        while an answer streams, or when there is nothing to send; the answer then does not start."""
        images = [item[0] for item in images or []]
        if answering:
            raise gr.Error(BUSY_SENDING, print_exception=False)
        if not (text.strip() or images or video):
            raise gr.Error("Type a question, or add an image or a video.", print_exception=False)
        history = history + [user_message(text, images, video)]
        return history, "", gr.update(value=None, label=gallery_label(history, [])), None, "", True, None

    def answer_updates(turns: list[dict], model: str, system: str,
                       settings: GenerationSettings) -> Iterator[AnswerUpdate]:
        """The model side of an answer (in ZeroGPU's worker there): load if needed, then stream.
        Every failure leaves as a gr.Error whose message is meant for the user."""
        def work(emit, cancel):
            with menu.use(model, lambda fraction, text: emit(AnswerUpdate(status=text))) as engine:
                emit(AnswerUpdate(status=menu.status(model)))
                generation = engine.chat(engine_messages(turns), system, settings, cancel=cancel,
                                         progress=lambda stage: emit(AnswerUpdate(status=stage)))
                text = ""
                for delta in generation:
                    text += delta
                    emit(AnswerUpdate(text=text))
                emit(AnswerUpdate(text=text, stats={
                    "model": model, "tokens": len(generation.token_ids),
                    "ttft_s": generation.timings.get("ttft_s"),
                    "tokens_per_s": generation.timings.get("decode_tokens_per_s"),
                    "tiles": sum(generation.num_tiles), "reused_tokens": generation.timings.get("reused_tokens"),
                    "finish_reason": generation.finish_reason}))

        try:
            yield from on_own_thread(work)
        except LoadError as e:
            log.warning("%s", e)
            raise gr.Error(f"{e}{load_hint(menu.checkpoint(model))}", print_exception=False) from None
        except ValueError as e:  # MediaError / PromptError / a checkpoint that cannot load: the user can act
            raise gr.Error(hide_paths(str(e), turns), print_exception=False) from None
        except Exception:
            raise gr.Error(model_failure(f"answering with {model} failed"), print_exception=False) from None

    if gpu is not None:  # ZeroGPU asks up front for the seconds of GPU an answer may take
        answer_updates = gpu(duration=lambda turns, model, system, settings: menu.gpu_seconds(
            model, settings.max_new_tokens, sum(len(t["images"]) + bool(t["video"]) for t in turns)))(answer_updates)

    @error_boundary
    def respond(history: list[dict], model: str, system: str, max_tiles, num_frames, temperature, top_p,
                max_new_tokens, repetition_penalty, top_k, seed, made: dict | None = None) -> Iterator[tuple]:
        """Streams (chat, status, answering, made): `made` (session state) records what each answer
        was made with, for the export."""
        if not history or history[-1]["role"] != "user" or _is_error(history[-1]):
            yield gr.skip(), gr.skip(), False, gr.skip()  # nothing asked
            return
        turns = conversation(history)
        settings = settings_from(max_tiles, num_frames, temperature, top_p, max_new_tokens, repetition_penalty,
                                 top_k, seed)
        model = checked_model(model)
        updates = answer_updates(turns, model, "" if system is None else system, settings)
        text, stats = "", None
        try:
            for update in updates:
                if update.status:
                    yield history, status(model, update.status), gr.skip(), gr.skip()
                    continue
                text, stats = update.text, update.stats or stats
                yield history + [answer_message(text)], gr.skip(), gr.skip(), gr.skip()
        except gr.Error as e:
            kept = [answer_message(text)] if text else []
            yield history + kept + [error_message(e.message)], status(model), False, gr.skip()
            return
        finally:
            updates.close()  # stops the decode (in ZeroGPU's worker: at its next yield)
        drawn = annotate(text, turns)
        if drawn:
            generated.add(drawn)
        footer = answer_footer(model, stats) if stats else None
        if not text.strip():  # a blank bubble would look like a fault of the page
            footer = " · ".join(filter(None, ["the model ended its answer without writing anything", footer]))
        record = {"model": model, "system_prompt": system, "settings": asdict(settings), "stats": stats}
        made = dict(list((made or {}).items())[-limits.max_chat_messages:])  # bounded: old retries drop out
        yield history + [answer_message(text, drawn, footer)], status(model), False, {**made, answer_key(text): record}

    @error_boundary
    def chat_api(message: str, images: list[str] | None = None, video: str | None = None,
                 history: list[dict] | None = None, system: str = DEFAULT_SYSTEM_PROMPT,
                 max_tiles=DEFAULTS.max_tiles, num_frames=DEFAULTS.num_frames, temperature=DEFAULTS.temperature,
                 top_p=DEFAULTS.top_p, max_new_tokens=DEFAULTS.max_new_tokens,
                 repetition_penalty=DEFAULTS.repetition_penalty, top_k=DEFAULTS.top_k, seed: int | None = None,
                 model: str | None = None) -> Iterator[str]:
        """Answer `message` about `images` / `video` after `history` ([{"role", "content"}] text
        messages); streams the answer so far."""
        history = [] if history is None else history
        if not isinstance(history, list) or not all(
                isinstance(h, dict) and h.get("role") in ("user", "assistant") for h in history):
            raise InputError(f"history must be {HISTORY_HINT}.")
        turns = [{"role": h["role"], "text": _parts(h)[0], "images": [], "video": None} for h in history]
        turns.append({"role": "user", "text": message or "", "images": list(images or []), "video": video})
        settings = settings_from(max_tiles, num_frames, temperature, top_p, max_new_tokens, repetition_penalty,
                                 top_k, seed)
        updates = answer_updates(turns, checked_model(model), "" if system is None else system, settings)
        text = ""
        try:
            for update in updates:
                if not update.status and update.text != text:
                    text = update.text
                    yield text
        finally:
            updates.close()
        if not text:
            yield text

    def retry(history: list[dict], answering: bool):
        if answering:
            raise gr.Error(BUSY_RETRYING, print_exception=False)
        while history and history[-1]["role"] == "assistant":
            history = history[:-1]
        if not history:
            raise gr.Error("Nothing to retry yet: ask a question first.", print_exception=False)
        return history, True, None

    def undo(history: list[dict]):
        """Remove the last question and its answer; put the question back in the inputs."""
        while history and history[-1]["role"] == "assistant":
            history = history[:-1]
        if not history:
            return history, gr.skip(), gr.skip(), gr.skip(), False
        text, files = _parts(history[-1])
        images = [f for f in files if not _is_video(f)]
        video = next((f for f in files if _is_video(f)), None)
        return history[:-1], text, images or None, video, False

    @error_boundary
    def export(history: list[dict], model: str = models[0], system: str = DEFAULT_SYSTEM_PROMPT,
               max_tiles=DEFAULTS.max_tiles, num_frames=DEFAULTS.num_frames, temperature=DEFAULTS.temperature,
               top_p=DEFAULTS.top_p, max_new_tokens=DEFAULTS.max_new_tokens,
               repetition_penalty=DEFAULTS.repetition_penalty, top_k=DEFAULTS.top_k, seed=None,
               made: dict | None = None) -> str | None:
        """The chat and the settings used, as a JSON file to download."""
        if not history:
            return None
        model, system = checked_model(model), "" if system is None else system
        settings = settings_from(max_tiles, num_frames, temperature, top_p, max_new_tokens, repetition_penalty,
                                 top_k, seed)
        chars = len(system) + sum(len(_parts(m)[0]) for m in history)
        if len(history) > limits.max_chat_messages or chars > limits.max_chat_chars:  # the chat's own limits
            raise gr.Error(f"This chat is too long to export ({len(history):,} messages, {chars:,} characters; the "
                           f"limits are {limits.max_chat_messages:,} and {limits.max_chat_chars:,}).",
                           print_exception=False)
        data = export_json(history, model, system, settings, made if isinstance(made, dict) else None)
        # a lone surrogate (which no file can hold) becomes "?"
        text = json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8", "replace").decode("utf-8")
        folder = OUT_DIR / hashlib.sha1(text.encode()).hexdigest()[:16]  # one folder per export: a clean name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"eagle2-chat-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(text, encoding="utf-8")
        generated.add(str(path))
        return str(path)

    with CheckedBlocks(title="Eagle2 Demo", analytics_enabled=False, fill_width=True,
                       delete_cache=delete_cache) as demo:
        # gradio deletes the files of these sets on delete_cache's schedule and when it shuts down
        demo.temp_file_sets.append(generated)
        gr.Markdown("# Eagle2 · chat about images and videos\n"
                    "NVIDIA's Eagle2 vision-language models, running natively (no remote code). "
                    "Add images or a video, ask a question, and watch the answer stream in. "
                    "Answers with `<ref>…</ref><box>…</box>` get their boxes drawn on the image.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=300):
                with gr.Row(elem_id="model-row", equal_height=True):  # above the chat: in view on a phone too
                    model = gr.Dropdown(models, value=models[0], label="Model", visible=len(models) > 1,
                                        scale=1, min_width=160)
                    status_md = gr.Markdown(elem_id="status")
                answering = gr.State(False)  # an answer of this session is on its way
                made = gr.State({})  # what each of this session's answers was made with (see respond)
                chatbot = gr.Chatbot(elem_id="chat", label="Chat", height="55vh", min_height=300,
                                     layout="bubble", buttons=["copy", "copy_all"], feedback_options=None,
                                     placeholder="Add images or a video below, then ask about them.")
                with gr.Row(elem_id="uploads"):
                    gallery = gr.Gallery(label=gallery_label([], []),
                                         type="filepath", file_types=["image"], interactive=True, columns=4,
                                         height=130, object_fit="contain", min_width=150)
                    video = gr.Video(label=f"Video (up to {limits.max_upload_mb} MB)", sources=["upload"],
                                     height=130, min_width=150)
                textbox = gr.Textbox(show_label=False, placeholder="Ask about your images or video…",
                                     max_length=limits.max_prompt_chars, submit_btn="Send", elem_id="ask",
                                     lines=1, max_lines=6, autofocus=True)
                wait_md = gr.Markdown(elem_id="wait")
                with gr.Row(elem_id="actions"):
                    # enabled only when they can act (see `controls`): an empty chat has nothing to act on
                    stop_btn = gr.Button("Stop", variant="stop", size="sm", elem_id="stop", min_width=60,
                                         interactive=False)
                    retry_btn = gr.Button("Retry", size="sm", elem_id="retry", min_width=60, interactive=False)
                    undo_btn = gr.Button("Undo", size="sm", elem_id="undo", min_width=60, interactive=False)
                    clear_btn = gr.Button("Clear", size="sm", elem_id="clear", min_width=60, interactive=False)
                    export_btn = gr.DownloadButton("Export", size="sm", elem_id="export", value=None, min_width=60,
                                                   interactive=False)
                examples = gr.Examples([[text, [str(ASSETS / f) for f in images] or None, video and str(ASSETS / video)]
                             for text, images, video in EXAMPLES], inputs=[textbox, gallery, video],
                            label="Examples (all drawn by this project)", elem_id="examples")
            with gr.Column(scale=2, min_width=280):
                with gr.Accordion("Settings", open=True):
                    max_tiles = slider("max_tiles", 1, info="more tiles read finer detail, but take longer")
                    num_frames = slider("num_frames", 1, info="sampled evenly over the whole video")
                    temperature = slider("temperature", 0.05, info="0 = greedy (always the likeliest word)")
                    max_new_tokens = slider("max_new_tokens", 1)
                with gr.Accordion("More settings", open=False):
                    top_p = slider("top_p", 0.05)
                    top_k = slider("top_k", 1, info="0 = off")
                    # a text box: gradio's Number shows 0 for "none", and 0 is a seed like any other
                    seed = gr.Textbox("", label="Seed", placeholder="empty: a fresh answer each time",
                                      info="a whole number repeats an answer", max_length=24)
                    repetition_penalty = slider("repetition_penalty", 0.05)
                    system = gr.Textbox(DEFAULT_SYSTEM_PROMPT, label="System prompt", lines=2, max_lines=8,
                                        max_length=limits.max_prompt_chars)
                gr.Markdown(limits_markdown(limits), elem_id="limits")

        # API-only inputs for the `chat` endpoint (the settings sliders double as its parameters)
        with gr.Column(visible=False):
            api_message = gr.Textbox(label="message")
            api_images = gr.File(file_count="multiple", file_types=["image"], label="images")
            api_video = gr.File(file_types=["video"], label="video")
            api_history = gr.JSON(label="history")
            api_answer = gr.Textbox(label="answer")
            api_button = gr.Button()

        knobs = [max_tiles, num_frames, temperature, top_p, max_new_tokens, repetition_penalty, top_k, seed]
        for component in (*knobs, model):  # checked by name in the handlers (settings_from, checked_model)
            taken_as_sent(component)
        text_only(api_message, "The message")
        text_only(system, "The system prompt")
        model_queue = dict(concurrency_id=ANSWERS, concurrency_limit=concurrency)

        api_button.click(chat_api, [api_message, api_images, api_video, api_history, system, *knobs, model],
                         api_answer, api_name="chat", **model_queue)  # first: the API page lists it first

        def chain_respond(event):  # only after a question was taken: a refused one raised its toast
            return event.success(respond, [chatbot, model, system, *knobs, made], [chatbot, status_md, answering, made],
                                 api_visibility="undocumented", show_progress="minimal", **model_queue)

        # queued, not queue=False: only a queued event's errors reach the page as toasts
        asking = dict(fn=add_message, inputs=[textbox, gallery, video, chatbot, answering],
                      outputs=[chatbot, textbox, gallery, video, wait_md, answering, export_btn],
                      api_visibility="private")
        answered = chain_respond(textbox.submit(**asking))
        example_answered = chain_respond(examples.load_input_event.then(**asking))  # an example runs when clicked
        retried = chain_respond(retry_btn.click(retry, [chatbot, answering], [chatbot, answering, export_btn],
                                                api_visibility="private"))
        generating = [answered, retried, example_answered]
        # gradio closes the running handler: its generator's exit stops the decode
        halted = stop_btn.click(lambda history: (stopped(history), False), chatbot, [chatbot, answering],
                                cancels=generating, queue=False, api_visibility="private")
        undone = undo_btn.click(undo, chatbot, [chatbot, textbox, gallery, video, answering], cancels=generating,
                                queue=False, api_visibility="private")
        cleared = clear_btn.click(lambda: ([], None, False), None, [chatbot, export_btn, answering],
                                  cancels=generating, queue=False, api_visibility="private")
        buttons = [stop_btn, retry_btn, undo_btn, clear_btn, export_btn]
        enable = dict(fn=controls, inputs=[chatbot, answering, export_btn], outputs=buttons, queue=False,
                      api_visibility="private")
        for event in (answered, retried, example_answered, undone, halted):  # Export always holds the chat so far
            event.then(export, [chatbot, model, system, *knobs, made], export_btn, show_progress="hidden",
                       **(dict(api_name="export") if event is answered else dict(api_visibility="private"))
                       ).then(**enable)
        answering.change(**enable)
        cleared.then(**enable)
        gallery.upload(check_added, [gallery, chatbot], gallery, show_progress="hidden", api_visibility="private")
        for event in (undone, cleared, halted):  # a cancelled answer leaves its last stage in the status
            event.then(status, model, status_md, queue=False, api_visibility="private")
        for event in (undone, cleared):
            event.then(lambda history, images: gr.update(label=gallery_label(history, images)), [chatbot, gallery],
                       gallery, queue=False, show_progress="hidden", api_visibility="private")
        model.change(status, model, status_md, queue=False, api_visibility="private")
        demo.load(status, model, status_md, queue=False, api_visibility="private")
        demo.load(default_tiles, model, max_tiles, queue=False, api_visibility="private")
        for changed in (gallery, video, max_tiles, num_frames, model):
            changed.change(wait_note, [model, gallery, video, max_tiles, num_frames], wait_md, queue=False,
                           show_progress="hidden", api_visibility="private")
    return demo
