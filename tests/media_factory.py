"""Test media made on the spot: images in every mode, small videos, broken files.

Shared by the media, preprocessing and app tests (and the preprocessing benchmark).
"""

from __future__ import annotations

import io
import struct
import zipfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import ExifTags, Image, ImageDraw, ImageFilter


def make_image(
    path: str | Path, size: tuple[int, int] = (64, 48), mode: str = "RGB", transparent: bool = False, **save_args
) -> Path:
    """A gradient with a red square top-left, in `mode`, saved in the format of path's suffix.

    transparent: the bottom-right quarter is fully transparent (alpha modes and "P").
    """
    path = Path(path)
    width, height = size
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack(np.broadcast_arrays(x, y, (x + y) / 2), axis=-1).astype(np.uint8)
    rgb[: height // 4, : width // 4] = (255, 0, 0)
    img = Image.fromarray(rgb)
    hole = (width // 2, height // 2, width, height)
    if mode in ("I;16", "I"):
        img = Image.fromarray(np.asarray(img.convert("L"), dtype=np.uint16) * 257)
        img = img if mode == "I;16" else img.convert("I")
    elif mode == "P" and transparent:
        img = img.quantize(255)
        img.putpalette(img.getpalette() + [0, 0, 0])  # index 255: the transparent one
        img.paste(255, hole)
        save_args["transparency"] = 255
    elif mode != "RGB":
        img = img.convert(mode)
        if transparent:
            alpha = img.getchannel("A")
            alpha.paste(0, hole)
            img.putalpha(alpha)
    img.save(path, **save_args)
    return path


def make_animated_gif(path: str | Path, colors=((255, 0, 0), (0, 0, 255)), size=(32, 32)) -> Path:
    frames = [Image.new("RGB", size, color) for color in colors]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return Path(path)


def make_photo(path: str | Path, size: tuple[int, int] = (4000, 3000), quality: int = 90) -> Path:
    """A photo-like JPEG: smooth light, sharp-edged objects seen through a slightly soft lens,
    then sensor noise."""
    rng = np.random.default_rng(0)
    width, height = size
    y, x = np.mgrid[0:height:8, 0:width:8].astype(np.float32) / max(size)
    light = np.stack(
        [128 + 90 * np.sin(9 * x) * np.cos(7 * y), 128 + 90 * np.sin(6 * (x + y)), 128 + 70 * np.cos(12 * x - 5 * y)],
        axis=-1,
    )
    img = Image.fromarray(light.astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _ in range(150):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(width // 100, width // 10, size=2)
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x0 + w, y0 + h], fill=color)
    pixels = np.asarray(img.filter(ImageFilter.GaussianBlur(1)), dtype=np.float32)
    pixels += 4 * rng.standard_normal(pixels.shape, dtype=np.float32)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=quality)
    return Path(path)


def frame_color(index: int) -> tuple[int, int, int]:
    """The flat colour of frame `index` in make_video; 16 levels per channel survive the codec."""
    return (index % 16 * 16 + 8, index // 16 % 16 * 16 + 8, index // 256 % 16 * 16 + 8)


def frame_index(img: Image.Image) -> int:
    """Reads back the frame index make_video painted into a decoded, upright frame."""
    width, height = img.size
    flat = img.convert("RGB").crop((width // 2, height // 2, width, height))  # away from the square
    r, g, b = (int(c) // 16 for c in np.asarray(flat, dtype=np.float32).mean(axis=(0, 1)))
    return r + 16 * g + 256 * b


def make_video(
    path: str | Path,
    frames: int = 20,
    size: tuple[int, int] = (64, 48),
    fps: int | Fraction = 10,
    rotation: int = 0,
    keyframe_interval: int = 250,
    faststart: bool = False,
) -> Path:
    """An H.264 MP4 whose frame i is flat frame_color(i) with a white square top-left.

    faststart: the index goes before the frames (so a truncated copy still opens).
    """
    path = Path(path)
    width, height = size
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("libx264", rate=fps, options={"g": str(keyframe_interval)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(frames):
            pixels = np.empty((height, width, 3), np.uint8)
            pixels[:] = frame_color(i)
            pixels[: height // 4, : width // 4] = 255
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def make_frameless_video(path: str | Path) -> Path:
    """An MP4 with a header but no frames (its video track is dropped by the muxer)."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height = 64, 48
        container.start_encoding()
    return Path(path)


def make_corrupt_file(path: str | Path, data: bytes = b"this is a text file, not media\n" * 20) -> Path:
    Path(path).write_bytes(data)
    return Path(path)


def make_truncated_copy(src: str | Path, dst: str | Path, keep: float = 0.5) -> Path:
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return Path(dst)


# ---------------------------------------------------------------------------------------------
# Hostile files: what a public demo gets sent


def make_bomb_png(path: str | Path, size: tuple[int, int] = (12000, 9000)) -> Path:
    """A 1-bit PNG of size (108 MP by default) that compresses to a few kilobytes."""
    Image.new("1", size).save(path, optimize=True)
    return Path(path)


def make_polyglot(path: str | Path) -> Path:
    """A valid PNG with a ZIP archive and an HTML page with a script appended."""
    path = make_image(path, (64, 48))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("payload.html", "<script>alert(document.cookie)</script>")
    with open(path, "ab") as f:
        f.write(archive.getvalue() + b"<html><script>alert(document.cookie)</script></html>")
    return path


def make_gif_js_polyglot(path: str | Path) -> Path:
    """A file that starts like a GIF and is also a script (`GIF89a/*…*/=1;` is an assignment)."""
    Path(path).write_bytes(b"GIF89a/*\x01\x00\x01\x00\x00\xff\x00,*/=1;alert(document.cookie);//\x00;")
    return Path(path)


def make_exif_rotated_photo(path: str | Path, size: tuple[int, int] = (64, 48)) -> Path:
    """A JPEG stored landscape whose EXIF orientation (6) says to show it rotated to portrait."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    return make_image(path, size, exif=exif, quality=95)


def make_long_gif(path: str | Path, frames: int = 1000, size: tuple[int, int] = (64, 64)) -> Path:
    colors = [(i * 37 % 256, i * 91 % 256, i * 53 % 256) for i in range(frames)]
    return make_animated_gif(path, colors, size)


def _rewrite_boxes(data: bytes, fix, containers=(b"moov", b"trak", b"mdia", b"minf", b"stbl")) -> bytes:
    """An MP4's boxes with each leaf box's body passed through fix(kind, body); sizes recomputed."""
    out, i = [], 0
    while i < len(data):
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        body = data[i + 8 : i + size]
        body = _rewrite_boxes(body, fix) if kind in containers else fix(kind, body)
        out.append(struct.pack(">I4s", 8 + len(body), kind) + body)
        i += size
    return b"".join(out)


def make_mp4_with_duration(path: str | Path, src: str | Path, duration: int) -> Path:
    """A copy of the MP4 src whose movie and media headers (mvhd, mdhd) claim `duration` ticks;
    both are rewritten as version 1 boxes, the kind with 64-bit durations. src must hold its index
    after the frames (make_video's default), so that no frame moves."""

    def fix(kind: bytes, body: bytes) -> bytes:
        if kind not in (b"mvhd", b"mdhd"):
            return body
        # version 0: version and flags, created, modified, timescale, duration: 32 bits each
        created, modified, scale, _ = struct.unpack(">IIII", body[4:20])
        return b"\x01" + body[1:4] + struct.pack(">QQIQ", created, modified, scale, duration) + body[20:]

    Path(path).write_bytes(_rewrite_boxes(Path(src).read_bytes(), fix))
    return Path(path)


def understate_mp4_duration(path: str | Path, factor: int = 10) -> Path:
    """Rewrite an MP4's header durations (mvhd, tkhd, mdhd; version 0 boxes) as 1/factor of the
    truth, as a hostile file would: its frames and their timestamps stay as they were."""
    path = Path(path)
    data = bytearray(path.read_bytes())
    for box, offset in ((b"mvhd", 20), (b"tkhd", 24), (b"mdhd", 20)):  # duration's offset after the box name
        at = data.find(box)
        assert at != -1 and data[at + 4] == 0, f"no version-0 {box!r} box"
        (duration,) = struct.unpack(">I", data[at + offset:at + offset + 4])
        data[at + offset:at + offset + 4] = struct.pack(">I", max(1, duration // factor))
    path.write_bytes(bytes(data))
    return path
