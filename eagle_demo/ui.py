"""The Gradio app's layout and wiring: one compact column with the chat (example cards while it is
empty), what waits to be sent (an image gallery and a video slot), the message box (which also
takes pasted, dropped or attached files, and whose Send becomes Stop while an answer streams) and
the chat's buttons; beside it the saved chats, the settings and the limits; and the `chat`
endpoint for gradio_client and MCP.

Declarative Blocks: each event is `fn, inputs, outputs`, chained with `.then`, and the settings go
to their handlers by name. What the events do is in `chat_actions.py` (the chat),
`attachments.py` (what waits to be sent), `saved_chats.py` (chats kept in the browser) and
`endpoints.py` (the API's `chat` and `export`); every answer streams through `answers.py`; the
look is `page_style.py`. No model code here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from .answers import AnswerStream
from .attachments import Attachments
from .backend import Backend
from .chat_actions import ChatActions
from .chat_history import conversation
from .config import DEFAULT_SYSTEM_PROMPT, LIMITS, SETTING_RANGES, GenerationSettings, Limits
from .endpoints import Endpoints
from .gradio_inputs import HISTORY_SCHEMA, CheckedBlocks, described_as, self_contained, taken_as_sent, text_only
from .records import OutputFiles, process_folder
from .saved_chats import SavedChats

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
FOCUS_BOX = "() => document.querySelector('#ask textarea')?.focus()"
DEFAULTS = GenerationSettings()
INTRO = ("NVIDIA's **Eagle2** vision-language models, running natively (no remote code). Add images or a "
         "video (the paperclip, a paste or a drop on the message box, or the boxes below), ask about them and "
         "watch the answer stream in. Answers with `<ref>…</ref><box>…</box>` get their boxes drawn on the "
         "image. Or try an example:")

# Words for the keys gradio's screen-reader announcer reads and its English table lacks (it would
# read the key itself, "common.complete"); only the answer's own event is announced (see wire)
ANNOUNCED = gr.I18n(en={"common.complete": "Done"})


def limits_markdown(limits: Limits) -> str:
    return (f"**Limits** · one answer at a time per visitor · "
            f"up to {limits.max_images_per_conversation} images and videos per chat · "
            f"files up to {limits.max_upload_mb} MB · images up to {limits.max_image_pixels / 1e6:.0f} MP "
            f"({limits.max_image_side:,} px a side) · videos up to {limits.max_video_pixels / 1e6:.1f} MP a frame "
            f"and {limits.max_video_seconds / 3600:g} h, {limits.max_video_frames} sampled frames · messages up to "
            f"{limits.max_prompt_chars:,} characters · {limits.context_tokens:,} tokens of context (tiles per image "
            f"are lowered to fit) · the last {limits.max_saved_chats} chats are kept in this browser only")


def slider(name: str, step: float, value=None, **options) -> gr.Slider:
    """A setting's slider, over the range every entry point accepts."""
    r = SETTING_RANGES[name]
    return gr.Slider(r.low, r.high, getattr(DEFAULTS, name) if value is None else value, step=step, label=r.label,
                     **options)


def controls(history: list[dict], answering: bool, exported) -> tuple:
    """The message box (Send, or Stop while an answer streams), Retry, Undo, Clear, Export and the
    model menu: each enabled only when it can act (Export once the file of the chat so far is
    written: a new question empties it; the model stays as it is while it answers)."""
    asked = any(m["role"] == "user" for m in history or [])
    return (gr.update(submit_btn=not answering and "Send", stop_btn=answering and "Stop"),
            gr.update(interactive=asked and not answering), gr.update(interactive=bool(history)),
            gr.update(interactive=bool(history)), gr.update(interactive=bool(exported) and not answering),
            gr.update(interactive=not answering))


def example_cards(examples: list[tuple[str, list[str], str | None]]) -> list[dict]:
    """The examples as the empty chat's cards: a thumbnail of the first image and the question."""
    return [{"text": text, "display_text": f"Video · {text}" if video else text,
             **({"icon": images[0]} if images else {})} for text, images, video in examples]


def settings_panel(limits: Limits, tiles: int | None) -> dict[str, gr.components.Component]:
    """The settings, in SETTING_RANGES' order, and the system prompt (built inside the caller's layout).
    `tiles`: the tile limit's default on this machine, where it is not the settings' own."""
    with gr.Accordion("Settings", open=True, elem_id="settings") as panel:
        knobs = dict(max_tiles=slider("max_tiles", 1, tiles, info="more tiles read finer detail, but take longer"),
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
    settled: gr.State  # the chat as Stop, Undo or Clear left it (see ChatActions.settle)
    taken: gr.State  # the files last moved out of the message box
    warned: gr.State  # the files already refused with a toast
    refused_files: gr.Textbox  # the browser's: files held back from an upload (see page_style)
    edited: gr.Textbox  # the browser's: a question edited in the chat, as JSON (see page_style)
    buttons: dict[str, gr.Button]  # retry, undo, clear, export
    frames_row: gr.Accordion
    frames: gr.Gallery
    settings: dict[str, gr.components.Component]  # see settings_panel
    saved: gr.BrowserState  # the chats kept in this browser (see saved_chats)
    chat_id: gr.State  # the id the chat shown is saved under
    deleted: gr.State  # the ids of the chats deleted on this page
    save_wanted: gr.Number  # counts the changes the store must follow (see SavedChats)
    saved_list: gr.Dropdown
    delete: gr.Button
    api_inputs: list[gr.components.Component]  # the `chat` endpoint's own: message, images, video, history
    api_answer: gr.Textbox
    api_button: gr.Button
    api_export: gr.Button
    narrow: gr.Checkbox

    @property
    def knobs(self) -> dict[str, gr.components.Component]:
        """The generation settings' components, by name, in their declared order."""
        return {name: self.settings[name] for name in SETTING_RANGES}


def build_app(menu: Backend, limits: Limits = LIMITS, gpu: Callable | None = None, concurrency: int = 1,
              delete_cache: tuple[int, int] | None = None) -> gr.Blocks:
    """The Blocks app over the models of `menu`. `gpu` is `spaces.GPU` on ZeroGPU (see AnswerStream)."""
    examples = [(text, [str(ASSETS / f) for f in images], video and str(ASSETS / video))
                for text, images, video in EXAMPLES]
    files = OutputFiles(process_folder() / "outputs")
    attachments = Attachments(menu, limits, files, on_gpu=gpu is not None)
    answers = AnswerStream(menu, gpu)
    app = ChatActions(answers, attachments, limits, files, examples)
    endpoints = Endpoints(answers, limits, files)
    saving = SavedChats(limits, lambda: Path(get_upload_folder()))
    # decided once, before the page is served: the slider never jumps after it is shown
    tiles = None if gpu is not None else menu.model(app.models[0]).cpu_default_tiles()
    with CheckedBlocks(title="Eagle2 Demo", analytics_enabled=False, fill_width=True,
                       delete_cache=delete_cache) as demo:
        # gradio deletes the files of this set on delete_cache's schedule and when it shuts down
        demo.temp_file_sets.append(files.generated)
        demo.answers = answers  # the OpenAI-compatible API's answers stream through it too (openai_api)
        with gr.Row(equal_height=False, elem_id="main"):
            with gr.Column(scale=3, min_width=300, elem_id="chat-column"):
                chat_parts = chat_column(app.models, examples, attachments.label([], 0), limits)
            with gr.Column(scale=2, min_width=280, elem_id="side"):
                side_parts = side_column(limits, tiles)
        page = Page(**chat_parts, **side_parts, **hidden_parts(chat_parts["chatbot"]))
        for component in (*page.knobs.values(), page.model):  # checked by name in the handlers
            taken_as_sent(component)
        text_only(page.api_inputs[0], "The message")
        text_only(page.settings["system"], "The system prompt")
        wire(demo, _Handlers(app, attachments, saving, endpoints), page, concurrency)
    return demo


def chat_column(models: list[str], examples: list[tuple[str, list[str], str | None]], gallery_label: str,
                limits: Limits) -> dict:
    """The title, the model and its status, the chat, what waits to be sent, the message box, the
    chat's buttons and the frames row, with the session's state (built inside the caller's layout)."""
    with gr.Row(elem_id="top", equal_height=True):
        gr.Markdown("# Eagle2 · chat about images and videos", elem_id="title")
        model = gr.Dropdown(models, value=models[0], label="Model", show_label=False, visible=len(models) > 1,
                            filterable=False, scale=0, min_width=150, elem_id="model")
        status = gr.Markdown(elem_id="status")
    chatbot = gr.Chatbot(elem_id="chat", label="Chat", show_label=False, min_height=240, layout="bubble",
                         buttons=["copy", "copy_all"], editable="user", feedback_options=("Like", "Dislike"),
                         examples=example_cards(examples), placeholder=INTRO)
    with gr.Row(elem_id="uploads"):
        gallery = gr.Gallery(label=gallery_label, type="filepath", file_types=["image"], interactive=True,
                             columns=4, fit_columns=False, height=124, object_fit="contain", min_width=150,
                             elem_id="gallery")
        video = gr.Video(label=f"Video (up to {limits.max_upload_mb} MB)", sources=["upload"], height=124,
                         min_width=150, elem_id="video")
    box = gr.MultimodalTextbox(label="Message", show_label=False, placeholder="Ask about your images…",
                               sources=["upload"], file_types=["image", "video"], file_count="multiple",
                               submit_btn="Send", stop_btn=False, elem_id="ask", lines=1, max_lines=6)
    with gr.Row(elem_id="actions"):  # enabled only when they can act (see `controls`)
        buttons = dict(retry=gr.Button("Retry", size="sm", elem_id="retry", min_width=60, interactive=False),
                       undo=gr.Button("Undo", size="sm", elem_id="undo", min_width=60, interactive=False),
                       clear=gr.Button("Clear", size="sm", elem_id="clear", min_width=60, interactive=False),
                       export=gr.DownloadButton("Export", size="sm", elem_id="export", value=None, min_width=60,
                                                interactive=False))
        wait = gr.Markdown(elem_id="wait")
    with gr.Accordion("Video frames the last answer read", open=False, visible=False, elem_id="frames") as frames_row:
        frames = gr.Gallery(show_label=False, columns=4, fit_columns=False, height="auto", object_fit="contain",
                            interactive=False)
    return dict(chatbot=chatbot, model=model, status=status, gallery=gallery, video=video, box=box, wait=wait,
                buttons=buttons, frames_row=frames_row, frames=frames,
                answering=gr.State(False), records=gr.State({}), taken=gr.State([]), warned=gr.State([]),
                settled=gr.State([]), chat_id=gr.State(""), deleted=gr.State([]),
                save_wanted=gr.Number(0, visible="hidden", elem_id="save-wanted"),
                # a fixed key, not a secret (the chats are the visitor's own, in their own browser):
                # they stay readable after the app restarts
                saved=gr.BrowserState({"chats": []}, storage_key="eagle2-demo-chats", secret="eagle2-demo"))


def side_column(limits: Limits, tiles: int | None) -> dict:
    """The saved chats and the settings (built inside the caller's layout)."""
    with gr.Accordion("Saved chats (in this browser)", open=True, elem_id="saved"):
        with gr.Row(equal_height=True):
            saved_list = gr.Dropdown([], value=None, label="Open a saved chat", show_label=False, scale=3,
                                     filterable=False, elem_id="saved-list")
            delete = gr.Button("Delete", size="sm", scale=1, min_width=60, elem_id="delete-chat")
    return dict(saved_list=saved_list, delete=delete, settings=settings_panel(limits, tiles))


def hidden_parts(chatbot: gr.Chatbot) -> dict:
    """The `chat` endpoint's own inputs (the settings sliders double as its parameters), and what the
    page's script hands to the server: in the page, never shown."""
    with gr.Column(visible=False):
        api_inputs = [gr.Textbox(label="message"), gr.File(file_count="multiple", file_types=["image"],
                                                            label="images"),
                      gr.File(file_types=["video"], label="video"), gr.JSON(label="history"),
                      gr.File(file_types=["image"], label="image")]  # one image: MCP cannot send a list
        # JSON Schemas an MCP client can check calls against (gradio's own for these cannot be)
        described_as(api_inputs[1], self_contained(api_inputs[1].api_info()))
        described_as(api_inputs[3], HISTORY_SCHEMA)
        described_as(chatbot, self_contained(chatbot.api_info()))  # /export's history
        api_answer, api_button, api_export = gr.Textbox(label="answer"), gr.Button(), gr.Button()
        narrow = gr.Checkbox()  # set in the browser: a phone-sized window
    # rendered (the script writes them), not shown
    return dict(api_inputs=api_inputs, api_answer=api_answer, api_button=api_button, api_export=api_export,
                narrow=narrow,
                refused_files=gr.Textbox(visible="hidden", elem_id="refused-files"),
                edited=gr.Textbox(visible="hidden", elem_id="edited"))


@dataclass
class _Handlers:
    """What the page's events call."""

    chat: ChatActions
    attachments: Attachments
    saving: SavedChats
    endpoints: Endpoints


def wire(demo: gr.Blocks, handlers: _Handlers, p: Page, concurrency: int) -> None:
    """The events: each `fn, inputs, outputs`, chained with `.then`; the settings passed by name."""
    wiring = _Wiring(demo, handlers, p, concurrency)
    wiring.api()
    asked = wiring.asking()
    halted, undone, cleared, rated = wiring.buttons(asked)
    opened, deleted, reopened = wiring.saved_chats()
    wiring.afterwards(answered=asked, done=[*undone, halted, rated, opened], reopened=reopened,
                      emptied=[*cleared, deleted], ended=[*undone, *cleared, halted, deleted, opened, reopened])
    wiring.uploads()
    wiring.settings()


PRIVATE = dict(api_visibility="private", show_progress="hidden")
# a page event that may be refused: one toast, and no component marked as failed (see page_refusal)
QUIET = dict(show_progress_on=[], **PRIVATE)


class _Wiring:
    """`wire`'s parts, over one page."""

    def __init__(self, demo: gr.Blocks, handlers: _Handlers, p: Page, concurrency: int):
        self.demo, self.p, self.endpoints = demo, p, handlers.endpoints
        self.app, self.attachments, self.saving = handlers.chat, handlers.attachments, handlers.saving
        self.model_queue = dict(concurrency_id=ANSWERS, concurrency_limit=concurrency)
        # as respond and export take them: the chat, then the model, the system prompt and the settings
        self.chat_and_settings = dict(history=p.chatbot, model=p.model, system=p.settings["system"], **p.knobs,
                                      records=p.records)
        self.may_ask = dict(history=p.chatbot, answering=p.answering, model=p.model, **p.knobs)

    def api(self) -> None:
        p = self.p
        message, images, video, history, image = p.api_inputs
        # the endpoint's parameters, in this order, are its public API (gradio_client, MCP)
        p.api_button.click(self.endpoints.chat, inputs_kwargs=dict(message=message, images=images, video=video,
                                                             history=history, system=p.settings["system"], **p.knobs,
                                                             model=p.model, image=image),
                           outputs=p.api_answer, api_name="chat", **self.model_queue)  # first: listed first
        # the chat as a JSON file, for API clients (the page writes its own after each change)
        p.api_export.click(self.endpoints.export, inputs_kwargs=self.chat_and_settings, outputs=p.buttons["export"],
                           api_name="export")

    def _respond_after(self, event):
        """The answer, only after a question was taken (a refused one toasted and changed nothing). The
        one event the screen reader hears of: "Done" when the answer is done (the others are hidden)."""
        p = self.p
        return event.success(self.app.respond, inputs_kwargs=self.chat_and_settings,
                             outputs=[p.chatbot, p.status, p.answering, p.records], api_visibility="undocumented",
                             show_progress="minimal", show_progress_on=[], **self.model_queue)

    def asking(self) -> list:
        """Every way to ask: Send, an example card, Retry (the button, the chat's own), an edited
        question, Continue. The answer events, Send's first (its export is the API's /export)."""
        p, app, chat = self.p, self.app, self.p.chatbot
        taken = [chat, p.answering, p.buttons["export"]]
        named = dict(fn=self.saving.named, inputs=p.chat_id, outputs=p.chat_id, queue=False, **PRIVATE)
        sent = p.box.submit(app.ask, inputs_kwargs=dict(box=p.box, images=p.gallery, video=p.video, **self.may_ask),
                            outputs=[chat, p.box, p.gallery, p.video, p.wait, p.answering, p.buttons["export"]],
                            **QUIET)
        example = chat.example_select(app.run_example, inputs_kwargs=self.may_ask, outputs=taken, **QUIET)
        example.then(None, js=FOCUS_BOX, **PRIVATE)
        again = [trigger(app.retry, inputs_kwargs=self.may_ask, outputs=taken, **QUIET)
                 for trigger in (p.buttons["retry"].click, chat.retry)]
        edited = p.edited.change(app.edit, inputs_kwargs=dict(edited=p.edited, **self.may_ask), outputs=taken, **QUIET)
        continued = chat.option_select(app.continue_answer, inputs_kwargs=self.may_ask, outputs=taken, **QUIET)
        asked = (sent, example, *again, edited, continued)
        for event in asked:
            event.success(**named)
        return [self._respond_after(event) for event in asked]

    def buttons(self, asked: list) -> tuple:
        """Stop (the message box's, while an answer streams), Undo and Clear (the buttons and the chat's
        own icons), a like. Stop, Undo and Clear tell the running answer (it ends after its token),
        and gradio closes the handler too. The example's answer is not in `cancels`: listed there,
        Stop often did nothing at all; the handlers end it."""
        p, app, chat = self.p, self.app, self.p.chatbot
        generating = [event for i, event in enumerate(asked) if i != 1]
        # queued: it comes after every update the answer sent (see ChatActions.settle)
        settle = dict(fn=app.settle, inputs=[p.settled, p.answering], outputs=chat, concurrency_limit=None, **PRIVATE)
        halted = p.box.stop(app.stop, [chat, p.records], [chat, p.settled, p.answering, p.records],
                            cancels=generating, queue=False, **PRIVATE).then(**settle)
        undone = [trigger(app.undo, chat, [chat, p.settled, p.box, p.gallery, p.video, p.answering],
                          cancels=generating, queue=False, **PRIVATE).then(**settle)
                  for trigger in (p.buttons["undo"].click, chat.undo)]
        cleared = [trigger(app.clear, None, [chat, p.settled, p.buttons["export"], p.answering, p.records, p.chat_id],
                           cancels=generating, queue=False, **PRIVATE).then(**settle)
                   for trigger in (p.buttons["clear"].click, chat.clear)]
        rated = chat.like(app.rate, [chat, p.records], p.records, queue=False, **PRIVATE)
        return halted, undone, cleared, rated

    def saved_chats(self) -> tuple:
        """The chats kept in the browser: the latest reopened on a page load, one opened from the list,
        the one shown deleted."""
        p, saving, chat = self.p, self.saving, self.p.chatbot
        opened = p.saved_list.input(saving.opened, [p.saved_list, p.chat_id, p.saved, p.answering],
                                    [chat, p.records, p.chat_id, p.buttons["export"]], **QUIET)
        deleted = p.delete.click(saving.deleted, [p.chat_id, p.deleted, p.answering],
                                 [p.deleted, chat, p.records, p.chat_id, p.buttons["export"]], **QUIET)
        reopened = self.demo.load(saving.reopened, p.saved, [chat, p.records, p.chat_id, p.saved_list], **PRIVATE)
        return opened, deleted, reopened

    def afterwards(self, answered: list, done: list, reopened, emptied: list, ended: list) -> None:
        """What follows a change of the chat: `done` (it holds what it will hold), and `answered`
        when the answer ended by itself (a stopped one is Stop's: see answer_export), writes its
        export, sets the buttons and saves it in the browser; so does the chat `reopened` on a
        load, but for the save (it is the store's own; a save asked then could run once a question
        is asked, and keep it without its answer); `emptied` sets the buttons; `ended` (an answer
        may have been cut short) follows the status until a load ends, and renumbers the gallery."""
        p, app, chat = self.p, self.app, self.p.chatbot
        enable = dict(fn=controls, inputs=[chat, p.answering, p.buttons["export"]],
                      outputs=[p.box, p.buttons["retry"], p.buttons["undo"], p.buttons["clear"], p.buttons["export"],
                               p.model], queue=False, **PRIVATE)
        # the page asks for a save (a count it keeps, no round trip); the one `synced` event saves
        save = dict(fn=None, js="(n) => n + 1", inputs=p.save_wanted, outputs=p.save_wanted, queue=False, **PRIVATE)
        p.save_wanted.change(self.saving.synced, [chat, p.records, p.chat_id, p.saved, p.deleted, p.answering],
                             [p.saved, p.saved_list], trigger_mode="always_last", queue=False, **PRIVATE)
        writers = [*((event.success, app.answer_export, True) for event in answered),
                   *((event.then, app.page_export, True) for event in done), (reopened.then, app.page_export, False)]
        for then, export, kept in writers:
            # Export holds the chat so far, and the browser keeps it
            written = then(export, inputs_kwargs=self.chat_and_settings, outputs=p.buttons["export"],
                           **QUIET).then(**enable)
            if kept:
                written.then(**save)
        p.answering.change(**enable)
        numbered = dict(fn=lambda history, items, waiting: self.attachments.gallery_update(history, waiting, items),
                        inputs=[chat, p.gallery, p.video], outputs=p.gallery, queue=False, **PRIVATE)
        for event in emptied:
            event.then(**enable).then(**save)
        for then in (*(then for then, _, _ in writers), *(event.then for event in emptied)):
            then(frames_row, chat, [p.frames_row, p.frames], queue=False, **PRIVATE)
            then(**numbered)
        for event in ended:
            event.then(app.settled_status, p.model, p.status, concurrency_limit=None, **PRIVATE).then(**numbered)

    def uploads(self) -> None:
        """Every file checked as it arrives, in the gallery, the video slot or the message box."""
        p, attachments, chat = self.p, self.attachments, self.p.chatbot
        # queued (its refusals toast), at once, the latest change only; it ends when the gallery is in order
        p.gallery.change(attachments.check_gallery, [p.gallery, p.video, chat, p.warned], [p.gallery, p.warned],
                         concurrency_limit=None, trigger_mode="always_last", **PRIVATE)
        p.video.change(attachments.check_video, [p.video, p.gallery, chat], [p.video, p.gallery],
                       concurrency_limit=None, trigger_mode="always_last", **PRIVATE)
        p.refused_files.change(attachments.refused_uploads, p.refused_files, p.refused_files, concurrency_limit=None,
                              **PRIVATE)
        # queued (its refusals toast), one at a time: the box sends each new file twice (as it uploads,
        # and when done), and the second finds it in `taken`; quick (it reads headers only)
        p.box.change(attachments.take_attached, [p.box, p.gallery, p.video, chat, p.taken, p.warned],
                     [p.box, p.gallery, p.video, p.taken, p.warned], concurrency_id="attach", concurrency_limit=1,
                     trigger_mode="always_last", **PRIVATE)
        p.frames_row.expand(attachments.frames_seen, [chat, p.records], p.frames, **PRIVATE)
        wait_inputs = dict(model=p.model, images=p.gallery, video=p.video, max_tiles=p.settings["max_tiles"],
                           num_frames=p.settings["num_frames"])
        for changed in wait_inputs.values():
            changed.change(attachments.wait_note, inputs_kwargs=wait_inputs, outputs=p.wait, queue=False,
                           **PRIVATE)

    def settings(self) -> None:
        """A setting out of range is told as it is set, not only on sending; the model's status; the
        settings folded on a phone."""
        p, app = self.p, self.app
        for name, knob in p.knobs.items():
            trigger = knob.blur if name == "seed" else knob.change
            trigger(app.check_settings, inputs_kwargs=p.knobs, concurrency_limit=None, **PRIVATE)
        show_status = dict(fn=app.status, inputs=p.model, outputs=p.status, queue=False, **PRIVATE)
        p.model.change(**show_status)
        self.demo.load(**show_status)
        self.demo.load(lambda narrow: gr.update(open=not narrow), p.narrow, p.settings["panel"], js=NARROW,
                       queue=False, **PRIVATE)
