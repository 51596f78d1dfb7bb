"""Draw the example media of the demo: every file in assets/ comes from this script.

    python assets/make_assets.py            # rewrites the files next to this script

Everything is drawn with PIL from seeded random numbers, so a rerun gives the same pictures
(the JPEG/MP4 bytes may differ across library versions). No third-party media.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

OUT = Path(__file__).resolve().parent


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


# --------------------------------------------------------------------------- chart
def chart(path: Path) -> None:
    """A bar chart of quarterly revenue with a line for the profit margin."""
    w, h = 800, 500
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((w // 2, 28), "Revenue and margin by quarter, 2024", fill="#222", font=font(24), anchor="mm")
    left, right, top, bottom = 80, w - 80, 70, h - 70
    revenue = [42, 55, 48, 71]  # million EUR
    margin = [12, 15, 11, 18]  # percent
    quarters = ["Q1", "Q2", "Q3", "Q4"]
    ymax = 80
    for v in range(0, ymax + 1, 20):  # grid and left axis
        y = bottom - (bottom - top) * v / ymax
        d.line((left, y, right, y), fill="#ddd")
        d.text((left - 10, y), f"{v}", fill="#444", font=font(16), anchor="rm")
    d.text((left - 10, top - 22), "M EUR", fill="#444", font=font(16), anchor="rm")
    d.text((right + 10, top - 22), "margin", fill="#b3401a", font=font(16), anchor="lm")
    for v in range(0, 21, 5):  # right axis for the margin
        y = bottom - (bottom - top) * v / 20
        d.text((right + 10, y), f"{v}%", fill="#b3401a", font=font(16), anchor="lm")
    slot = (right - left) / len(revenue)
    points = []
    for i, (r, m, q) in enumerate(zip(revenue, margin, quarters)):
        cx = left + slot * (i + 0.5)
        y = bottom - (bottom - top) * r / ymax
        d.rectangle((cx - slot * 0.3, y, cx + slot * 0.3, bottom), fill="#3b75af")
        d.text((cx, y + 8), f"{r}", fill="white", font=font(18), anchor="mt")
        d.text((cx, bottom + 10), q, fill="#222", font=font(18), anchor="mt")
        points.append((cx, bottom - (bottom - top) * m / 20))
    d.line(points, fill="#e0602c", width=4)
    for x, y in points:
        d.ellipse((x - 7, y - 7, x + 7, y + 7), fill="#e0602c", outline="white", width=2)
    d.line((left, bottom, right, bottom), fill="#222", width=2)
    d.rectangle((left + 10, h - 40, left + 28, h - 24), fill="#3b75af")
    d.text((left + 36, h - 32), "revenue (M EUR)", fill="#222", font=font(16), anchor="lm")
    d.line((left + 230, h - 32, left + 262, h - 32), fill="#e0602c", width=4)
    d.text((left + 270, h - 32), "profit margin (%)", fill="#222", font=font(16), anchor="lm")
    img.save(path, optimize=True)


# --------------------------------------------------------------------------- document
LETTER = [
    "Dear Ms. Alvarez,",
    "",
    "Thank you for your order of 14 March. We confirm the delivery of the",
    "items below to our warehouse in Rotterdam on 2 April, between 9:00 and",
    "12:00. Please sign the enclosed form and return it with the driver.",
    "",
]
TABLE = [("Item", "Qty", "Price"), ("Oak desk, 160 cm", "2", "EUR 780.00"),
         ("Office chair, grey", "6", "EUR 1,134.00"), ("Cable tray", "4", "EUR 96.00"),
         ("Total", "", "EUR 2,010.00")]
CLOSING = ["Payment is due within 30 days of delivery.", "", "Kind regards,", "", "J. de Vries",
           "Northwind Office Supply B.V."]


def document(path: Path, rng: random.Random) -> None:
    """A scanned-looking letter with a small table: off-white paper, slight tilt, noise, JPEG."""
    w, h = 850, 1100
    page = Image.new("L", (w, h), 250)
    d = ImageDraw.Draw(page)
    d.text((70, 70), "NORTHWIND OFFICE SUPPLY", fill=30, font=font(34))
    d.text((70, 115), "Havenstraat 12, 3011 Rotterdam  ·  invoice@northwind.example", fill=70, font=font(16))
    d.line((70, 145, w - 70, 145), fill=40, width=2)
    d.text((w - 70, 175), "Invoice no. 2024-0318", fill=30, font=font(18), anchor="ra")
    d.text((w - 70, 200), "Date: 18 March 2024", fill=30, font=font(18), anchor="ra")
    y = 260
    for line in LETTER:
        d.text((70, y), line, fill=25, font=font(19))
        y += 30
    cols = [70, 470, 560, w - 70]
    for r, row in enumerate(TABLE):
        bold = r in (0, len(TABLE) - 1)
        d.line((70, y, w - 70, y), fill=60, width=2 if bold else 1)
        for c, cell in enumerate(row):
            x, anchor = (cols[c] + 8, "la") if c == 0 else (cols[c + 1] - 8, "ra")
            d.text((x, y + 9), cell, fill=15 if bold else 30, font=font(19), anchor=anchor)
        y += 40
    d.line((70, y, w - 70, y), fill=60, width=2)
    y += 40
    for line in CLOSING:
        d.text((70, y), line, fill=25, font=font(19))
        y += 30
    d.ellipse((520, y - 150, 700, y - 40), outline=110, width=3)  # a faded stamp
    d.text((610, y - 95), "PAID", fill=110, font=font(34), anchor="mm")
    # scanner look: tilt, blur, uneven light and grain
    page = page.rotate(0.8, resample=Image.BICUBIC, expand=False, fillcolor=235)
    page = page.filter(ImageFilter.GaussianBlur(0.6))
    shade = Image.linear_gradient("L").resize((w, h)).point(lambda v: 255 - v // 14)
    page = Image.composite(page, Image.new("L", (w, h), 0), shade)
    noise = Image.effect_noise((w, h), 18).point(lambda v: v - 128 + 128)
    page = Image.blend(page, noise, 0.06)
    tint = Image.merge("RGB", (page, page.point(lambda v: v * 0.985), page.point(lambda v: v * 0.94)))
    tint.save(path, quality=70, optimize=True)


# --------------------------------------------------------------------------- scenes
def scene(w: int = 800, h: int = 560, *, evening: bool = False, tree: bool = True,
          house_colour: str = "#c8553d", car: str | None = None, seed: int = 0) -> Image.Image:
    """Sky gradient, sun, two hills, a house and (optionally) a tree and a car."""
    rng = random.Random(seed)
    top, low = ((20, 40, 110), (250, 150, 90)) if evening else ((70, 140, 230), (190, 225, 250))
    sky = Image.new("RGB", (1, h))
    for y in range(h):
        t = y / (h - 1)
        sky.putpixel((0, y), tuple(round(a + (b - a) * t) for a, b in zip(top, low)))
    img = sky.resize((w, h))
    d = ImageDraw.Draw(img)
    sx, sy, sr = (w * 0.2, h * 0.55, 45) if evening else (w * 0.8, h * 0.18, 40)
    d.ellipse((sx - sr * 1.6, sy - sr * 1.6, sx + sr * 1.6, sy + sr * 1.6), fill=low if evening else (215, 235, 250))
    d.ellipse((sx - sr, sy - sr, sx + sr, sy + sr), fill=(255, 120, 40) if evening else (255, 215, 60))
    for cx in (w * 0.35, w * 0.62):  # clouds
        for dx, dy, r in ((0, 0, 28), (30, -12, 34), (62, 0, 26)):
            x, y = cx + dx, h * 0.12 + dy + rng.uniform(-4, 4)
            d.ellipse((x - r, y - r, x + r, y + r), fill=(240, 240, 245) if not evening else (120, 100, 140))
    far = (76, 140, 70) if not evening else (40, 70, 50)
    near = (96, 170, 80) if not evening else (50, 90, 55)
    d.polygon([(x, h * 0.62 - 60 * math.sin(math.pi * x / w)) for x in range(0, w + 1, 8)] + [(w, h), (0, h)],
              fill=far)
    d.polygon([(x, h * 0.75 - 40 * math.sin(math.pi * (x / w + 0.3) * 1.4)) for x in range(0, w + 1, 8)]
              + [(w, h), (0, h)], fill=near)
    hx, hy = w * 0.5, h * 0.78  # house: walls, roof, door, windows
    d.rectangle((hx - 90, hy - 110, hx + 90, hy), fill=house_colour, outline="#3a2a20", width=2)
    d.polygon([(hx - 110, hy - 110), (hx, hy - 190), (hx + 110, hy - 110)], fill="#6b3b2a", outline="#3a2a20")
    d.rectangle((hx - 20, hy - 60, hx + 20, hy), fill="#5a3a22")
    lit = (255, 220, 120) if evening else (200, 230, 250)
    for wx in (hx - 70, hx + 35):
        d.rectangle((wx, hy - 90, wx + 35, hy - 55), fill=lit, outline="white", width=3)
    if tree:
        tx, ty = w * 0.18, h * 0.8
        d.rectangle((tx - 10, ty - 90, tx + 10, ty), fill="#6d4c2f")
        for dx, dy, r in ((0, -130, 55), (-35, -100, 40), (35, -100, 40)):
            d.ellipse((tx + dx - r, ty + dy - r, tx + dx + r, ty + dy + r), fill=(40, 120, 50) if not evening
                      else (30, 70, 40))
    if car:
        cx, cy = w * 0.78, h * 0.9
        d.rounded_rectangle((cx - 70, cy - 35, cx + 70, cy), radius=10, fill=car)
        d.polygon([(cx - 40, cy - 35), (cx - 25, cy - 60), (cx + 30, cy - 60), (cx + 45, cy - 35)], fill=car)
        d.polygon([(cx - 30, cy - 37), (cx - 20, cy - 55), (cx + 25, cy - 55), (cx + 35, cy - 37)], fill="#cde")
        for wx in (cx - 40, cx + 40):
            d.ellipse((wx - 16, cy - 16, wx + 16, cy + 16), fill="#222")
    return img


# --------------------------------------------------------------------------- video
def clip(path: Path, seconds: float = 3.0, fps: int = 8) -> None:
    """A red ball rolling left to right and bouncing over a floor, with a frame clock."""
    import av

    w, h = 320, 240
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "30", "preset": "veryslow"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        n = round(seconds * fps)
        for i in range(n):
            t = i / fps
            img = Image.new("RGB", (w, h), (225, 238, 250))
            d = ImageDraw.Draw(img)
            d.rectangle((0, 190, w, h), fill=(120, 170, 90))
            x = 30 + (w - 60) * i / (n - 1)
            y = 170 - 110 * abs(math.sin(math.pi * 2 * t / seconds))
            d.ellipse((x - 20, y - 20, x + 20, y + 20), fill=(220, 40, 40), outline=(120, 10, 10), width=2)
            d.text((8, 8), f"t = {t:.2f} s", fill=(30, 30, 30), font=font(16))
            frame = av.VideoFrame.from_image(img)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def main(out: Path = OUT) -> None:
    rng = random.Random(0)
    out.mkdir(parents=True, exist_ok=True)
    chart(out / "chart.png")
    document(out / "document.jpg", rng)
    scene(seed=1).save(out / "scene.jpg", quality=85, optimize=True)
    scene(640, 448, car="#2f6db5", seed=2).save(out / "compare_a.jpg", quality=85, optimize=True)
    scene(640, 448, evening=True, tree=False, house_colour="#e8c547", car="#c0392b", seed=2).save(
        out / "compare_b.jpg", quality=85, optimize=True)
    clip(out / "ball.mp4")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
