"""CPU benchmark: a 12-megapixel JPEG into 12 tiles + thumbnail, open + tile, three ways.

  reference   open_image + tile_image_reference (the official PIL pipeline, tile by tile)
  fast_exact  open_image + tile_image           (bit-identical to the reference)
  fast        reduced-scale JPEG decode + tile_image (what issue #4 asks for)

Prints one JSON line per path (median over interleaved repeats) and a last line with the
fast path's speedup over the reference and its error against it, in normalised units
(pixel levels / 255 * 2).

    .venv/bin/python benchmarks/bench_preprocess.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from eagle_demo.media import image_size, open_image  # noqa: E402
from eagle_demo.preprocessing import choose_grid, tile_image, tile_image_reference  # noqa: E402
from tests.media_factory import make_photo  # noqa: E402

# Eagle2's config values (force_image_size, the upstream default tile limit, use_thumbnail).
TILE_SIZE, MAX_TILES, USE_THUMBNAIL = 448, 12, True


def reference(path: Path) -> torch.Tensor:
    return tile_image_reference(open_image(path), MAX_TILES, TILE_SIZE, USE_THUMBNAIL)


def fast_exact(path: Path) -> torch.Tensor:
    return tile_image(open_image(path), MAX_TILES, TILE_SIZE, USE_THUMBNAIL)


def fast(path: Path) -> torch.Tensor:
    size = image_size(path)
    cols, rows = choose_grid(*size, 1, MAX_TILES, TILE_SIZE)
    img = open_image(path, min_size=(cols * TILE_SIZE, rows * TILE_SIZE))
    return tile_image(img, MAX_TILES, TILE_SIZE, USE_THUMBNAIL, source_size=size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = make_photo(Path(tmp) / "photo.jpg", (4000, 3000), quality=90)
        paths = {"reference": reference, "fast_exact": fast_exact, "fast": fast}
        outputs = {name: run(path) for name, run in paths.items()}  # also warms up
        times: dict[str, list[float]] = {name: [] for name in paths}
        for i in range(args.repeats):
            names = list(paths)[i % 3 :] + list(paths)[: i % 3]  # rotate the order against drift
            for name in names:
                start = time.perf_counter()
                paths[name](path)
                times[name].append(time.perf_counter() - start)
        file_mb = path.stat().st_size / 2**20

    median = {name: statistics.median(ts) for name, ts in times.items()}
    for name, ts in times.items():
        print(
            json.dumps(
                {
                    "path": name,
                    "median_ms": round(median[name] * 1000, 1),
                    "min_ms": round(min(ts) * 1000, 1),
                    "repeats": args.repeats,
                    "image": "4000x3000 JPEG q90",
                    "file_mb": round(file_mb, 2),
                    "torch_threads": torch.get_num_threads(),
                }
            )
        )
    assert torch.equal(outputs["fast_exact"], outputs["reference"])
    error = (outputs["fast"] - outputs["reference"]).abs()
    print(
        json.dumps(
            {
                "speedup": round(median["reference"] / median["fast"], 2),
                "speedup_exact": round(median["reference"] / median["fast_exact"], 2),
                "max_abs_error": round(error.max().item(), 5),
                "mean_abs_error": round(error.mean().item(), 5),
                "p99_abs_error": round(torch.quantile(error.flatten()[::7], 0.99).item(), 5),
                "tiles": outputs["fast"].shape[0],
            }
        )
    )


if __name__ == "__main__":
    main()
