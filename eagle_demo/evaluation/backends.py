"""Who answers a benchmark question: the native engine (in this process) or an OpenAI-compatible server
(vLLM with this project's plugin). Both get the same text and the same pixels: each image, enlarged
2x where the benchmark's preset says so, written losslessly to a working folder."""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..config import EVAL_LIMITS, GenerationSettings
from ..conversation import Message
from .presets import SYSTEM_PROMPT

UPSCALE = 2


@dataclass
class Answer:
    text: str  # stripped, as the model's chat() returned it
    tiles: list[int]  # per image
    prompt_token_ids: list[int] | None = None  # the native engine's only
    token_ids: list[int] | None = None
    finish_reason: str | None = None


class ItemError(ValueError):
    """This item cannot be asked as it is (e.g. more tokens than the context): it is recorded, not retried."""


def prepare_images(images: list[Image.Image], upscaled: bool, folder: Path) -> list[str]:
    """Each image in RGB, enlarged 2x with PIL's bilinear filter when `upscaled`, saved as a PNG."""
    paths = []
    for image in images:
        image = image.convert("RGB")
        if upscaled:
            image = image.resize((image.width * UPSCALE, image.height * UPSCALE), Image.Resampling.BILINEAR)
        with tempfile.NamedTemporaryFile(dir=folder, prefix="image-", suffix=".png", delete=False) as file:
            image.save(file, format="PNG", compress_level=1)
        paths.append(file.name)
    return paths


class NativeBackend:
    """The native engine; one answer at a time (the engine serialises them), media prepared in parallel."""

    def __init__(self, model: str, device: str | None = None, dtype: str | None = None):
        from ..engine import Engine

        self.name = model
        self.engine = Engine(model, device=device, dtype=dtype, limits=EVAL_LIMITS)

    def load(self) -> None:
        self.engine.load()

    def answer(self, text: str, images: list[str], settings: GenerationSettings,
               cancel: threading.Event | None = None) -> Answer:
        from ..engine import PromptError
        from ..media import MediaError

        try:
            generation = self.engine.chat([Message("user", text, images=images)], SYSTEM_PROMPT, settings, cancel)
        except (PromptError, MediaError) as e:
            raise ItemError(str(e)) from None
        for _ in generation:
            pass
        prompt_ids = [int(i) for i in generation.prompt_token_ids]
        return Answer(generation.text.strip(), list(generation.num_tiles), prompt_ids, list(generation.token_ids),
                      generation.finish_reason)


class ServerBackend:
    """A served model: `model` where the server serves it, else the one model it serves."""

    def __init__(self, url: str, model: str | None = None):
        from ..server_client import ServerMenu

        self.menu = ServerMenu(url, EVAL_LIMITS)
        if model in self.menu.names:
            self.name = model
        elif len(self.menu.names) == 1:
            self.name = self.menu.names[0]
        else:
            raise ValueError(f"The server at {url} serves {', '.join(self.menu.names)}: name one with --model.")

    def load(self) -> None:
        pass

    def answer(self, text: str, images: list[str], settings: GenerationSettings,
               cancel: threading.Event | None = None) -> Answer:
        from .. import media, preprocessing
        from ..server_client import REFUSED, TILE_SIZE, ServerError

        reply = self.menu.engine(self.name).chat([Message("user", text, images=images)], SYSTEM_PROMPT, settings,
                                                 cancel)
        try:
            for _ in reply:
                pass
        except ServerError as e:
            if str(e) == REFUSED:
                raise ItemError(str(e)) from None
            raise
        # the server tiles as the engine does; counted here from the sizes, as the server does not say
        tiles = [preprocessing.count_tiles(*media.image_size(path, EVAL_LIMITS), settings.max_tiles,
                                           tile_size=TILE_SIZE, use_thumbnail=True) for path in images]
        return Answer(reply.text.strip(), tiles, None, list(reply.token_ids), reply.finish_reason)
