"""Benchmark items from local files: VLMEvalKit's TSV, or a folder written by `datasets`' save_to_disk.

A TSV is read as VLMEvalKit reads it (pandas' parsing, so the same cells count as missing), and its
images reach the model as VLMEvalKit's dump_image left them: a single image saved as `{index}.jpg`
(a JPEG at PIL's default quality, whatever the original's format), several saved under the names
of the `image_path` column. Nothing is downloaded.
"""

from __future__ import annotations

import ast
import base64
import io
import math
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from PIL import Image

ImagesLoader = Callable[[], list[Image.Image]]
_OWN_COLUMNS = ("index", "question", "answer", "image")
# VLMEvalKit takes an `image` cell this short for the index of the row that holds the image.
_REFERENCE_CHARS = 64


@dataclass
class Item:
    index: int | str
    question: str
    answer: str | list[str] | None  # None: the set has no answers (a test split scored by its server)
    images: ImagesLoader = list  # opens the item's images, in order, when it is asked
    fields: dict[str, str] = field(default_factory=dict)  # the benchmark's other columns, as text


def read_items(path: str | Path, split: str | None = None) -> list[Item]:
    path = Path(path)
    if path.is_dir():
        return read_saved_dataset(path, split)
    if path.suffix.lower() == ".tsv" and path.is_file():
        return read_tsv(path)
    raise ValueError(f"{path} is neither a VLMEvalKit .tsv file nor a folder written by datasets' save_to_disk.")


def answers(answer: str | list[str]) -> list[str]:
    """The accepted answers: a list as it is, a cell that spells a Python list as that list (as
    VLMEvalKit evaluates it), any other text as the one answer."""
    if isinstance(answer, list):
        return [str(a) for a in answer]
    try:
        parsed = ast.literal_eval(answer)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return [answer]
    return [str(a) for a in parsed] if isinstance(parsed, list) else [answer]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _as_list(value: str) -> list[str]:
    """VLMEvalKit's toliststr: a cell that spells a list is that list of strings."""
    return answers(value) if value.lstrip().startswith("[") else [value]


def stored_like_vlmevalkit(encoded: str, name: str) -> Image.Image:
    """The image as VLMEvalKit's dump_image writes it under `name` and its adapter reads it back."""
    image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    if image.mode in ("RGBA", "P"):
        image = image.convert("RGB")
    file_format = Image.registered_extensions().get(Path(name).suffix.lower(), "PNG")
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=file_format)
    except OSError:  # a mode the format cannot hold (VLMEvalKit fails on it): the RGB image instead
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format=file_format)
    buffer.seek(0)
    return Image.open(buffer)


def read_tsv(path: Path) -> list[Item]:
    import pandas as pd  # a dependency of gradio; imported only here

    rows = pd.read_csv(path, sep="\t").to_dict("records")
    if rows and "question" not in rows[0]:
        raise ValueError(f"{path} has no `question` column: it is not a VLMEvalKit benchmark file.")
    if rows and "image" in rows[0]:
        rows = [row for row in rows if not _missing(row["image"])]
    for row in rows:
        row["index"] = str(row["index"])
    by_index = {row["index"]: str(row["image"]) for row in rows if "image" in row}
    as_int = all(row["index"].lstrip("-").isdigit() for row in rows)
    items = []
    for row in rows:
        index = int(row["index"]) if as_int else row["index"]
        fields = {key: str(value) for key, value in row.items() if key not in _OWN_COLUMNS and not _missing(value)}
        answer = None if _missing(row.get("answer")) else str(row["answer"])
        items.append(Item(index, str(row["question"]), answer, _tsv_images(row, by_index, path.parent), fields))
    return items


def _opened(files: list[Path]) -> list[Image.Image]:
    return [Image.open(f) for f in files]


def _decoded(encoded: list[str], names: list[str]) -> list[Image.Image]:
    return [stored_like_vlmevalkit(e, name) for e, name in zip(encoded, names, strict=True)]


def _tsv_images(row: dict, by_index: dict[str, str], folder: Path) -> ImagesLoader:
    paths = [] if _missing(row.get("image_path")) else _as_list(str(row["image_path"]))
    if "image" not in row:  # files beside the TSV
        return partial(_opened, [folder / p for p in paths])
    encoded = by_index[row["index"]]
    if len(encoded) <= _REFERENCE_CHARS:
        if encoded not in by_index or len(by_index[encoded]) <= _REFERENCE_CHARS:
            raise ValueError(f"item {row['index']}: its image names item {encoded!r}, which holds no image")
        encoded = by_index[encoded]
    images = _as_list(encoded)
    if len(images) == 1:
        return partial(_decoded, images, [f"{row['index']}.jpg"])
    if len(paths) != len(images):
        raise ValueError(f"item {row['index']} has {len(images)} images but {len(paths)} names in image_path")
    return partial(_decoded, images, paths)


def read_saved_dataset(folder: Path, split: str | None) -> list[Item]:
    """A `datasets` folder (as lmms-eval keeps its data): `question`, `answer` or `answers`, any image
    columns (in column order), `index` or `question_id` (else the row number), an `options` list (becoming
    options A, B, ...) and other plain columns as the benchmark's fields."""
    try:
        import datasets
    except ImportError:
        raise ValueError("Reading a folder written by save_to_disk needs the `datasets` package "
                         "(pip install datasets), or use the benchmark's VLMEvalKit .tsv file.") from None
    data = datasets.load_from_disk(str(folder))
    if isinstance(data, datasets.DatasetDict):
        if split is None and len(data) != 1:
            raise ValueError(f"{folder} holds the splits {', '.join(data)}: name one with --split.")
        if split is not None and split not in data:
            raise ValueError(f"{folder} has no split {split!r}; it has {', '.join(data)}.")
        data = data[split or next(iter(data))]
    image_columns = [name for name, feature in data.features.items() if _holds_images(feature, datasets)]
    items = []
    for row_number, row in enumerate(data.remove_columns(image_columns)):
        index = row.pop("index", row.pop("question_id", row_number))
        answer = row.pop("answer", row.pop("answers", None))
        fields = {key: str(value) for key, value in row.items()
                  if isinstance(value, (str, int, float, bool)) and not _missing(value) and key != "question"}
        for letter, option in zip(string.ascii_uppercase, row.get("options") or []):
            fields[letter] = str(option)
        if answer is not None and not isinstance(answer, list):
            answer = str(answer)
        items.append(Item(index, str(row["question"]), answer, partial(_row_images, data, row_number, image_columns),
                          fields))
    return items


def _holds_images(feature, datasets) -> bool:
    inner = feature[0] if isinstance(feature, list) else getattr(feature, "feature", feature)
    return isinstance(inner, datasets.Image)


def _row_images(data, row_number: int, columns: list[str]) -> list[Image.Image]:
    """The row's images: a column of one image or of a list of them; empty cells (MMMU's image_2..7) skipped."""
    row = data[row_number]
    cells = [row[column] for column in columns]
    return [image for cell in cells for image in (cell if isinstance(cell, list) else [cell]) if image is not None]
