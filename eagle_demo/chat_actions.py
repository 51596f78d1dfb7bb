"""What the page's chat does: ask (a typed question, an example card, Retry, an edited question,
Continue), stream the answer, Stop, Undo, Clear, rate an answer, export the chat (the API's
endpoints are in endpoints.py). Every answer goes through `answers.AnswerStream`; Stop closes its
generator, and the decode ends after its current token. No model code.

A page's request that cannot go ahead is refused before anything changes (`page_refusal`: one
toast, the inputs as they were), so no refusal leaves the session thinking an answer runs.
Per-session state comes in as arguments (gr.State): `answering`, and `records` (see records.py).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict

import gradio as gr

from . import grounding, media
from .answers import AnswerStream
from .attachments import Attachments
from .chat_history import (
    CONTINUE,
    STOPPED_FOOTER,
    answer_footer,
    answer_key,
    answer_message,
    answer_text,
    conversation,
    error_message,
    is_error,
    is_video,
    last_question,
    progress_message,
    question,
    question_messages,
    question_starts,
    stopped,
    without_answers,
    without_progress,
)
from .config import GenerationSettings, Limits
from .conversation import Message
from .errors import UserError, server_fault
from .gradio_inputs import checked_model, page_refusal, settings_from
from .records import OutputFiles, exported, recorded

BUSY_SENDING = "The answer is still coming. Wait for it, or press Stop, then send again; your text stays in the box."
BUSY = "The answer is still coming. Wait for it, or press Stop first."
CONTINUE_ASKED = "Continue."
STATUS_POLL_S = 0.5
HALTS_KEPT = 1000  # sessions whose latest answer Stop can still find
# the page redraws the whole answer for each update: one per token at a fast model's rate keeps the
# browser so busy that a click on Stop waits for the answer's end; ~12 a second reads smoothly. A
# long answer costs more to redraw (a phone's browser, or one sharing a small CPU with the model,
# falls behind): its updates come less often, down to one a second at 16,000 characters.
PAGE_UPDATE_INTERVAL_S = 0.08
PAGE_UPDATE_CHARS_PER_S = 16_000


def page_update_interval(text: str) -> float:
    """Seconds between two updates of an answer that reads `text` so far."""
    return min(1.0, max(PAGE_UPDATE_INTERVAL_S, len(text) / PAGE_UPDATE_CHARS_PER_S))


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
    """A page answer's end, asked for by Stop, Undo or Clear. It knows what the answer is made with,
    for a stopped answer's record."""

    def __init__(self, made_with: dict):
        super().__init__()
        self.made_with, self.tokens = made_with, 0


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
        # session -> the Stop of the page's latest answer there (gradio's own cancel alone was not
        # always heard). Kept after the answer ends: gradio may close the answer (Stop's `cancels`)
        # before Stop's own handler reads what it was made with. The latest sessions only.
        self._stops: dict[str, _Halt] = {}

    # ------------------------------------------------------------------ model and status
    def checked_model(self, model: str | None) -> str:
        return checked_model(model, self.models)

    def status(self, model: str, state: str | None = None) -> str:
        return f"**Model** {model} · {state or self.menu.status(model)}"

    def settled_status(self, model: str) -> Iterator[str]:
        """The status, followed while the model is still loading or fetching (Stop ends the answer
        at once, but a load runs to its end)."""
        model = self.checked_model(model)
        shown = None
        while True:
            state = self.menu.status(model)
            if state != shown:
                shown = state
                yield self.status(model, state)
            if not state.endswith("…"):  # loading and fetching are the states that end by themselves
                return
            time.sleep(STATUS_POLL_S)

    def check_settings(self, **settings) -> None:
        """A toast as soon as a setting is set out of range (sending is refused with the same words)."""
        try:
            settings_from(**settings)
        except UserError as e:
            gr.Warning(str(e))

    # ------------------------------------------------------------------ asking
    def _may_ask(self, answering: bool, model: str | None, settings: dict, busy: str = BUSY) -> None:
        """Refuse (a toast, nothing changed) while an answer streams, or when the model or a setting
        is not one this app takes."""
        if answering:
            page_refusal(busy)
        if model not in self.models:
            page_refusal(f"Pick a model from the menu; this app serves {', '.join(self.models)}.")
        try:
            settings_from(**settings)
        except UserError as e:
            page_refusal(f"{e} Change it in Settings, then try again.")

    def ask(self, box: dict | None, images, video, history: list[dict], answering: bool, model: str | None,
            **settings):
        """The question into the chat, the inputs emptied. Refused (a toast; the text stays in the box)
        while an answer streams, when there is nothing to send, when it is too long, or when a
        setting is out of range; the answer then does not start."""
        self._may_ask(answering, model, settings, BUSY_SENDING)
        text = (box or {}).get("text") or ""
        images = self.attachments.readable([item[0] for item in images or []])  # refused ones were told
        if (box or {}).get("files"):  # not yet moved to the gallery: sent as they are
            images += [f for f in box["files"] if isinstance(f, str) and not is_video(f)]
        if not (text.strip() or images or video):
            page_refusal("Type a question, or add an image or a video.")
        if len(text) > self.limits.max_prompt_chars:
            page_refusal(f"The message is {len(text):,} characters long; the limit is "
                         f"{self.limits.max_prompt_chars:,}. Shorten it; it stays in the box.")
        history = without_progress(history) + question_messages(text, images, video)
        return (history, {"text": "", "files": []}, self.attachments.gallery_update(history, None, None, value=None),
                None, "", True, None)

    def run_example(self, example: gr.SelectData, history: list[dict], answering: bool, model: str | None,
                    **settings):
        """A tapped example card: its question, images and video asked at once (found by its index:
        what a client sends is never taken as a path). A draft in the box and what waits in the
        gallery stay where they are."""
        self._may_ask(answering, model, settings, BUSY_SENDING)
        text, images, video = self.examples[example.index]
        return without_progress(history) + question_messages(text, images, video), True, None

    def retry(self, history: list[dict], answering: bool, model: str | None, **settings):
        """The last question asked again (its answer, or error, goes)."""
        self._may_ask(answering, model, settings)
        history = without_answers(without_progress(history))
        if not history:
            page_refusal("Nothing to retry yet: ask a question first.")
        return history, True, None

    def edit(self, edited: str, history: list[dict], answering: bool, model: str | None, **settings):
        """An earlier question, edited in the chat (`edited`: {"question": its place among the chat's
        questions, "text": the new words}), asked again from there: what came after it goes."""
        try:
            change = json.loads(edited)
            place, text = change["question"], change["text"]
        except (ValueError, TypeError, KeyError):
            page_refusal("That edit could not be read; edit the question again.")
        self._may_ask(answering, model, settings)
        questions = question_starts(history)
        if not isinstance(place, int) or not 0 <= place < len(questions) or not isinstance(text, str):
            page_refusal("That question is no longer in the chat.")
        if len(text) > self.limits.max_prompt_chars:
            page_refusal(f"The question is {len(text):,} characters long; the limit is "
                         f"{self.limits.max_prompt_chars:,}.")
        start = questions[place]
        end = start + 1
        while end < len(history) and history[end]["role"] == "user" and not is_error(history[end]):
            end += 1
        asked = [question(m) for m in history[start:end]]
        images, video = [f for m in asked for f in m.images], next((m.video for m in asked if m.video), None)
        if not (text.strip() or images or video):
            page_refusal("Type a question, or add an image or a video.")
        return history[:start] + question_messages(text, images, video), True, None

    def continue_answer(self, option: gr.SelectData, history: list[dict], answering: bool, model: str | None,
                        **settings):
        """An answer cut at Max new tokens: "Continue" asks the model to go on."""
        if option.value != CONTINUE:
            return gr.skip(), gr.skip(), gr.skip()
        self._may_ask(answering, model, settings)
        return without_progress(history) + question_messages(CONTINUE_ASKED, [], None), True, None

    # ------------------------------------------------------------------ answering
    def respond(self, history: list[dict], model: str, system: str, records: dict | None = None,
                request: gr.Request = None, **settings) -> Iterator[tuple]:
        """Streams (chat, status, answering, records) for the chat's last question: what runs before
        the first word in the answer's own bubble, then the answer. Whatever happens, the last
        update says that nothing answers any more."""
        if not history or history[-1]["role"] != "user" or is_error(history[-1]):
            yield gr.skip(), gr.skip(), False, gr.skip()  # nothing asked
            return
        try:
            turns, model, generation = conversation(history), self.checked_model(model), settings_from(**settings)
        except (UserError, gr.Error) as e:  # an API client's values (the page checked them on asking)
            yield gr.skip(), gr.skip(), False, gr.skip()
            raise gr.Error(str(e) if isinstance(e, UserError) else e.message, print_exception=False) from None
        system = "" if system is None else system
        made_with = {"model": model, "system_prompt": system, "settings": asdict(generation)}
        session = getattr(request, "session_hash", None) or uuid.uuid4().hex
        stop = _Halt(made_with)
        self._stops.pop(session, None)
        self._stops[session] = stop
        while len(self._stops) > HALTS_KEPT:
            self._stops.pop(next(iter(self._stops)))
        try:
            yield from self._streamed(history, turns, model, system, generation, records, stop)
        except Exception as e:  # never leave the page waiting: the failure becomes the answer's bubble
            message = e.message if isinstance(e, gr.Error) else str(e) if isinstance(e, UserError) else \
                server_fault("answering on the page failed")
            yield history + [error_message(message)], self.status(model), False, gr.skip()

    def _streamed(self, history: list[dict], turns: list[Message], model: str, system: str,
                  settings: GenerationSettings, records: dict | None, stop: _Halt) -> Iterator[tuple]:
        text, stats, shown_at = "", None, 0.0
        # closing: Stop closes this generator, and that must reach the decode at once
        with closing(self.answers.stream(turns, model, system, settings)) as updates:
            for update in updates:
                if stop.is_set():  # Stop's, Undo's or Clear's reply holds the chat now (see `settle`)
                    yield gr.skip(), self.status(model), False, gr.skip()
                    return
                if update.error is not None:  # the answer's failure, shown in the chat (a UserError's words)
                    kept = [answer_message(text)] if text else []
                    yield history + kept + [error_message(update.error)], self.status(model), False, gr.skip()
                    return
                if update.status:
                    if not text:
                        yield history + [progress_message(update.status)], self.status(model, update.status), \
                            gr.skip(), gr.skip()
                    continue
                text, stats, stop.tokens = update.text, update.stats or stats, update.tokens
                if time.monotonic() - shown_at >= page_update_interval(text):  # the rest: with the next, or the last
                    shown_at = time.monotonic()
                    yield history + [answer_message(text)], self.status(model, "writing…"), gr.skip(), gr.skip()
        yield self._answered(history, turns, text, stats, stop.made_with, records)

    def _answered(self, history: list[dict], turns: list[Message], text: str, stats: dict | None,
                  made_with: dict, records: dict | None) -> tuple:
        """The last update of an answer that ended by itself: its bubble with its drawing and footer
        (and Continue, when it reached Max new tokens), and its record."""
        drawn = annotate(text, turns, self.files)
        model = made_with["model"]
        cut = bool(stats) and stats.get("finish_reason") == "length"
        footer = answer_footer(model, stats) if stats else None
        if cut:
            footer += f" · cut at the {made_with['settings']['max_new_tokens']:,}-token limit (Max new tokens)"
        if not text.strip():  # a blank bubble would look like a fault of the page
            footer = " · ".join(filter(None, ["the model ended its answer without writing anything", footer]))
        # a new record: a rating of an earlier answer in this place does not carry over
        records = recorded(records, answer_key(len(history), text), self.limits.max_chat_messages, fresh=True,
                           made_with={**made_with, "stats": stats})
        return history + [answer_message(text, drawn, footer, cut=cut)], self.status(model), False, records

    # ------------------------------------------------------------------ the chat's buttons
    def _halt(self, request: gr.Request | None) -> _Halt | None:
        """The answer streaming in this session (if any) ends after its current token."""
        stop = self._stop_of(request)
        if stop is not None:
            stop.set()
        return stop

    def _stop_of(self, request: gr.Request | None) -> _Halt | None:
        """The Stop of this session's latest page answer, if any."""
        return self._stops.get(getattr(request, "session_hash", None))

    @staticmethod
    def settle(settled: list[dict], answering: bool):
        """The chat as Stop, Undo or Clear left it (`settled`), once more: an update the answer sent
        just before them can reach the page after their reply. This comes after it (the answer's
        updates and this one share the page's event stream); nothing changes if a new answer runs."""
        return gr.skip() if answering else settled

    def stop(self, history: list[dict], records: dict | None, request: gr.Request = None):
        """Stop: the answer so far stays, marked stopped, and keeps a record of what it was made with."""
        halted = self._halt(request)
        history = stopped(history or [])
        record = gr.skip() if halted is None else self._stopped_record(history, records, halted)
        return history, history, False, record

    def _stopped_record(self, history: list[dict], records: dict | None, halted: _Halt):
        """`records` with the record of the stopped answer at the end of `history` (none for a note)."""
        if not history or is_error(history[-1]):
            return gr.skip()
        stats = {"model": halted.made_with["model"], "tokens": halted.tokens, "finish_reason": STOPPED_FOOTER}
        return recorded(records, answer_key(len(history) - 1, answer_text(history[-1])), self.limits.max_chat_messages,
                        fresh=True, made_with={**halted.made_with, "stats": stats})

    def clear(self, request: gr.Request = None):
        """Clear: a new, empty chat (the one before stays in the saved chats); nothing answering."""
        self._halt(request)
        return [], [], None, False, {}, ""

    def undo(self, history: list[dict], request: gr.Request = None):
        """Remove the last question and its answer; put the question back in the inputs."""
        self._halt(request)
        history = without_answers(without_progress(history or []))
        if not history:
            return history, history, gr.skip(), gr.skip(), gr.skip(), False
        start = last_question(history)
        asked = [question(m) for m in history[start:]]
        text = "\n".join(filter(None, (m.text for m in asked)))
        images = [(f, None) for m in asked for f in m.images]
        video = next((m.video for m in asked if m.video), None)
        return history[:start], history[:start], {"text": text, "files": []}, images or None, video, False

    def rate(self, like: gr.LikeData, history: list[dict], records: dict | None) -> dict:
        """A like or dislike on an answer, kept for the export (a second click takes it back)."""
        if not isinstance(like.index, int) or not 0 <= like.index < len(history or []):
            return gr.skip()
        rating = {True: "like", False: "dislike"}.get(like.liked)
        key = answer_key(like.index, answer_text(history[like.index]))
        return recorded(records, key, self.limits.max_chat_messages, rating=rating)

    def answer_export(self, history: list[dict], model: str | None, system: str, records: dict | None,
                      request: gr.Request = None, **settings):
        """`page_export` after an answer's own end, unless Stop, Undo or Clear reached it first: their
        export follows, from the chat they settled, and the page may still show an update the answer
        sent before them (an export of it would lack the stop mark, and could be the one kept)."""
        halted = self._stop_of(request)
        if halted is not None and halted.is_set():
            return gr.skip()
        return self.page_export(history, model, system, records, **settings)

    def page_export(self, history: list[dict], model: str | None, system: str, records: dict | None, **settings):
        """The page's Export after each change of the chat: the chat as it is now, whatever is being
        typed in the settings (a value out of range is told where it is set, and exported as none)."""
        try:
            current = settings_from(**settings)
        except UserError:
            current = None
        if not history or model not in self.models:
            return None
        try:
            return exported(without_progress(history), model, system, current, records, self.limits, self.files)
        except UserError:  # a chat past the limits, which the answer itself refused
            return None
