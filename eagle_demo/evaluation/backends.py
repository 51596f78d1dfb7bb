"""Who answers a benchmark question: the native engine (in this process) or an OpenAI-compatible server
(vLLM with this project's plugin). Both get the same text and the same pixels: each image, enlarged
2x where the benchmark's preset says so, written losslessly to a working folder."""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .. import media, preprocessing
from ..backend import Backend
from ..config import EVAL_LIMITS, GenerationSettings
from ..conversation import Message
from ..errors import UserError
from ..server_client import TILE_SIZE
from .presets import SYSTEM_PROMPT

UPSCALE = 2


@dataclass
class ItemAnswer:
    text: str  # stripped, as the model's chat() returned it
    tiles: list[int]  # per image
    prompt_token_ids: list[int] | None = None
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


class EvalModel:
    """One model of a `backend.Backend` (the native menu, or a server's), asked one item at a time."""

    def __init__(self, backend: Backend, name: str, counts_tiles: bool):
        self.backend, self.name = backend, name
        self.counts_tiles = counts_tiles  # the native engine reports each image's tiles; a server does not

    @classmethod
    def native(cls, model: str, device: str | None = None, dtype: str | None = None) -> EvalModel:
        from ..models import ModelMenu

        menu = ModelMenu([model], device=device, dtype=dtype, limits=EVAL_LIMITS)
        return cls(menu, menu.names[0], counts_tiles=True)

    @classmethod
    def server(cls, url: str, model: str | None = None) -> EvalModel:
        """`model` where the server serves it, else the one model it serves."""
        from ..server_client import ServerMenu

        menu = ServerMenu(url, EVAL_LIMITS)
        if model in menu.names:
            return cls(menu, model, counts_tiles=False)
        if len(menu.names) == 1:
            return cls(menu, menu.names[0], counts_tiles=False)
        raise ValueError(f"The server at {url} serves {', '.join(menu.names)}: name one with --model.")

    def load(self) -> None:
        with self.backend.use(self.name):
            pass

    def answer(self, text: str, images: list[str], settings: GenerationSettings,
               cancel: threading.Event | None = None) -> ItemAnswer:
        try:
            with self.backend.use(self.name) as model:
                reply = model.chat([Message("user", text, images=images)], SYSTEM_PROMPT, settings, cancel)
                for _ in reply:
                    pass
        except UserError as e:
            if e.status in (400, 413):  # this item, as it is: recorded, the run goes on
                raise ItemError(str(e)) from None
            raise
        tiles = list(reply.num_tiles) if self.counts_tiles else [  # the server tiles as the engine does
            preprocessing.count_tiles(*media.image_size(path, EVAL_LIMITS), settings.max_tiles, TILE_SIZE, True)
            for path in images]
        return ItemAnswer(reply.text.strip(), tiles, [int(i) for i in reply.prompt_token_ids] or None,
                          list(reply.token_ids), reply.finish_reason)
