"""`eval run`'s items per second on a made OCR-style set, against the engine alone on the same items.

    python benchmarks/bench_eval.py                         # small size, CPU, 4 items
    python benchmarks/bench_eval.py --size 1B --device cuda --items 32

The set: document-like pages of printed words (OCRBench's preset: up to 24 tiles, enlarged 2x), one
question each. Prints one JSON line: items/s of the whole `eval run` (reading the TSV, the upscale,
the lossless copies, the engine, the records) and of the engine answering the same prepared images
alone, and their ratio. Random weights: every answer runs to --new-tokens.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import checkpoint, default_device, emit  # noqa: E402
from eagle_demo.evaluation.backends import NativeBackend, prepare_images  # noqa: E402
from eagle_demo.evaluation.data import read_tsv  # noqa: E402
from eagle_demo.evaluation.presets import benchmark  # noqa: E402
from eagle_demo.evaluation.prompts import question_as_sent  # noqa: E402
from eagle_demo.evaluation.runner import run  # noqa: E402

WORDS = "invoice total amount date account balance payment receipt customer number order address".split()


def ocr_style_set(folder: Path, items: int) -> Path:
    """A VLMEvalKit TSV of `items` pages (640x800, ten lines of words), asking for one line's last word."""
    import base64
    import io

    import pandas as pd

    rows = []
    for i in range(items):
        page = Image.new("RGB", (640, 800), "white")
        draw = ImageDraw.Draw(page)
        lines = [" ".join(WORDS[(i + k + j) % len(WORDS)] for j in range(5)) for k in range(10)]
        for k, line in enumerate(lines):
            draw.text((40, 60 + 70 * k), line, fill="black")
        buffer = io.BytesIO()
        page.save(buffer, format="JPEG")
        rows.append({"index": i, "image": base64.b64encode(buffer.getvalue()).decode("ascii"),
                     "question": f"What is the last word on line {i % 10 + 1}?",
                     "answer": str([lines[i % 10].split()[-1]]), "category": "Doc-oriented VQA"})
    path = folder / "OCRBench.tsv"
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def eval_items_per_s(path: Path, device: str, items: int, new_tokens: int = 32) -> dict:
    """The figures of the module docstring for the checkpoint at `path`."""
    folder = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    preset = benchmark("OCRBench")
    data = read_tsv(ocr_style_set(folder, items))
    backend = NativeBackend(str(path), device=device, dtype="bfloat16" if device.startswith("cuda") else None)
    backend.load()
    backend.engine.stop_ids = set()  # random weights: the full length, the same for both
    settings = preset.settings(new_tokens)
    run(backend, preset, data[:1], folder / "warm-up.jsonl", max_new_tokens=new_tokens)  # compile, caches, threads

    backend.engine.clear_caches()  # the warm-up's image would be found there
    start = time.perf_counter()
    records, _ = run(backend, preset, data, folder / "OCRBench.jsonl", max_new_tokens=new_tokens)
    eval_s = time.perf_counter() - start

    prepared = [(question_as_sent(preset, item), prepare_images(item.images(), preset.upscaled, folder))
                for item in data]
    backend.engine.clear_caches()  # both start from the same cold caches
    start = time.perf_counter()
    for question, images in prepared:
        backend.answer(question, images, settings)
    engine_s = time.perf_counter() - start
    return {"items": len(records), "tiles": records[0]["tiles"], "eval_items_per_s": round(items / eval_s, 3),
            "engine_items_per_s": round(items / engine_s, 3), "eval_over_engine": round(engine_s / eval_s, 3)}


def eval_check(path: Path, args) -> dict:
    """benchmarks/gpu_check.py's check of `eval run` at its first size (the 1B): 32 items on a GPU."""
    return eval_items_per_s(path, args.device, items=32 if args.device.startswith("cuda") else 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", help="tiny, small, 1B, 2B, 9B (random weights)")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--items", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    emit(size=args.size, device=args.device, **eval_items_per_s(checkpoint(args.size), args.device, args.items,
                                                                args.new_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
