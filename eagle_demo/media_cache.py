"""Images and videos tiled for the vision tower, kept by their content: a follow-up turn, or a second
question about the same file, reads no file again. Host memory only; the image features the vision
tower makes of them live beside the model (generation.ModelRunner).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from . import media, preprocessing
from .config import Limits

# What the cache of tiled images and video frames (uint8) may hold: 16 images of 13 tiles.
PIXEL_CACHE_BYTES = 128 << 20
DIGESTS_KEPT = 1024


class LRU:
    """A small thread-safe least-recently-used map: requests prepare media while another decodes.

    capacity is counted in `weigh(value)` units: entries by default, bytes for the tensor caches
    (a count alone would let a few big videos fill the memory). The newest entry always stays.
    """

    def __init__(self, capacity: int, weigh: Callable[[Any], int] = lambda value: 1):
        self.capacity, self.weigh = capacity, weigh
        self.used = 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> list:
        with self._lock:
            return list(self._items.values())

    def get(self, key, default=None):
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key, value) -> None:
        with self._lock:
            if key in self._items:
                self.used -= self.weigh(self._items.pop(key))
            self._items[key] = value
            self.used += self.weigh(value)
            while self.used > self.capacity and len(self._items) > 1:
                self.used -= self.weigh(self._items.popitem(last=False)[1])

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.used = 0


def visuals_of(entry: preprocessing.Visual | preprocessing.TiledVideo) -> list[preprocessing.Visual]:
    """The tiled visuals of a cache entry: an image's one, a video's frames."""
    return entry.frames if isinstance(entry, preprocessing.TiledVideo) else [entry]


def pixel_bytes(entry: preprocessing.Visual | preprocessing.TiledVideo) -> int:
    return sum(v.pixel_values.nbytes for v in visuals_of(entry))


class TiledMedia:
    """Tiles images and samples videos for one checkpoint's vision tower (its tile size and
    thumbnail rule), remembering each by file content, tiling and frame count."""

    def __init__(self, limits: Limits, capacity: int = PIXEL_CACHE_BYTES):
        self.limits = limits
        self.pixels = LRU(capacity, pixel_bytes)  # visual key -> Visual or TiledVideo
        self._digests = LRU(DIGESTS_KEPT)  # (path, size, mtime) -> content digest

    def digest(self, path: str) -> str:
        stat = os.stat(path)
        memo_key = (path, stat.st_size, stat.st_mtime_ns)
        digest = self._digests.get(memo_key)
        if digest is None:
            digest = media.file_digest(path)
            self._digests.put(memo_key, digest)
        return digest

    def image(self, path: str, size: tuple[int, int], max_tiles: int, tile_size: int,
              use_thumbnail: bool) -> preprocessing.Visual:
        """The image at `path` (of `size`, as media.image_size reads it) in at most `max_tiles` tiles."""
        key = f"{self.digest(path)}:tiles{max_tiles}"
        visual = self.pixels.get(key)
        if visual is None:
            cols, rows = preprocessing.choose_grid(*size, 1, max_tiles, tile_size)
            # a big JPEG may decode at reduced scale, as long as it stays larger than the tiles
            img = media.open_image(path, self.limits, min_size=(cols * tile_size, rows * tile_size))
            pixels = preprocessing.tile_pixels(img, max_tiles, tile_size, use_thumbnail, source_size=size)
            visual = preprocessing.Visual(pixel_values=pixels, key=key)
            self.pixels.put(key, visual)
        return visual

    def video(self, path: str, num_frames: int, tile_size: int) -> preprocessing.TiledVideo:
        """Sampled frames, one tile each (as upstream: no tiling, no thumbnail), and their times."""
        num_frames = min(num_frames, self.limits.max_video_frames)
        key = f"{self.digest(path)}:frames{num_frames}"
        video = self.pixels.get(key)
        if video is None:
            clip = media.sample_video(path, num_frames, self.limits, frame_size=(tile_size, tile_size))
            frames = [preprocessing.Visual(preprocessing.tile_pixels(f, 1, tile_size, False), f"{key}:{i}")
                      for i, f in enumerate(clip.frames)]
            video = preprocessing.TiledVideo(frames, clip.timestamps)
            self.pixels.put(key, video)
        return video

    def clear(self) -> None:
        self.pixels.clear()
