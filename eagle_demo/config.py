"""Every setting and limit of the demo, in one place."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from .errors import UserError


@dataclass(frozen=True)
class Limits:
    """What a single user may send. Shown in the UI where a user meets them."""

    max_upload_mb: int = 50
    max_image_pixels: int = 40_000_000  # larger images are refused (decompression bombs)
    max_image_side: int = 20_000
    max_images_per_conversation: int = 16  # images and videos together
    # 56 frames of 256 tokens (plus their 'Frame i sampled at t seconds:' lines) leave room in the
    # 16,384-token context for the question and an answer; 60 to 64 could never fit
    max_video_frames: int = 56
    max_video_pixels: int = 8_500_000  # per frame: 4K (3840x2160) fits, 8K does not
    max_video_seconds: float = 4 * 3600.0
    max_prompt_chars: int = 8_000  # one message, and the system prompt
    # A whole conversation (API clients send any history): beyond these it could never fit the
    # context, and tokenising it would only keep the model from other users.
    max_chat_chars: int = 131_072  # 8 characters a token
    max_chat_messages: int = 1_000
    context_tokens: int = 16_384  # the upstream tokenizer's model_max_length


LIMITS = Limits()
# `eval`: benchmark images are enlarged 2x before tiling (a document scan becomes 100+ megapixels, a
# lossless copy of it hundreds of MB), and a question with several 12-tile images needs the language
# model's whole 32K context, as Eagle2's own evaluation gave it.
EVAL_LIMITS = Limits(max_upload_mb=2048, max_image_pixels=170_000_000, max_image_side=40_000,
                     max_prompt_chars=32_000, context_tokens=32_768)
# Clients that may wait for each answer slot (--concurrency); beyond that a new one is told the app is busy.
QUEUED_PER_ANSWER_SLOT = 20


class SettingsError(UserError):
    """A generation setting that is out of range or not a number; the message names it."""


@dataclass(frozen=True)
class SettingRange:
    label: str  # as the UI names it
    low: float
    high: float
    whole: bool  # a whole number


def _setting(default, label: str, low: float, high: float, whole: bool):
    return field(default=default, metadata={"range": SettingRange(label, low, high, whole)})


# Below this (and above 0, which is greedy) dividing the logits by the temperature overflows.
MIN_TEMPERATURE = 0.01


@dataclass
class GenerationSettings:
    """Per-request knobs; the defaults are the app's and the CLI's. Each field's range is what a
    client may ask for (the UI's sliders, the `chat` endpoint, the CLI), and the fields' order is the
    order of the settings wherever they are positional (the endpoints' parameters: clients rely on it)."""

    max_tiles: int = _setting(12, "Max tiles per image", 1, 24, True)
    num_frames: int = _setting(8, "Video frames", 1, LIMITS.max_video_frames, True)
    temperature: float = _setting(0.2, "Temperature", 0.0, 1.5, False)  # 0 means greedy
    top_p: float = _setting(0.7, "Top-p", 0.05, 1.0, False)
    max_new_tokens: int = _setting(1024, "Max new tokens", 1, 4096, True)
    repetition_penalty: float = _setting(1.1, "Repetition penalty", 1.0, 2.0, False)
    top_k: int = _setting(50, "Top-k", 0, 200, True)  # 0 disables it
    seed: int | None = _setting(None, "Seed", 0, 2**63 - 1, True)  # fixes sampling, for reproducible answers

    @classmethod
    def checked(cls, **values) -> GenerationSettings:
        """Settings from a client's values: each a finite number within its range (a missing or
        None value takes the default). Raises SettingsError naming the first one that is not."""
        defaults = cls()
        settings = {}
        for name, limits in SETTING_RANGES.items():
            value = values.get(name)
            settings[name] = getattr(defaults, name) if value is None else _checked(value, limits)
        if 0 < settings["temperature"] < MIN_TEMPERATURE:
            raise SettingsError(f"Temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}.")
        return cls(**settings)


# name -> range, in the settings' order
SETTING_RANGES = {f.name: f.metadata["range"] for f in fields(GenerationSettings)}


def _checked(value, limits: SettingRange):
    kind = "a whole number" if limits.whole else "a number"
    problem = SettingsError(f"{limits.label} must be {kind} from {limits.low:,} to {limits.high:,}.")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise problem
    if not (math.isfinite(value) and limits.low <= value <= limits.high):
        raise problem
    if limits.whole:
        if value != int(value):
            raise problem
        return int(value)
    return float(value)


DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_MODEL = "nvidia/Eagle2-1B"
