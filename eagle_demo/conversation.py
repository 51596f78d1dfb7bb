"""The one conversation type (`Message`, grouped into `Turn`s) shared by every face and backend, and
the one set of checks every backend runs on a conversation before anything is sent: the same limits,
the same merging of consecutive questions, the same messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import Limits
from .errors import PromptError


@dataclass
class Message:
    """One message of a conversation, as the model sees it."""

    role: str  # "user" or "assistant"
    text: str
    images: list[str] = field(default_factory=list)  # file paths, user messages only
    video: str | None = None

    @property
    def files(self) -> list[str]:
        return [*self.images, *([self.video] if self.video else [])]


@dataclass
class Turn:
    """A question and the answer that followed it (None for the question asked now)."""

    question: Message
    answer: str | None = None


def checked_turns(messages: list[Message], system: str, limits: Limits) -> list[Turn]:
    """The conversation as turns, checked: raises PromptError, with what to change, for anything the
    model cannot take. Consecutive questions merge into one, as the model saw them in training."""
    _check_text("The system prompt", system)
    for m in messages:
        _check_text("The message" if m.role == "user" else "An earlier answer", m.text)
    if len(system) > limits.max_prompt_chars:
        raise PromptError(f"The system prompt is {len(system):,} characters long; "
                          f"the limit is {limits.max_prompt_chars:,}.", 413)
    chars = len(system) + sum(len(m.text) for m in messages)
    if chars > limits.max_chat_chars or len(messages) > limits.max_chat_messages:
        raise PromptError(f"This conversation is too long ({len(messages):,} messages, {chars:,} characters; the "
                          f"limits are {limits.max_chat_messages:,} and {limits.max_chat_chars:,}). Clear the chat.",
                          413)
    turns = _grouped(messages)
    last = turns[-1].question
    if not (last.text.strip() or last.images or last.video):
        raise PromptError("Type a question or add an image or video.")
    if len(last.text) > limits.max_prompt_chars:
        raise PromptError(f"The message is {len(last.text):,} characters long; "
                          f"the limit is {limits.max_prompt_chars:,}.", 413)
    visuals = sum(len(t.question.images) + bool(t.question.video) for t in turns)
    if visuals > limits.max_images_per_conversation:
        raise PromptError(f"This conversation has {visuals} images and videos; the limit is "
                          f"{limits.max_images_per_conversation}. Clear the chat to start over.", 413)
    return turns


def _grouped(messages: list[Message]) -> list[Turn]:
    """Questions paired with the answers that follow them; consecutive questions merged."""
    turns: list[Turn] = []
    for m in messages:
        if m.role == "user":
            if turns and turns[-1].answer is None:
                prev = turns[-1].question
                if m.video and prev.video:
                    raise PromptError("Send one video per message.")
                text = "\n".join(t for t in (prev.text, m.text) if t)
                turns[-1] = Turn(Message("user", text, [*prev.images, *m.images], m.video or prev.video))
            else:
                turns.append(Turn(Message("user", m.text, list(m.images), m.video)))
        elif m.role == "assistant":
            if not turns or turns[-1].answer is not None:
                raise PromptError("An answer must follow a question.")
            turns[-1] = Turn(turns[-1].question, m.text)
        else:
            raise PromptError(f"Unknown message role {m.role!r}; use 'user' or 'assistant'.")
    if not turns or turns[-1].answer is not None:
        raise PromptError("The conversation must end with a user message.")
    return turns


def _check_text(what: str, text) -> None:
    if not isinstance(text, str):
        raise PromptError(f"{what} must be text.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, which no tokenizer takes
        raise PromptError(f"{what} contains characters that are not valid text; remove them and send it again.") \
            from None
