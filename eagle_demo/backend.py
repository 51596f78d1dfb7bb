"""The one interface every face answers through (the page, /chat, the OpenAI-compatible API, eval):
a `Backend` serves models by the names clients see and lends one (`use`) as a `ChatModel`, whose
`chat` checks a conversation and returns an `Answer` that streams its text.

Two implementations: `models.ModelMenu` (the native engine, in this process) and
`server_client.ServerMenu` (an OpenAI-compatible server such as vLLM with this project's plugin).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol

from .config import GenerationSettings
from .conversation import Message

# What runs now, in words, and the part of it done (0 to 1) where that is known: a model's download
# and load, then an answer's stages before its first token (reading the images, reading the prompt).
Progress = Callable[[float | None, str], None]


def no_progress(fraction: float | None, text: str) -> None:
    """A Progress that tells no one."""


class Answer(Protocol):
    """Iterate for the answer's text deltas. Afterwards: its text, token ids, why it ended ("stop",
    "length" or "cancelled"), its timings, and the tiles of each visual it read (frames included)."""

    text: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    finish_reason: str | None
    timings: dict
    num_tiles: list[int]
    num_frames: int  # of the video asked about now

    def __iter__(self) -> Iterator[str]: ...


class ChatModel(Protocol):
    """One model, ready to answer (loaded, or reachable)."""

    @property
    def loaded(self) -> bool: ...

    def chat(self, messages: list[Message], system: str, settings: GenerationSettings | None = None,
             cancel: threading.Event | None = None, progress: Progress | None = None) -> Answer:
        """Check the conversation (conversation.checked_turns, and the media) and prepare its answer;
        raises a UserError for what the user must change. Nothing is generated until it is iterated."""
        ...

    def first_word_estimate(self, images: list[str], video: str | None, settings: GenerationSettings):
        """How long a CPU works before the first word (a wait.WaitEstimate), or None where unknown."""
        ...

    def cpu_default_tiles(self) -> int | None: ...


class Backend(Protocol):
    """The models an app serves, by the names clients see."""

    names: list[str]

    def status(self, name: str) -> str:
        """The model's state in words; never loads anything."""
        ...

    def model(self, name: str) -> ChatModel:
        """The model of that name, not necessarily loaded (KeyError for a name not served)."""
        ...

    def use(self, name: str, progress: Progress | None = None) -> AbstractContextManager[ChatModel]:
        """The model, loaded (telling `progress`) and kept so until the block ends; a LoadError if it
        cannot load."""
        ...
