"""Grounding output: find `<ref>label</ref><box>[[x1,y1,x2,y2],…]</box>` in an answer and draw it.

Eagle2 (like InternVL) writes box corners on a 0–1000 grid over the image it is talking about,
whatever the image's real size. Pure functions: text in, boxes out; image + boxes in, new image out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

GRID = 1000  # box coordinates are given on a 0..GRID scale in both directions

_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_QUAD = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")
_GROUNDED = re.compile(r"(?:<ref>(.*?)</ref>\s*)?<box>(.*?)</box>", re.DOTALL)

# Colour-blind friendly palette (Okabe–Ito), one colour per label.
_COLOURS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#FFFFFF"]


@dataclass(frozen=True)
class Box:
    label: str  # "" when the box has no <ref> before it
    x1: float  # corners on the 0..GRID scale, x1 <= x2 and y1 <= y2
    y1: float
    x2: float
    y2: float


def _clamp(v: str) -> float:
    return min(max(float(v), 0.0), float(GRID))


def parse_boxes(text: str) -> list[Box]:
    """Every box in `text`, in order; each keeps the label of the <ref> right before its <box>."""
    boxes = []
    for match in _GROUNDED.finditer(text):
        label = " ".join((match.group(1) or "").split())
        for quad in _QUAD.finditer(match.group(2)):
            x1, y1, x2, y2 = (_clamp(v) for v in quad.groups())
            boxes.append(Box(label, min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))
    return boxes


def _ink(colour: str) -> str:
    """Black or white, whichever reads better on `colour`."""
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"


def draw_boxes(image: Image.Image, boxes: list[Box]) -> Image.Image:
    """A copy of `image` (RGB) with each box outlined and labelled; one colour per label."""
    out = image.convert("RGB")  # always a new image
    if not boxes:
        return out
    w, h = out.size
    line = max(2, round(min(w, h) / 200))
    font = ImageFont.load_default(size=max(12, round(min(w, h) / 30)))
    colours: dict[str, str] = {}
    draw = ImageDraw.Draw(out)
    for box in boxes:
        colour = colours.setdefault(box.label, _COLOURS[len(colours) % len(_COLOURS)])
        x1, y1 = box.x1 * (w - 1) / GRID, box.y1 * (h - 1) / GRID
        x2, y2 = box.x2 * (w - 1) / GRID, box.y2 * (h - 1) / GRID
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        if box.label:
            left, top, right, bottom = draw.textbbox((0, 0), box.label, font=font)
            tw, th = right - left + 2 * line, bottom - top + 2 * line
            tx = min(max(x1, 0), max(w - tw, 0))
            ty = y1 - th if y1 - th >= 0 else min(y1 + line, max(h - th, 0))  # above, else inside
            draw.rectangle((tx, ty, tx + tw, ty + th), fill=colour)
            draw.text((tx + line - left, ty + line - top), box.label, fill=_ink(colour), font=font)
    return out
