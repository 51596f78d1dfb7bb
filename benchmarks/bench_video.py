"""Sampling 8 frames of a video: PyAV (always available) against decord (used when installed).

    python benchmarks/bench_video.py      # decord rows only when `import decord` works
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit  # noqa: E402
from eagle_demo import media  # noqa: E402
from tests.media_factory import make_video  # noqa: E402

CLIPS = [(300, (1280, 720), 30), (1800, (640, 360), 60)]  # frames, size, keyframe interval (30 fps)


def timed(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    for frames, size, keyframes in CLIPS:
        path = make_video(folder / f"{frames}.mp4", frames=frames, size=size, fps=30, keyframe_interval=keyframes)
        indices = media.sample_indices(frames, 8)
        pyav = media._decode_seeking if frames / 8 > media.SEEK_GAP_FRAMES else media._decode_straight
        pyav_s = timed(partial(pyav, path, indices, 30))
        row = {"clip": f"{size[0]}x{size[1]}, {frames} frames", "pyav_s": round(pyav_s, 4)}
        if media._decode_with_decord(path, indices, frames) is not None:
            row["decord_s"] = round(timed(partial(media._decode_with_decord, path, indices, frames)), 4)
            row["speedup"] = round(row["pyav_s"] / row["decord_s"], 2)
        emit(**row)


if __name__ == "__main__":
    main()
