"""Shared set-up of the benchmarks: a random checkpoint of a given size and the standard request."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from eagle_demo.tiny import write_tiny_checkpoint
from tests.support import REAL_TOKENIZER

REPO = Path(__file__).resolve().parents[1]
# A question of about 20 tokens, as in the standard request.
QUESTION = "Describe everything you can see in this picture, including colours, shapes and any visible text."


def checkpoint(size: str, layout: str = "eagle_2_5_vl") -> Path:
    """A random-weight checkpoint of `size` (tiny, small, 1B, 2B, 9B) in a temporary folder."""
    out = Path(tempfile.mkdtemp(prefix=f"eagle2-{size}-"))
    return write_tiny_checkpoint(out, layout="eagle_chat" if size == "9B" else layout, mob=size == "9B",
                                 tokenizer_dir=REAL_TOKENIZER, size=size)


def twelve_tile_image(folder: Path) -> str:
    """A 1792x1344 (4:3) drawing: 4x3 = 12 tiles plus the thumbnail at max_tiles=12."""
    img = Image.new("RGB", (1792, 1344), (90, 140, 210))
    draw = ImageDraw.Draw(img)
    for i in range(0, 1792, 64):
        draw.rectangle((i, 700 + (i % 5) * 40, i + 40, 1344), fill=(40 + i % 200, 160, 60))
    draw.ellipse((1300, 100, 1600, 400), fill=(250, 220, 80))
    path = folder / "twelve_tiles.png"
    img.save(path)
    return str(path)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)
