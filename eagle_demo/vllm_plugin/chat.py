"""A chat sent to vLLM's OpenAI API, as vLLM parses it (each message's content a list of text, image
and video parts), in token ids laid out as the app's engine lays out a conversation.

No vLLM here: the renderer (renderer.py) hands the parsed messages in, and the tests check the layout
against the engine's without vLLM.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .. import preprocessing
from ..config import DEFAULT_SYSTEM_PROMPT

# What stands for each image and video until the processor puts its tiles there: special tokens, which
# no text becomes once tokenized with special tokens split off (Qwen2's own vision placeholders, unused by
# Eagle2 otherwise). A raw prompt (the completions API, token ids) writes them for its images and videos.
PLACEHOLDERS = {"image": "<|image_pad|>", "video": "<|video_pad|>"}


class ChatError(ValueError):
    """A chat the Eagle2 layout cannot take (vLLM answers a ValueError with HTTP 400 and its text)."""


@dataclass
class _Turn:
    images: int
    videos: int
    question: str
    answer: str | None = None


def placeholder_ids(tokenizer) -> dict[str, int]:
    ids = {modality: tokenizer.convert_tokens_to_ids(token) for modality, token in PLACEHOLDERS.items()}
    missing = [PLACEHOLDERS[m] for m, i in ids.items() if i is None or i == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"the tokenizer lacks {', '.join(missing)}")
    return ids


def chat_token_ids(conversation: Sequence[Mapping], tokenizer, placeholders: Mapping[str, int]) -> list[int]:
    """The prompt ids of a parsed conversation, ending with the assistant's turn to answer: the engine's
    layout (preprocessing.chat_pieces), each image and video as its placeholder id followed by a newline,
    the images of a question before its videos, all text tokenized with special tokens split off."""
    system, turns = _turns(conversation)
    laid_out = [([piece for modality, count in (("image", t.images), ("video", t.videos))
                  for _ in range(count) for piece in (placeholders[modality], "\n")], t.question, t.answer)
                for t in turns]
    pieces = preprocessing.chat_pieces(system, laid_out, preprocessing.PromptTokens.from_tokenizer(tokenizer),
                                       tokenizer)
    return preprocessing.token_ids(pieces, tokenizer)


def _turns(conversation: Sequence[Mapping]) -> tuple[str, list[_Turn]]:
    """The system prompt (the default one when none is sent) and the turns, consecutive questions merged
    as the app's conversation.checked_turns merges them."""
    system, turns = DEFAULT_SYSTEM_PROMPT, []
    for index, message in enumerate(conversation):
        role = message.get("role")
        text, counts = _content(message.get("content"))
        if role in ("system", "developer"):
            if index or any(counts.values()):
                raise ChatError("Send the system prompt as the first message, as text.")
            system = text
        elif role == "user":
            if turns and turns[-1].answer is None:
                last = turns[-1]
                last.images, last.videos = last.images + counts["image"], last.videos + counts["video"]
                last.question = "\n".join(t for t in (last.question, text) if t)
            else:
                turns.append(_Turn(counts["image"], counts["video"], text))
        elif role == "assistant":
            if any(counts.values()):
                raise ChatError("Only user messages may hold images and videos.")
            if message.get("tool_calls"):
                raise ChatError("Eagle2 does not call tools.")
            if not turns or turns[-1].answer is not None:
                raise ChatError("An answer must follow a question.")
            turns[-1].answer = text
        else:
            raise ChatError(f"Eagle2 takes system, user and assistant messages, not {role!r}.")
    if not turns or turns[-1].answer is not None:
        raise ChatError("The conversation must end with a user message.")
    return system, turns


def _content(content) -> tuple[str, dict[str, int]]:
    """A message's text parts joined by newlines, as vLLM joins them, and its images and videos counted."""
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
    texts, counts = [], {"image": 0, "video": 0}
    for part in parts:
        kind = part.get("type")
        if kind == "text":
            texts.append(part.get("text") or "")
        elif kind in counts:
            counts[kind] += 1
        else:
            raise ChatError(f"Eagle2 takes text, images and videos, not {kind!r}.")
    return "\n".join(texts), counts
