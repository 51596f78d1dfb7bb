"""The Gradio app: image gallery and video uploads, settings, a streaming chat, grounding boxes,
conversation export, and a `chat` endpoint for gradio_client.

Declarative Blocks: each event is `fn, inputs, outputs`, chained with `.then`. The conversation
lives in the Chatbot (each user message holds its files, then its text); the per-request cancel
flag lives in a gr.State. No model code here: engines come from `get_engine(model_name)` and
only the engine module's `Message` is imported, when the first request arrives.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
import queue
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr

from . import grounding, media
from .config import DEFAULT_SYSTEM_PROMPT, LIMITS, GenerationSettings, Limits

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets"
ERROR_TITLE = "⚠️ Could not answer"  # metadata title that marks error bubbles (never sent to the model)
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
OUT_DIR = Path(tempfile.gettempdir()) / "eagle2-demo"  # annotated images and exports; gradio copies them

CSS = """
#chat .message img {max-height: 240px; width: auto;}
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


def _is_video(path: str) -> bool:
    return (mimetypes.guess_type(path)[0] or "").startswith("video/")


def _is_error(message: dict) -> bool:
    return (message.get("metadata") or {}).get("title") == ERROR_TITLE


def user_message(text: str, images: list[str], video: str | None) -> dict:
    files = [{"path": p} for p in [*images, *([video] if video else [])]]
    return {"role": "user", "content": [*files, *([{"type": "text", "text": text}] if text else [])]}


def answer_message(text: str, annotated: str | None = None) -> dict:
    # a text *part* keeps the model's text as it is (a bare string would be dedented by gradio)
    return {"role": "assistant",
            "content": [{"type": "text", "text": text}, *([{"path": annotated}] if annotated else [])]}


def error_message(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}], "metadata": {"title": ERROR_TITLE}}


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
        elif message["role"] == "assistant":  # files in answers are our own drawings
            out.append({"role": "assistant", "text": text, "images": [], "video": None})
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


def decode_on_own_thread(generation, cancel: threading.Event) -> Iterator[str]:
    """Yield `generation`'s text deltas, iterating it on one thread of its own.

    The decode loop then never waits on gradio: Stop sets `cancel` and the loop ends after its
    current token (freeing the engine) even while gradio holds this handler suspended; closing
    this generator (a client's cancel) sets `cancel` too.
    """
    deltas: queue.Queue = queue.Queue()

    def run():
        try:
            for delta in generation:
                deltas.put(delta)
        except BaseException as e:  # handed to the consumer, who raises it
            deltas.put(e)
        finally:
            deltas.put(_DONE)

    worker = threading.Thread(target=run, name="eagle2-decode", daemon=True)
    worker.start()
    try:
        while (item := deltas.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.set()
        worker.join(timeout=30)  # the engine stops after the token it is on


def settings_from(max_tiles, num_frames, temperature, top_p, max_new_tokens, repetition_penalty,
                  top_k=DEFAULTS.top_k, seed=None) -> GenerationSettings:
    return GenerationSettings(max_tiles=int(max_tiles), num_frames=int(num_frames), temperature=float(temperature),
                              top_p=float(top_p), top_k=int(top_k), max_new_tokens=int(max_new_tokens),
                              repetition_penalty=float(repetition_penalty),
                              seed=None if seed is None or seed == "" else int(seed))


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
def export_json(history: list[dict], model: str, system: str, settings: GenerationSettings) -> dict:
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
            messages.append({"role": "assistant", "text": text})
    return {"app": "Eagle2 Demo", "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": model, "system_prompt": system, "settings": asdict(settings), "messages": messages}


# ----------------------------------------------------------------------------- the app
def short_name(model: str) -> str:
    """A hub id as it is; a local checkpoint by its folder name."""
    return Path(model).name if Path(model).exists() else model


def load_hint(model: str) -> str:
    if Path(model).exists():
        return ""
    return ("\n\nNo network? Make a tiny test checkpoint and serve it instead: "
            "`python -m eagle_demo tiny --out ./tiny-eagle2 && python app.py --model ./tiny-eagle2`, "
            "or pass `--model` a folder that holds a downloaded Eagle2 checkpoint.")


def limits_markdown(limits: Limits) -> str:
    return (f"**Limits** · up to {limits.max_images_per_conversation} images and videos per chat · "
            f"files up to {limits.max_upload_mb} MB · images up to {limits.max_image_pixels / 1e6:.0f} MP "
            f"({limits.max_image_side:,} px a side) · videos up to {limits.max_video_pixels / 1e6:.1f} MP a frame "
            f"and {limits.max_video_seconds / 3600:g} h, {limits.max_video_frames} sampled frames · messages up to "
            f"{limits.max_prompt_chars:,} characters · {limits.context_tokens:,} tokens of context (tiles per image "
            f"are lowered to fit)")


def build_app(get_engine: Callable[[str], Any], models: list[str], limits: Limits = LIMITS,
              gpu: Callable[[Callable], Callable] = lambda fn: fn, concurrency: int = 1,
              delete_cache: tuple[int, int] | None = None) -> gr.Blocks:
    """The Blocks app. `get_engine(name)` gives the (lazily loading) Engine for a model name;
    `gpu` wraps the functions that run the model (`spaces.GPU` on ZeroGPU)."""
    generated: set[str] = set()  # drawings and exports: deleted with the uploads (see delete_cache below)

    def engine_for(model: str):
        if model not in models:  # never load whatever a client names
            raise gr.Error(f"Unknown model {model!r}; this app serves {', '.join(models)}.", print_exception=False)
        return get_engine(model)

    def status(model: str) -> str:
        text = engine_for(model).status.replace(model, short_name(model))
        if text == "not loaded":
            text += " (it loads with the first message)"
        return f"**Model** {short_name(model)} · {text}"

    def add_message(text: str, images, video, history: list[dict]):
        images = [item[0] for item in images or []]
        if not (text.strip() or images or video):
            gr.Warning("Type a question, or add an image or a video.")
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return history + [user_message(text, images, video)], "", None, None, threading.Event()

    @gpu
    def respond(history: list[dict], cancel: threading.Event | None, model: str, system: str,
                max_tiles, num_frames, temperature, top_p, max_new_tokens, repetition_penalty, top_k, seed,
                progress=gr.Progress()) -> Iterator[tuple[list[dict], str]]:
        if not history or history[-1]["role"] != "user" or _is_error(history[-1]):
            return  # nothing asked (an empty message, or Retry with nothing to retry)
        cancel = cancel or threading.Event()
        engine = engine_for(model)
        turns = conversation(history)
        settings = settings_from(max_tiles, num_frames, temperature, top_p, max_new_tokens, repetition_penalty,
                                 top_k, seed)
        text = ""
        try:
            try:
                engine.load(lambda fraction, desc: progress(fraction, desc=desc))
            except Exception as e:
                log.warning("loading %s failed: %s", model, e)
                yield history + [error_message(f"Could not load **{model}**: {e}{load_hint(model)}")], status(model)
                return
            yield history, status(model)
            generation = engine.chat(engine_messages(turns), system, settings, cancel=cancel)
            for delta in decode_on_own_thread(generation, cancel):
                text += delta
                yield history + [answer_message(text)], status(model)
        except ValueError as e:  # MediaError / PromptError: something the user can change
            yield history + [error_message(hide_paths(str(e), turns))], status(model)
            return
        except Exception as e:
            log.exception("generation failed")
            kept = [answer_message(text)] if text else []
            yield history + kept + [error_message(f"The model failed: {e}. Try again, or Clear.")], status(model)
            return
        finally:
            cancel.set()
        drawn = annotate(text, turns)
        if drawn:
            generated.add(drawn)
        yield history + [answer_message(text, drawn)], status(model)

    @gpu
    def chat_api(message: str, images: list[str] | None = None, video: str | None = None,
                 history: list[dict] | None = None, system: str = DEFAULT_SYSTEM_PROMPT,
                 max_tiles=DEFAULTS.max_tiles, num_frames=DEFAULTS.num_frames, temperature=DEFAULTS.temperature,
                 top_p=DEFAULTS.top_p, max_new_tokens=DEFAULTS.max_new_tokens,
                 repetition_penalty=DEFAULTS.repetition_penalty, top_k=DEFAULTS.top_k, seed: int | None = None,
                 model: str | None = None) -> Iterator[str]:
        """Answer `message` about `images` / `video` after `history` ([{"role", "content"}] text
        messages); streams the answer so far."""
        turns = []
        for h in history or []:
            if not isinstance(h, dict) or h.get("role") not in ("user", "assistant"):
                raise gr.Error('history must be a list of {"role": "user" | "assistant", "content": text}',
                               print_exception=False)
            turns.append({"role": h["role"], "text": _parts(h)[0], "images": [], "video": None})
        turns.append({"role": "user", "text": message or "", "images": list(images or []), "video": video})
        settings = settings_from(max_tiles, num_frames, temperature, top_p, max_new_tokens, repetition_penalty,
                                 top_k, seed)
        name = model or models[0]
        engine = engine_for(name)
        try:
            engine.load()
        except Exception as e:
            log.warning("loading %s failed: %s", name, e)
            raise gr.Error(f"Could not load {name}: {e}{load_hint(name)}", print_exception=False) from e
        cancel, text = threading.Event(), ""
        try:
            generation = engine.chat(engine_messages(turns), system, settings, cancel=cancel)
            for delta in decode_on_own_thread(generation, cancel):
                text += delta
                yield text
        except ValueError as e:  # MediaError / PromptError
            raise gr.Error(hide_paths(str(e), turns), print_exception=False) from e
        except Exception as e:
            log.exception("generation failed")
            raise gr.Error(f"The model failed: {e}") from e
        finally:
            cancel.set()
        if not text:
            yield text

    def retry(history: list[dict]):
        while history and history[-1]["role"] == "assistant":
            history = history[:-1]
        return history, threading.Event()

    def undo(history: list[dict]):
        """Remove the last question and its answer; put the question back in the inputs."""
        while history and history[-1]["role"] == "assistant":
            history = history[:-1]
        if not history:
            return history, gr.skip(), gr.skip(), gr.skip()
        text, files = _parts(history[-1])
        images = [f for f in files if not _is_video(f)]
        video = next((f for f in files if _is_video(f)), None)
        return history[:-1], text, images or None, video

    def stop(cancel: threading.Event | None):
        if cancel is not None:
            cancel.set()

    def export(history: list[dict], model: str = models[0], system: str = DEFAULT_SYSTEM_PROMPT,
               max_tiles=DEFAULTS.max_tiles, num_frames=DEFAULTS.num_frames, temperature=DEFAULTS.temperature,
               top_p=DEFAULTS.top_p, max_new_tokens=DEFAULTS.max_new_tokens,
               repetition_penalty=DEFAULTS.repetition_penalty, top_k=DEFAULTS.top_k, seed=None) -> str | None:
        """The chat and the settings used, as a JSON file to download."""
        if not history:
            return None
        settings = settings_from(max_tiles, num_frames, temperature, top_p, max_new_tokens, repetition_penalty,
                                 top_k, seed)
        data = export_json(history, model, system, settings)
        text = json.dumps(data, indent=2, ensure_ascii=False)
        folder = OUT_DIR / hashlib.sha1(text.encode()).hexdigest()[:16]  # one folder per export: a clean name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"eagle2-chat-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(text, encoding="utf-8")
        generated.add(str(path))
        return str(path)

    with gr.Blocks(title="Eagle2 Demo", analytics_enabled=False, fill_width=True, delete_cache=delete_cache) as demo:
        # gradio deletes the files of these sets on delete_cache's schedule and when it shuts down
        demo.temp_file_sets.append(generated)
        gr.Markdown("# Eagle2 · chat about images and videos\n"
                    "NVIDIA's Eagle2 vision-language models, running natively (no remote code). "
                    "Add images or a video, ask a question, and watch the answer stream in. "
                    "Answers with `<ref>…</ref><box>…</box>` get their boxes drawn on the image.")
        cancel_flag = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=300):
                chatbot = gr.Chatbot(elem_id="chat", label="Chat", height="55vh", min_height=300,
                                     layout="bubble", buttons=["copy", "copy_all"], feedback_options=None,
                                     placeholder="Add images or a video below, then ask about them.")
                with gr.Row(elem_id="uploads"):
                    gallery = gr.Gallery(label=f"Images (up to {limits.max_images_per_conversation} per chat)",
                                         type="filepath", file_types=["image"], interactive=True, columns=4,
                                         height=130, object_fit="contain", min_width=150)
                    video = gr.Video(label=f"Video (up to {limits.max_upload_mb} MB)", sources=["upload"],
                                     height=130, min_width=150)
                textbox = gr.Textbox(show_label=False, placeholder="Ask about your images or video…",
                                     max_length=limits.max_prompt_chars, submit_btn="Send", elem_id="ask",
                                     lines=1, max_lines=6, autofocus=True)
                with gr.Row(elem_id="actions"):
                    stop_btn = gr.Button("Stop", variant="stop", size="sm", elem_id="stop", min_width=60)
                    retry_btn = gr.Button("Retry", size="sm", elem_id="retry", min_width=60)
                    undo_btn = gr.Button("Undo", size="sm", elem_id="undo", min_width=60)
                    clear_btn = gr.Button("Clear", size="sm", elem_id="clear", min_width=60)
                    export_btn = gr.DownloadButton("Export", size="sm", elem_id="export", value=None, min_width=60)
                gr.Examples([[text, [str(ASSETS / f) for f in images] or None, video and str(ASSETS / video)]
                             for text, images, video in EXAMPLES], inputs=[textbox, gallery, video],
                            label="Examples (all drawn by this project)", elem_id="examples")
            with gr.Column(scale=2, min_width=280):
                model = gr.Dropdown([(short_name(m), m) for m in models], value=models[0], label="Model",
                                    visible=len(models) > 1)
                status_md = gr.Markdown(elem_id="status")
                with gr.Accordion("Settings", open=True):
                    max_tiles = gr.Slider(1, 24, DEFAULTS.max_tiles, step=1, label="Max tiles per image",
                                          info="more tiles read finer detail, but take longer")
                    num_frames = gr.Slider(1, limits.max_video_frames, DEFAULTS.num_frames, step=1,
                                           label="Video frames", info="sampled evenly over the whole video")
                    temperature = gr.Slider(0, 1.5, DEFAULTS.temperature, step=0.05, label="Temperature",
                                            info="0 = greedy (always the likeliest word)")
                    max_new_tokens = gr.Slider(1, 4096, DEFAULTS.max_new_tokens, step=1, label="Max new tokens")
                with gr.Accordion("More settings", open=False):
                    top_p = gr.Slider(0.05, 1, DEFAULTS.top_p, step=0.05, label="Top-p")
                    top_k = gr.Slider(0, 200, DEFAULTS.top_k, step=1, label="Top-k", info="0 = off")
                    seed = gr.Number(None, precision=0, label="Seed",
                                     info="empty: a fresh answer each time; a number repeats an answer")
                    repetition_penalty = gr.Slider(1, 2, DEFAULTS.repetition_penalty, step=0.05,
                                                   label="Repetition penalty")
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
        model_queue = dict(concurrency_id="model", concurrency_limit=concurrency)

        def chain_respond(event):
            return event.then(respond, [chatbot, cancel_flag, model, system, *knobs], [chatbot, status_md],
                              api_visibility="undocumented", show_progress="minimal", **model_queue)

        asked = textbox.submit(add_message, [textbox, gallery, video, chatbot],
                               [chatbot, textbox, gallery, video, cancel_flag], queue=False, api_visibility="private")
        answered = chain_respond(asked)
        retried = chain_respond(retry_btn.click(retry, chatbot, [chatbot, cancel_flag], queue=False,
                                                api_visibility="private"))
        generating = [answered, retried]
        stopped = stop_btn.click(stop, cancel_flag, None, cancels=generating, queue=False, api_visibility="private")
        undone = undo_btn.click(undo, chatbot, [chatbot, textbox, gallery, video], cancels=generating, queue=False,
                                api_visibility="private")
        clear_btn.click(lambda: ([], None), None, [chatbot, export_btn], cancels=generating, queue=False,
                        api_visibility="private")
        for event in (answered, retried, undone, stopped):  # the Export button always holds the chat so far
            event.then(export, [chatbot, model, system, *knobs], export_btn, show_progress="hidden",
                       **(dict(api_name="export") if event is answered else dict(api_visibility="private")))
        model.change(status, model, status_md, queue=False, api_visibility="private")
        demo.load(status, model, status_md, queue=False, api_visibility="private")
        api_button.click(chat_api, [api_message, api_images, api_video, api_history, system, *knobs, model],
                         api_answer, api_name="chat", **model_queue)
    return demo
