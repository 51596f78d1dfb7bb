"""Small benchmark files in VLMEvalKit's TSV format, made by the tests (nothing is downloaded)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def picture(width: int, height: int, seed: int, text: str = "") -> Image.Image:
    """Noise with a line of text: every pixel differs, so a wrong resize or crop shows."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if text:
        ImageDraw.Draw(image).text((10, 10), text, fill=(255, 255, 255))
    return image


def encoded(image: Image.Image, file_format: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=file_format)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_tsv(path: Path, rows: list[dict]) -> Path:
    """As VLMEvalKit's files are written: pandas, tab-separated, missing cells empty."""
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def chartqa_rows(sizes: list[tuple[int, int]], seed: int = 0) -> list[dict]:
    """ChartQA_TEST-like items: one image each, a numeric answer, a split column."""
    return [{"index": i, "image": encoded(picture(w, h, seed + i, f"value {10 * i}")),
             "question": f"What is the value of bar {i}?", "answer": str(10 * i),
             "split": "human" if i % 2 else "augmented"} for i, (w, h) in enumerate(sizes)]
