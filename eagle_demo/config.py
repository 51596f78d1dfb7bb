"""Every setting and limit of the demo, in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What a single user may send. Shown in the UI where a user meets them."""

    max_upload_mb: int = 50
    max_image_pixels: int = 40_000_000  # larger images are refused (decompression bombs)
    max_image_side: int = 20_000
    max_images_per_conversation: int = 16  # images and videos together
    max_video_frames: int = 64
    max_video_pixels: int = 8_500_000  # per frame: 4K (3840x2160) fits, 8K does not
    max_video_seconds: float = 4 * 3600.0
    max_prompt_chars: int = 8_000  # one message, and the system prompt
    # A whole conversation (API clients send any history): beyond these it could never fit the
    # context, and tokenising it would only keep the model from other users.
    max_chat_chars: int = 131_072  # 8 characters a token
    max_chat_messages: int = 1_000
    context_tokens: int = 16_384  # the upstream tokenizer's model_max_length


LIMITS = Limits()


@dataclass
class GenerationSettings:
    """Per-request knobs; the defaults are the app's and the CLI's."""

    max_tiles: int = 12  # per image, 1..24
    num_frames: int = 8  # per video, 1..64
    temperature: float = 0.2  # 0 means greedy
    top_p: float = 0.7
    top_k: int = 50  # 0 disables it
    max_new_tokens: int = 1024
    repetition_penalty: float = 1.1
    seed: int | None = None  # fixes sampling, for reproducible answers


DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_MODEL = "nvidia/Eagle2-1B"
