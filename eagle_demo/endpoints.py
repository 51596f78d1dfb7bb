"""The app's endpoints for API clients (gradio_client, MCP): `chat`, which answers a question with
its history, and `export`, which writes a chat as a JSON file. Their parameters, names and order,
are a public API. Values out of range are refused by name, as the CLI refuses them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

from .answers import AnswerStream
from .chat_history import parts, without_progress
from .config import DEFAULT_SYSTEM_PROMPT, GenerationSettings, Limits
from .conversation import Message
from .gradio_inputs import HISTORY_HINT, InputError, checked_model, error_boundary, refuse, settings_from
from .records import OutputFiles, exported

DEFAULTS = GenerationSettings()


class Endpoints:
    """`chat` and `export` over the answers of `answers`, within `limits`; exports go to `files`."""

    def __init__(self, answers: AnswerStream, limits: Limits, files: OutputFiles):
        self.answers, self.limits, self.files = answers, limits, files
        self.models = answers.backend.names

    def checked_model(self, model: str | None) -> str:
        return checked_model(model, self.models)

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

    @error_boundary
    def export(self, history: list[dict], model: str | None = None, system: str = DEFAULT_SYSTEM_PROMPT,
               records: dict | None = None, **settings) -> str | None:
        """The chat and the settings used, as a JSON file to download."""
        if not history:
            return None
        return exported(without_progress(history), self.checked_model(model), system, settings_from(**settings),
                        records, self.limits, self.files)
