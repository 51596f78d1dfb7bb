"""Dynamic tiling, normalisation and the prompt layout of Eagle2's chat().

Works on PIL images (media.py opens files). Tile size, tokens per tile and use_thumbnail come
from the model config and are passed in by the caller.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# SigLIP normalisation, used by every Eagle2 vision tower (MOB's ConvNeXt converts from it).
MEAN = 0.5
STD = 0.5
# Above this share of the image's own pixel area a bigger grid no longer improves the score.
AREA_CAP = 0.6


# ---------------------------------------------------------------------------------------------
# Tiling


def candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """Every (cols, rows) with min_tiles <= cols*rows <= max_tiles, in the official order.

    The official code adds (i, j) to a Python set in a triple loop (n from min_tiles to max_tiles,
    then i and j from 1 to n), and stable-sorts it by tile count, so grids with equal counts keep
    the set's iteration order. That order depends only on the sequence of first additions (adding
    a member again changes nothing), so this adds the same pairs in the same sequence, skipping
    the loop's repeats: about max_tiles * log(max_tiles) steps instead of max_tiles cubed.
    """
    grids = set()
    for i in range(1, min_tiles + 1):  # n == min_tiles meets every pair within min_tiles x min_tiles
        for j in range(1, min_tiles + 1):
            if min_tiles <= i * j <= max_tiles:
                grids.add((i, j))
    for n in range(min_tiles + 1, max_tiles + 1):  # later n first meet the pairs with n as a side
        for i in range(1, min(n - 1, max_tiles // n) + 1):
            if min_tiles <= i * n:
                grids.add((i, n))
        for j in range(1, min(n, max_tiles // n) + 1):
            if min_tiles <= n * j:
                grids.add((n, j))
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def choose_grid(width: int, height: int, min_tiles: int, max_tiles: int, tile_size: int) -> tuple[int, int]:
    """(cols, rows) whose aspect best matches the image, weighted by area up to AREA_CAP.

    The first strictly best candidate wins; (1, 1) when there is none.
    """
    aspect = width / height
    best_score, best = -float("inf"), (1, 1)
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        ratio = cols / rows
        area = min(cols * rows * tile_size * tile_size / (width * height), AREA_CAP)
        score = area * min(ratio / aspect, aspect / ratio)
        if score > best_score:
            best_score, best = score, (cols, rows)
    return best


def count_tiles(
    width: int, height: int, max_tiles: int, tile_size: int, use_thumbnail: bool, min_tiles: int = 1
) -> int:
    """How many tiles tile_image makes for an image of this size."""
    cols, rows = choose_grid(width, height, min_tiles, max_tiles, tile_size)
    return cols * rows + (use_thumbnail and cols * rows > 1)


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, S, S] -> float32, the same operations as ToTensor + Normalize."""
    return pixels.float().div_(255).sub_(MEAN).div_(STD)


def tile_image_reference(
    img: Image.Image, max_tiles: int, tile_size: int, use_thumbnail: bool, min_tiles: int = 1
) -> torch.Tensor:
    """The official pipeline, tile by tile with PIL: [T, 3, S, S] float32, thumbnail last.

    (Officially a non-RGB image is tiled in its own mode; here it is converted first, as
    media.open_image already does.)
    """
    img = _rgb(img)
    cols, rows = choose_grid(*img.size, min_tiles, max_tiles, tile_size)
    resized = img.resize((cols * tile_size, rows * tile_size), Image.Resampling.BICUBIC)
    tiles = [
        resized.crop((c * tile_size, r * tile_size, (c + 1) * tile_size, (r + 1) * tile_size))
        for r in range(rows)
        for c in range(cols)
    ]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(img.resize((tile_size, tile_size), Image.Resampling.BICUBIC))
    return torch.stack([_normalise(torch.from_numpy(np.array(tile)).permute(2, 0, 1)) for tile in tiles])


def tile_image(
    img: Image.Image,
    max_tiles: int,
    tile_size: int,
    use_thumbnail: bool,
    min_tiles: int = 1,
    source_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Bit-identical to tile_image_reference, faster: the thumbnail is resized in a second
    thread (Pillow releases the GIL) and the tiles are cut and normalised as one tensor.

    source_size: the size to choose the grid from when img was decoded at reduced scale
    (media.open_image's min_size), so that it tiles like the full image. That decode is the
    fast path's only approximation, because libjpeg's DCT downscaling is a different low-pass
    filter than PIL's bicubic. On a 12 MP photo into 13 tiles: mean |error| 0.6/255, 99% of
    values within 4/255, single pixels at hard edges up to ~30/255 (tests/test_preprocessing.py
    holds it to mean <= 1/255 and 99th percentile <= 5/255).
    """
    img = _rgb(img)
    cols, rows = choose_grid(*(source_size or img.size), min_tiles, max_tiles, tile_size)
    size = tile_size
    with ThreadPoolExecutor(max_workers=1) as pool:
        thumbnail = None
        if use_thumbnail and cols * rows > 1:
            thumbnail = pool.submit(img.resize, (size, size), Image.Resampling.BICUBIC)
        resized = img.resize((cols * size, rows * size), Image.Resampling.BICUBIC)
        tiles = torch.empty(cols * rows + (thumbnail is not None), 3, size, size, dtype=torch.uint8)
        # [rows*S, cols*S, 3] -> [rows, cols, 3, S, S]: the tiles in row-major order
        grid = torch.from_numpy(np.array(resized)).view(rows, size, cols, size, 3).permute(0, 2, 4, 1, 3)
        tiles[: cols * rows].view(rows, cols, 3, size, size).copy_(grid)
        if thumbnail is not None:
            tiles[-1].copy_(torch.from_numpy(np.array(thumbnail.result())).permute(2, 0, 1))
    return _normalise(tiles)


def fit_tiles_to_context(
    image_sizes: Sequence[tuple[int, int]],
    num_frames: int,
    max_tiles: int,
    context_tokens: int,
    tile_size: int,
    tokens_per_tile: int,
    use_thumbnail: bool,
    dynamic: bool = True,
) -> int:
    """The per-image max_tiles to tile every image of a conversation with (upstream rule), wherever
    the model runs (the engine, the vLLM plugin).

    image_sizes: (width, height) of every image in the conversation; num_frames: video frames
    in it (always one tile each). While all tiles together cost >= context_tokens, the limit
    drops by 2 (12, 10, 8, ...); it never goes below 1. Text tokens are not counted, as upstream.
    dynamic: the checkpoint's dynamic_image_size; without it every image is one tile.
    """
    if not dynamic:
        return 1
    while max_tiles > 1:
        tiles = num_frames + sum(count_tiles(w, h, max_tiles, tile_size, use_thumbnail) for w, h in image_sizes)
        if tiles * tokens_per_tile < context_tokens:
            break
        max_tiles = max(1, max_tiles - 2)
    return max_tiles


# ---------------------------------------------------------------------------------------------
# Prompt


@dataclass
class Visual:
    """One image or one video frame, tiled for the vision tower."""

    pixel_values: torch.Tensor  # [T, 3, S, S] float32
    key: str  # stable cache key: source digest + frame index + tiling parameters


@dataclass
class Turn:
    user: str
    images: list[Visual]
    frames: list[Visual]  # video frames, one tile each
    timestamps: list[float]  # seconds, one per frame
    answer: str | None = None  # None for the turn being asked now


@dataclass
class Prompt:
    input_ids: list[int]
    visuals: list[Visual]  # in the order their <IMG_CONTEXT> runs appear in input_ids
    num_tiles: list[int]  # per visual


# Special tokens of the grounding markup (`<ref>label</ref><box>[[x1,y1,x2,y2]]</box>`): they stay
# in the answer text, as upstream decodes them, and go back into the prompt as special tokens.
GROUNDING_TOKENS = ("<ref>", "</ref>", "<box>", "</box>")


@dataclass(frozen=True)
class PromptTokens:
    """Ids of the structural special tokens, read from the tokenizer."""

    img_start: int
    img_end: int
    img_context: int
    im_start: int
    im_end: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> PromptTokens:
        names = {
            "img_start": "<img>",
            "img_end": "</img>",
            "img_context": "<IMG_CONTEXT>",
            "im_start": "<|im_start|>",
            "im_end": "<|im_end|>",
        }
        ids = {field: tokenizer.convert_tokens_to_ids(token) for field, token in names.items()}
        missing = [names[field] for field, id_ in ids.items() if id_ is None or id_ == tokenizer.unk_token_id]
        if missing:
            raise ValueError(f"the tokenizer lacks {', '.join(missing)}")
        return cls(**ids)


_TRANSFORMERS_IMPORT = threading.Lock()


def load_tokenizer(path: str | Path):
    """The checkpoint's Qwen2 tokenizer (vocab.json + merges.txt + added tokens), offline.

    Named directly, not through AutoTokenizer: that reads the checkpoint's config.json, whose
    auto_map names remote code, and asks on stdin whether to run it.
    """
    with _TRANSFORMERS_IMPORT:  # transformers' lazy attributes fail when two threads import one at once
        from transformers import Qwen2Tokenizer  # slow import, only needed here

    return Qwen2Tokenizer.from_pretrained(str(path), local_files_only=True)


def _answer_pieces(answer: str, tokenizer) -> list[str | int]:
    """An earlier answer as the model wrote it: its grounding markup as the special tokens it was
    generated as, everything else as plain text."""
    pieces: list[str | int] = []
    for part in re.split(f"({'|'.join(map(re.escape, GROUNDING_TOKENS))})", answer):
        if part in GROUNDING_TOKENS:
            pieces.append(tokenizer.convert_tokens_to_ids(part))
        elif part:
            pieces.append(part)
    return pieces


def image_label(k: int) -> str:
    """What introduces the k-th image or frame of a conversation that holds more than one image."""
    return f"<image {k}>"


VIDEO_INTRO = "This is a video:\n"  # what introduces a video's frame lines


def frame_label(i: int, seconds: float) -> str:
    """What introduces the i-th frame (from 1) of a video, sampled at `seconds`."""
    return f"Frame {i} sampled at {seconds:.2f} seconds: "


def visual_run(ids: PromptTokens, tiles: int, tokens_per_tile: int) -> list[int]:
    """The token ids one image or frame of `tiles` tiles takes in the prompt: <img>, its context tokens, </img>."""
    return [ids.img_start] + [ids.img_context] * (tokens_per_tile * tiles) + [ids.img_end]


def build_prompt(turns: Sequence[Turn], system: str, tokenizer, tokens_per_tile: int) -> Prompt:
    """Token ids of the conversation in the layout of Eagle2's chat() (ChatML).

    Each image is introduced by "<image {k}>" (k counts images and frames over the whole
    conversation) or by nothing when the conversation holds a single image; a video by
    "This is a video:" and one "Frame {i} sampled at {t:.2f} seconds: " line per frame. Each
    visual's own tiles fill its <img>...</img> run. Structural special tokens are inserted as
    ids and all text is tokenized with special tokens split off, so text a user types can
    never become a placeholder or a special token; for ordinary text the ids equal those of
    tokenizing the whole official prompt string in one call.
    """
    ids = PromptTokens.from_tokenizer(tokenizer)
    single_image = sum(len(t.images) for t in turns) == 1 and not any(t.frames for t in turns)
    pieces: list[str | int | Visual] = [ids.im_start, f"system\n{system}", ids.im_end, "\n"]
    k = 0
    for turn in turns:
        pieces += [ids.im_start, "user\n"]
        for image in turn.images:
            k += 1
            pieces += [image, "\n"] if single_image else [image_label(k), image, "\n"]
        if turn.frames:
            pieces.append(VIDEO_INTRO)
            for i, (frame, t) in enumerate(zip(turn.frames, turn.timestamps, strict=True), 1):
                k += 1
                pieces += [frame_label(i, t), frame, "\n"]
        pieces += [turn.user, ids.im_end, "\n", ids.im_start, "assistant\n"]
        if turn.answer:  # an empty answer renders like a missing one, as in the official template
            pieces += [*_answer_pieces(turn.answer, tokenizer), ids.im_end, "\n"]

    prompt = Prompt(input_ids=[], visuals=[], num_tiles=[])
    for is_text, run in groupby(pieces, key=lambda piece: isinstance(piece, str)):
        if is_text:
            text = "".join(run)
            prompt.input_ids += tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids
            continue
        for piece in run:
            if isinstance(piece, Visual):
                tiles = piece.pixel_values.shape[0]
                prompt.input_ids += visual_run(ids, tiles, tokens_per_tile)
                prompt.visuals.append(piece)
                prompt.num_tiles.append(tiles)
            else:
                prompt.input_ids.append(piece)
    return prompt
