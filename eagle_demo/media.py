"""Opening user images and videos safely, and sampling video frames.

Every problem a user's file can cause becomes a `MediaError` whose message is one sentence
meant for that user. Limits come from `eagle_demo.config.LIMITS`.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import ExifTags, Image, ImageOps

from eagle_demo.config import LIMITS, Limits
from eagle_demo.errors import UserError

# Formats a browser shows; the rest of Pillow's plugins (EPS runs Ghostscript, ...) stay off.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")
IMAGE_KINDS = "a JPEG, PNG, GIF, WebP, BMP, TIFF or AVIF image"
# Demuxers for ordinary video files; playlists (hls, concat) could make FFmpeg read other files.
VIDEO_FORMATS = {"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", "mpegts", "mpeg", "flv", "ogg", "asf", "gif"}
# Sampled frames further apart than x264's default keyframe interval are reached by seeking;
# closer ones by decoding straight through, which then costs no more.
SEEK_GAP_FRAMES = 250


class MediaError(UserError):
    """A user's file cannot be used; str(error) is one sentence for that user."""


def file_digest(path: str | Path) -> str:
    """SHA-1 of the file's bytes (a cache key)."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_file(path: Path, limits: Limits) -> None:
    try:
        size = path.stat().st_size
    except OSError:
        raise MediaError(f"{path.name} could not be found or read.") from None
    if size == 0:
        raise MediaError(f"{path.name} is empty.")
    if size > limits.max_upload_mb * 1024 * 1024:
        raise MediaError(f"{path.name} is {size / 2**20:.0f} MB; the limit is {limits.max_upload_mb} MB.", 413)


# ---------------------------------------------------------------------------------------------
# Images


def _open_lazy(path: Path, limits: Limits) -> Image.Image:
    """Opens the header only, after checking the file, and checks the size before any decoding."""
    _check_file(path, limits)
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own pixel limit; ours (checked below) is the one that counts.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path, formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:
        raise MediaError(
            f"{path.name} is over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels; "
            f"the limit is {limits.max_image_pixels / 1e6:.0f}.", 413
        ) from None
    except Exception:  # Pillow raises many types for foreign or damaged headers
        raise MediaError(f"{path.name} is not an image this app can open; send {IMAGE_KINDS}.") from None
    width, height = img.size
    if max(width, height) > limits.max_image_side:
        img.close()
        raise MediaError(f"{path.name} is {width}x{height} pixels; the longest side may be {limits.max_image_side}.",
                         413)
    if width * height > limits.max_image_pixels:
        img.close()
        raise MediaError(
            f"{path.name} is {width * height / 1e6:.0f} megapixels; the limit is {limits.max_image_pixels / 1e6:.0f}.",
            413)
    return img


def _transposed(img: Image.Image) -> bool:
    """True when the EXIF orientation swaps width and height.

    Only EXIF found in the header counts: asking a PNG for a later eXIf chunk decodes it all.
    """
    return _orientation(img) in (5, 6, 7, 8)


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation, 1 (as stored) when there is none or the EXIF block cannot be read:
    malformed metadata is ignored, the pixels still open."""
    if "exif" not in img.info:
        return 1
    try:
        return int(img.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # Pillow raises many types for a foreign or damaged EXIF block
        return 1


def image_size(path: str | Path, limits: Limits = LIMITS) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), read from the header only."""
    path = Path(path)
    with _open_lazy(path, limits) as img:
        width, height = img.size
        return (height, width) if _transposed(img) else (width, height)


def open_image(path: str | Path, limits: Limits = LIMITS, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decodes an image file into a fully loaded RGB image, upright per its EXIF orientation.

    min_size (width, height), when given, lets a JPEG decode at 1/2, 1/4 or 1/8 scale as long as
    both sides stay at least that large: much faster for big photos, at the cost of libjpeg's
    downscaling filter (see tile_image in preprocessing.py for the error this causes).
    """
    path = Path(path)
    with _open_lazy(path, limits) as img:
        if min_size is not None:
            img.draft(None, min_size[::-1] if _transposed(img) else min_size)  # no-op unless JPEG
        try:
            img.load()  # the first frame of an animation
        except Exception:
            raise MediaError(f"{path.name} is truncated or corrupt.") from None
        if _orientation(img) != 1:
            ImageOps.exif_transpose(img, in_place=True)
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I"):  # 16- or 32-bit greyscale: keep the top 8 of 16 bits
        grey = np.asarray(img, dtype=np.float64).clip(0, 65535) / 257
        img = Image.fromarray(np.rint(grey).astype(np.uint8))
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        img = Image.new("RGBA", rgba.size, "white")
        img.alpha_composite(rgba)
    return img if img.mode == "RGB" else img.convert("RGB")


# ---------------------------------------------------------------------------------------------
# Videos


@dataclass
class VideoClip:
    frames: list[Image.Image]  # RGB, upright
    timestamps: list[float]  # seconds from the start, one per frame
    fps: float
    duration: float  # seconds


def sample_indices(total: int, n: int) -> list[int]:
    """The upstream worker's choice: the middle frame of each of n equal segments of [0, total-1]."""
    seg = (total - 1) / n
    starts = np.round(seg * np.arange(n)).astype(int)  # numpy rounds half to even, like upstream
    ends = np.round(seg * np.arange(1, n + 1)).astype(int)
    return ((starts + ends) // 2).tolist()


def sample_video(path: str | Path, num_frames: int, limits: Limits = LIMITS,
                 frame_size: tuple[int, int] | None = None) -> VideoClip:
    """Decodes num_frames (at most limits.max_video_frames) evenly spaced frames of a video.

    Frames are chosen over the real frame count (counted by demuxing when the header lacks it);
    a clip with barely more frames than asked repeats some, exactly like upstream.
    frame_size: resize each frame (bicubic) as soon as it is decoded, so a long 4K clip never
    holds more than small frames; one-tile preprocessing resizes to exactly this size anyway.
    """
    if num_frames < 1:
        raise ValueError("num_frames must be at least 1")
    path = Path(path)
    _check_file(path, limits)
    n = min(num_frames, limits.max_video_frames)
    with _open_video(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        width, height = stream.codec_context.width, stream.codec_context.height
        if not rate or not width or not height:
            raise MediaError(f"{path.name} is not a video PyAV can read.")
        if width * height > limits.max_video_pixels:
            raise MediaError(
                f"{path.name} is {width}x{height} ({width * height / 1e6:.1f} megapixels per frame); "
                f"the limit is {limits.max_video_pixels / 1e6:.1f}.", 413)
        duration = _header_duration(container, stream)
        _check_duration(duration, path, limits)
        # counting stops once the clip is known to be too long
        most_frames = int(limits.max_video_seconds * rate) + 1
        total = stream.frames or _count_packets(container, stream, most_frames)
        # a header may claim a short clip in front of hours of frames: the stream itself says how long it is
        duration = max(duration, total / rate, _stream_end(container, stream, most_frames))
        _check_duration(duration, path, limits)

    picked = _decode_with_decord(path, sample_indices(total, n), total, frame_size) if total else None
    if picked is None and total / n > SEEK_GAP_FRAMES:
        picked = _decode_seeking(path, sample_indices(total, n), rate, frame_size)
    elif picked is None and total:
        picked = _decode_straight(path, sample_indices(total, n), rate, frame_size)
        if picked is None:  # the file holds fewer frames than its header says: use those
            total = _count_decodable(path)
            picked = total and _decode_straight(path, sample_indices(total, n), rate, frame_size)
    if not picked:
        raise MediaError(f"{path.name} is truncated or corrupt: no frame could be decoded.")
    return VideoClip(
        frames=[image for image, _ in picked],
        timestamps=[t for _, t in picked],
        fps=float(rate),
        duration=float(duration),
    )


def _open_video(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path), options={"protocol_whitelist": "file"})
    except (av.FFmpegError, UnicodeDecodeError):
        raise MediaError(f"{path.name} is not a video PyAV can read.") from None
    if container.format.name not in VIDEO_FORMATS:
        container.close()
        raise MediaError(f"{path.name} is not a video file ({container.format.long_name}).")
    if not container.streams.video:
        container.close()
        raise MediaError(f"{path.name} has no readable video stream.")
    container.streams.video[0].thread_type = "AUTO"
    return container


def _header_duration(container, stream) -> float:
    if stream.duration:
        return float(stream.duration * stream.time_base)
    return (container.duration or 0) / av.time_base


def _check_duration(seconds: float, path: Path, limits: Limits) -> None:
    if seconds > limits.max_video_seconds:
        raise MediaError(f"{path.name} lasts {_hms(seconds)} (h:mm:ss); the limit is {_hms(limits.max_video_seconds)}.",
                         413)


def _hms(seconds: float) -> str:
    """h:mm:ss with as many hours as it takes (timedelta would write "2 days, 3:04:05")."""
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _stream_end(container, stream, limit: int) -> float:
    """Seconds from the stream's start to its last packet, read after a seek to its end (so only
    the last keyframe's group is demuxed; at most `limit` packets where the file has no index)."""
    start = stream.start_time or 0
    last = None
    try:
        container.seek(2**62, backward=True, any_frame=False, stream=stream)
        for count, packet in enumerate(container.demux(stream)):
            if packet.pts is not None:
                last = packet.pts if last is None else max(last, packet.pts)
            if count >= limit:
                break
    except av.FFmpegError:
        pass  # what could be read
    return float((last - start) * stream.time_base) if last is not None else 0.0


def _count_packets(container, stream, limit: int) -> int:
    """Frame count (up to limit) without decoding: one packet per frame in VIDEO_FORMATS."""
    total = 0
    try:
        for packet in container.demux(stream):
            total += packet.size > 0
            if total >= limit:
                break
    except av.FFmpegError:
        pass  # count what is readable
    return total


def _count_decodable(path: Path) -> int:
    total = 0
    with _open_video(path) as container:
        try:
            for _ in container.decode(video=0):
                total += 1
        except av.FFmpegError:
            pass
    return total


def _clip_frame(frame: av.VideoFrame, index: int, rate, start: int,
                frame_size: tuple[int, int] | None = None) -> tuple[Image.Image, float]:
    image = _upright(frame.to_image(), frame.rotation, frame_size)
    if frame.pts is None:
        return image, float(index / rate)
    return image, max(0.0, float((frame.pts - start) * frame.time_base))


def _upright(image: Image.Image, rotation: int, frame_size: tuple[int, int] | None) -> Image.Image:
    """Turned by the display matrix (degrees counter-clockwise, like PIL's rotate), then resized."""
    if rotation:
        image = image.rotate(rotation, expand=True)
    return image.resize(frame_size, Image.Resampling.BICUBIC) if frame_size else image


def _decode_straight(path: Path, indices: list[int], rate,
                     frame_size: tuple[int, int] | None = None) -> list[tuple[Image.Image, float]] | None:
    """Decodes from the start, keeping only the wanted frames; None if the stream ends first."""
    wanted = set(indices)
    kept = {}
    with _open_video(path) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    kept[i] = _clip_frame(frame, i, rate, start, frame_size)
                    if len(kept) == len(wanted):
                        return [kept[i] for i in indices]
        except av.FFmpegError:
            pass
    return None


def _decode_with_decord(path: Path, indices: list[int], total: int,
                        frame_size: tuple[int, int] | None = None) -> list[tuple[Image.Image, float]] | None:
    """The frames through decord's random access, when decord is installed: it reads the sampled
    frames 1.4-5x faster than PyAV (benchmarks/bench_video.py). It is not a requirement because its
    wheels bundle an FFmpeg from 2021, so it only ever sees files PyAV has already checked.
    None (use PyAV) when it is missing, the video is rotated, decord disagrees on the frame count,
    or it fails to decode."""
    try:
        import decord
    except ImportError:
        return None
    if _rotation(path):  # decord's handling of the display matrix is unreliable (wrong sizes, errors)
        return None
    picked = []
    try:
        reader = decord.VideoReader(str(path), num_threads=0)
        if len(reader) != total:
            return None
        for start in range(0, len(indices), 8):  # a few full-size frames in memory at a time
            chunk = indices[start:start + 8]
            frames = reader.get_batch(chunk).asnumpy()
            times = reader.get_frame_timestamp(chunk)[:, 0]
            picked += [(_upright(Image.fromarray(f), 0, frame_size), float(t)) for f, t in zip(frames, times)]
    except Exception:  # decord raises its own DECORDError for anything it cannot read
        return None
    return picked


def _rotation(path: Path) -> int:
    """The display rotation of the first frame, in degrees counter-clockwise."""
    with _open_video(path) as container:
        try:
            return next(container.decode(video=0)).rotation or 0
        except (av.FFmpegError, StopIteration):
            return 0


def _decode_seeking(path: Path, indices: list[int], rate,
                    frame_size: tuple[int, int] | None = None) -> list[tuple[Image.Image, float]] | None:
    """For each index, seeks to the keyframe before its timestamp and decodes up to it."""
    picked = []
    with _open_video(path) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        for index in indices:
            target = start + round(index / rate / stream.time_base)
            container.seek(target, stream=stream)
            frame = None
            try:
                for frame in container.decode(stream):
                    if frame.pts is None or frame.pts >= target:
                        break
            except av.FFmpegError:
                pass
            if frame is None:
                return None
            picked.append(_clip_frame(frame, index, rate, start, frame_size))  # past the end: the last frame
    return picked
