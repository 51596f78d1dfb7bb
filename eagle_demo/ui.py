"""The Gradio app's layout and wiring: the chat with example cards, the image gallery and video
beside a message box that also takes pasted, dropped or attached files, the settings, and the
`chat` endpoint for gradio_client and MCP.

Declarative Blocks: each event is `fn, inputs, outputs`, chained with `.then`; what the events do
is in `handlers.py`, the chat's forms in `chat_history.py`. No model code here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from .backend import Backend
from .chat_history import conversation
from .config import DEFAULT_SYSTEM_PROMPT, LIMITS, SETTING_RANGES, Limits
from .gradio_inputs import HISTORY_SCHEMA, CheckedBlocks, described_as, self_contained, taken_as_sent, text_only
from .handlers import DEFAULTS, ChatHandlers

ASSETS = Path(__file__).resolve().parent.parent / "assets"
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
NARROW = "() => window.matchMedia('(max-width: 640px)').matches"  # a phone: the settings start folded

CSS = """
#chat .message img {max-height: 240px; width: auto;}
/* a question's images as a compact row of thumbnails (a click enlarges one), its text below */
#chat .user-row .message.user {display: flex; flex-wrap: wrap; justify-content: flex-end; gap: 6px;}
#chat .user-row .message.user > .message.component {width: auto; max-width: 168px;}
#chat .user-row .message.user > .message.component img {max-height: 120px;}
#chat .user-row .message.user > .message:not(.component) {flex-basis: 100%;}
/* the gallery's label above its thumbnails, not over the first one */
#gallery .grid-wrap {padding-top: 34px;}
@media (max-width: 640px) {
  #chat {height: 60vh !important;}
}
"""


# Words for the keys gradio's screen-reader announcer reads and its English table lacks (it would
# read the key itself, "common.complete")
ANNOUNCED = gr.I18n(en={"common.complete": "Done"})


def theme() -> gr.themes.Base:
    """NVIDIA green on a soft theme, with system fonts only (no font downloads: works offline)."""
    sans = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
    mono = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
    return gr.themes.Soft(primary_hue="lime", secondary_hue="emerald", neutral_hue="slate",
                          font=sans, font_mono=mono)


def limits_markdown(limits: Limits) -> str:
    return (f"**Limits** · one answer at a time per visitor · "
            f"up to {limits.max_images_per_conversation} images and videos per chat · "
            f"files up to {limits.max_upload_mb} MB · images up to {limits.max_image_pixels / 1e6:.0f} MP "
            f"({limits.max_image_side:,} px a side) · videos up to {limits.max_video_pixels / 1e6:.1f} MP a frame "
            f"and {limits.max_video_seconds / 3600:g} h, {limits.max_video_frames} sampled frames · messages up to "
            f"{limits.max_prompt_chars:,} characters · {limits.context_tokens:,} tokens of context (tiles per image "
            f"are lowered to fit)")


def slider(name: str, step: float, **options) -> gr.Slider:
    """A setting's slider, over the range every entry point accepts."""
    r = SETTING_RANGES[name]
    return gr.Slider(r.low, r.high, getattr(DEFAULTS, name), step=step, label=r.label, **options)


def controls(history: list[dict], answering: bool, exported) -> tuple:
    """Stop, Retry, Undo, Clear and Export: each enabled only when it can act (Export once the file
    of the chat so far is written: a new question empties it)."""
    asked = any(m["role"] == "user" for m in history or [])
    return (gr.update(interactive=answering), gr.update(interactive=asked and not answering),
            gr.update(interactive=bool(history)), gr.update(interactive=bool(history)),
            gr.update(interactive=bool(exported) and not answering))


def example_cards(examples: list[tuple[str, list[str], str | None]]) -> list[dict]:
    """The examples as the empty chat's cards: a thumbnail of the first image and the question."""
    return [{"text": text, "display_text": f"Video · {text}" if video else text,
             **({"icon": images[0]} if images else {})} for text, images, video in examples]


def settings_panel(limits: Limits) -> dict[str, gr.components.Component]:
    """The settings, in SETTING_RANGES' order, and the system prompt (built inside the caller's layout)."""
    with gr.Accordion("Settings", open=True, elem_id="settings") as panel:
        knobs = dict(max_tiles=slider("max_tiles", 1, info="more tiles read finer detail, but take longer"),
                     num_frames=slider("num_frames", 1, info="sampled evenly over the whole video"),
                     temperature=slider("temperature", 0.05, info="0 = greedy (always the likeliest word)"),
                     max_new_tokens=slider("max_new_tokens", 1))
        with gr.Accordion("More settings", open=False):
            knobs.update(top_p=slider("top_p", 0.05), top_k=slider("top_k", 1, info="0 = off"),
                         # a text box: gradio's Number shows 0 for "none", and 0 is a seed like any other
                         seed=gr.Textbox("", label="Seed", placeholder="empty: a fresh answer each time",
                                         info="a whole number repeats an answer", max_length=24),
                         repetition_penalty=slider("repetition_penalty", 0.05))
            system = gr.Textbox(DEFAULT_SYSTEM_PROMPT, label="System prompt", lines=2, max_lines=8,
                                max_length=limits.max_prompt_chars)
        gr.Markdown(limits_markdown(limits), elem_id="limits")
    return {"panel": panel, "system": system, **{name: knobs[name] for name in SETTING_RANGES}}


def frames_row(history: list[dict]) -> tuple:
    """The row of the frames the last answer read: shown (folded, to be filled when opened) when
    the chat holds a video."""
    has_video = any(t.video for t in conversation(history or []))
    return gr.update(visible=has_video, open=False), None


@dataclass
class Page:
    """The components the events of `wire` connect."""

    chatbot: gr.Chatbot
    model: gr.Dropdown
    status: gr.Markdown
    gallery: gr.Gallery
    video: gr.Video
    box: gr.MultimodalTextbox
    wait: gr.Markdown
    answering: gr.State
    records: gr.State
    taken: gr.State  # the files last moved out of the message box
    buttons: dict[str, gr.Button]  # stop, retry, undo, clear, export
    frames_row: gr.Accordion
    frames: gr.Gallery
    settings: dict[str, gr.components.Component]  # see settings_panel
    api_inputs: list[gr.components.Component]  # the `chat` endpoint's own: message, images, video, history
    api_answer: gr.Textbox
    api_button: gr.Button
    narrow: gr.Checkbox

    @property
    def knobs(self) -> list[gr.components.Component]:
        return [self.settings[name] for name in SETTING_RANGES]


def build_app(menu: Backend, limits: Limits = LIMITS, gpu: Callable | None = None, concurrency: int = 1,
              delete_cache: tuple[int, int] | None = None) -> gr.Blocks:
    """The Blocks app over the models of `menu`. `gpu` is `spaces.GPU` on ZeroGPU (see ChatHandlers)."""
    examples = [(text, [str(ASSETS / f) for f in images], video and str(ASSETS / video))
                for text, images, video in EXAMPLES]
    app = ChatHandlers(menu, limits, gpu, examples)
    models = app.models
    with CheckedBlocks(title="Eagle2 Demo", analytics_enabled=False, fill_width=True,
                       delete_cache=delete_cache) as demo:
        # gradio deletes the files of this set on delete_cache's schedule and when it shuts down
        demo.temp_file_sets.append(app.generated)
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
                records = gr.State({})  # answer_key -> what the answer was made with, its rating
                taken = gr.State([])
                chatbot = gr.Chatbot(elem_id="chat", label="Chat", show_label=False, height="55vh", min_height=300,
                                     layout="bubble", buttons=["copy", "copy_all"],
                                     feedback_options=("Like", "Dislike"),
                                     examples=example_cards(examples),
                                     placeholder="Add images or a video below, or paste them into the message box, "
                                                 "then ask about them. Or try an example:")
                with gr.Row(elem_id="uploads"):
                    gallery = gr.Gallery(label=app.gallery_update([], None, None)["label"],
                                         type="filepath", file_types=["image"], interactive=True, columns=3,
                                         fit_columns=False, height=180, object_fit="contain", min_width=150,
                                         elem_id="gallery")
                    video = gr.Video(label=f"Video (up to {limits.max_upload_mb} MB)", sources=["upload"],
                                     height=180, min_width=150)
                box = gr.MultimodalTextbox(show_label=False, placeholder="Ask about your images or video… "
                                           "(paste, drop or attach images and a video here too)",
                                           sources=["upload"], file_types=["image", "video"], file_count="multiple",
                                           submit_btn="Send", elem_id="ask", lines=1, max_lines=6)
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
                with gr.Accordion("Video frames the last answer read", open=False, visible=False,
                                  elem_id="frames") as frames_row:
                    frames = gr.Gallery(show_label=False, columns=8, fit_columns=False, height=140,
                                        object_fit="contain", interactive=False)
            with gr.Column(scale=2, min_width=280):
                settings = settings_panel(limits)

        # API-only inputs for the `chat` endpoint (the settings sliders double as its parameters)
        with gr.Column(visible=False):
            api_inputs = [gr.Textbox(label="message"), gr.File(file_count="multiple", file_types=["image"],
                                                                label="images"),
                          gr.File(file_types=["video"], label="video"), gr.JSON(label="history"),
                          gr.File(file_types=["image"], label="image")]  # one image: MCP cannot send a list
            # JSON Schemas an MCP client can check calls against (gradio's own for these cannot be)
            described_as(api_inputs[1], self_contained(api_inputs[1].api_info()))
            described_as(api_inputs[3], HISTORY_SCHEMA)
            described_as(chatbot, self_contained(chatbot.api_info()))  # /export's history
            api_answer, api_button = gr.Textbox(label="answer"), gr.Button()
            narrow = gr.Checkbox()  # set in the browser: a phone-sized window

        page = Page(chatbot, model, status_md, gallery, video, box, wait_md, answering, records, taken,
                    dict(stop=stop_btn, retry=retry_btn, undo=undo_btn, clear=clear_btn, export=export_btn),
                    frames_row, frames, settings, api_inputs, api_answer, api_button, narrow)
        for component in (*page.knobs, model):  # checked by name in the handlers (settings_from, checked_model)
            taken_as_sent(component)
        text_only(api_inputs[0], "The message")
        text_only(settings["system"], "The system prompt")
        wire(demo, app, page, concurrency)
    return demo


def wire(demo: gr.Blocks, app: ChatHandlers, p: Page, concurrency: int) -> None:
    """The events: each `fn, inputs, outputs`, chained with `.then`."""
    model_queue, private = dict(concurrency_id=ANSWERS, concurrency_limit=concurrency), dict(api_visibility="private")
    chat, answering, records, buttons = p.chatbot, p.answering, p.records, p.buttons
    settings = [p.model, p.settings["system"], *p.knobs]  # as respond and export take them, after the chat
    message, images, video, history, image = p.api_inputs
    p.api_button.click(app.chat, [message, images, video, history, p.settings["system"], *p.knobs, p.model, image],
                       p.api_answer, api_name="chat", **model_queue)  # first: the API page lists it first

    def chain_respond(event):  # only after a question was taken: a refused one raised its toast
        return event.success(app.respond, [chat, *settings, records], [chat, p.status, answering, records],
                             api_visibility="undocumented", show_progress="hidden", **model_queue)

    # queued, not queue=False: only a queued event's errors reach the page as toasts
    asked = [chat, p.box, p.gallery, p.video, p.wait, answering, buttons["export"]]
    answered = chain_respond(p.box.submit(app.add_message, [p.box, p.gallery, p.video, chat, answering], asked,
                                          **private))
    example_answered = chain_respond(chat.example_select(app.run_example, [chat, answering], asked, **private))
    retried = chain_respond(buttons["retry"].click(app.retry, [chat, answering], [chat, answering, buttons["export"]],
                                                   **private))
    # app.stop, app.undo and app.clear tell the running answer (it ends after its token), and gradio
    # closes the handler too. The example's answer is not in `cancels`: listed there, Stop often did
    # nothing at all (gradio 6.31); the handlers end it (test_stop_ends_an_answer_begun_from_an_example_card)
    generating = [answered, retried]
    halted = buttons["stop"].click(app.stop, chat, [chat, answering], cancels=generating, queue=False, **private)
    undone = buttons["undo"].click(app.undo, chat, [chat, p.box, p.gallery, p.video, answering], cancels=generating,
                                   queue=False, **private)
    cleared = buttons["clear"].click(app.clear, None, [chat, buttons["export"], answering, records],
                                     cancels=generating, queue=False, **private)
    rated = chat.like(app.rate, [chat, records], records, queue=False, **private)
    enable = dict(fn=controls, inputs=[chat, answering, buttons["export"]], outputs=list(buttons.values()),
                  queue=False, **private)
    for event in (answered, retried, example_answered, undone, halted, rated):  # Export holds the chat so far
        event.then(app.export, [chat, *settings, records], buttons["export"], show_progress="hidden",
                   **(dict(api_name="export") if event is answered else private)).then(**enable)
    answering.change(**enable)
    cleared.then(**enable)
    show_status = dict(fn=app.status, inputs=p.model, outputs=p.status, queue=False, **private)
    numbered = dict(fn=lambda history, items, made: app.gallery_update(history, made, items),
                    inputs=[chat, p.gallery, records], outputs=p.gallery, queue=False, show_progress="hidden",
                    **private)
    for event in (answered, retried, example_answered, undone, halted, cleared):
        event.then(frames_row, chat, [p.frames_row, p.frames], queue=False, show_progress="hidden", **private)
    for event in (undone, cleared, halted):  # a cancelled answer leaves its last stage in the status
        event.then(**show_status).then(**numbered)
    # queued (its refusals toast), at once, the latest change only; it ends when the gallery is in order
    p.gallery.change(app.check_gallery, [p.gallery, chat, records], p.gallery, concurrency_limit=None,
                     trigger_mode="always_last", show_progress="hidden", **private)
    # queued (its refusals toast), one at a time: the box sends each new file twice (as it uploads,
    # and when done), and the second finds it in `taken`; quick (it reads headers only)
    p.box.change(app.take_attached, [p.box, p.gallery, p.video, chat, records, p.taken],
                 [p.box, p.gallery, p.video, p.taken], concurrency_id="attach", concurrency_limit=1,
                 trigger_mode="always_last", show_progress="hidden", **private)
    p.frames_row.expand(app.frames_seen, [chat, records], p.frames, **private)
    p.model.change(**show_status)
    demo.load(**show_status)
    demo.load(app.default_tiles, p.model, p.settings["max_tiles"], queue=False, **private)
    demo.load(lambda narrow: gr.update(open=not narrow), p.narrow, p.settings["panel"], js=NARROW, queue=False,
              **private)
    wait_inputs = [p.model, p.gallery, p.video, p.settings["max_tiles"], p.settings["num_frames"]]
    for changed in wait_inputs:
        changed.change(app.wait_note, wait_inputs, p.wait, queue=False, show_progress="hidden", **private)
