"""`python -m eagle_demo eval run` end to end on a random `small` checkpoint (with the real Eagle2
tokenizer) and benchmark files the tests make: the presets' prompts built here from first principles,
the progress bar and summary, and a resume after Ctrl-C."""

from __future__ import annotations

import base64
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from eagle_demo.tiny import write_tiny_checkpoint
from tests.conftest import ROOT
from tests.eval_data import chartqa_rows, encoded, picture, write_tsv
from tests.support import REAL_TOKENIZER

TILE = 448  # pixels a side; SigLIP's 14-pixel patches make 32 x 32, pixel-shuffled 2 x 2 into 256 tokens
TOKENS_PER_TILE = (TILE // 14 // 2) ** 2
SYSTEM = "You are a helpful assistant."  # the chat() default Eagle2's evaluation ran with
SHORT = "\nAnswer the question using a single word or phrase."


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("eval") / "small", tokenizer_dir=REAL_TOKENIZER, size="small")


def eval_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eagle_demo", "eval", "run", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def records(path: Path) -> dict:
    return {r["index"]: r for r in map(json.loads, path.read_text().splitlines())}


# ------------------------------------------------------------------------------ first principles
def as_vlmevalkit_reads_it(b64: str, name: str) -> Image.Image:
    """VLMEvalKit writes a TSV image to `name` (a single one as `{index}.jpg`: a JPEG), the adapter
    opens that file in RGB."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(base64.b64decode(b64))).save(buffer, format="JPEG" if name.endswith(".jpg") else "PNG")
    return Image.open(buffer).convert("RGB")


def tiles(width: int, height: int, max_tiles: int) -> int:
    """Eagle2's tiling: of the grids of at most max_tiles tiles, the one with the best
    min(grid area / image area, 0.6) x (the smaller over the larger of the two aspect ratios), the
    fewest tiles among equals; plus a thumbnail when there is more than one tile."""
    def score(grid):
        cols, rows = grid
        area = min(cols * rows * TILE * TILE / (width * height), 0.6)
        return area * min(cols / rows / (width / height), (width / height) / (cols / rows))
    grids = [(c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if c * r <= max_tiles]
    best = max(map(score, grids))
    winners = sorted((c * r, (c, r)) for c, r in grids if score((c, r)) == best)
    assert len(winners) == 1 or winners[0][0] < winners[1][0], "an ambiguous case: pick another size"
    n = winners[0][0]
    return n + (n > 1)


def expected_prompt(question: str, image_tiles: list[int]) -> str:
    """The chat prompt: one image as `<image>\\n` + text, several as `<image k><image>\\n` each."""
    run = lambda n: "<img>" + "<IMG_CONTEXT>" * (TOKENS_PER_TILE * n) + "</img>\n"  # noqa: E731
    if len(image_tiles) == 1:
        images = run(image_tiles[0])
    else:
        images = "".join(f"<image {k}>" + run(n) for k, n in enumerate(image_tiles, 1))
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{images}{question}<|im_end|>\n"
            "<|im_start|>assistant\n")


def upscaled_tiles(image: Image.Image, max_tiles: int) -> int:
    return tiles(image.width * 2, image.height * 2, max_tiles)  # PIL's bilinear 2x keeps the aspect exactly


def assert_progress_and_summary(done: subprocess.CompletedProcess, name: str, items: int, out: Path) -> None:
    """A progress bar with its ETA on stderr; on stdout the summary table, then its JSON on the last line."""
    assert f"{name}: 100%" in done.stderr and f"{items}/{items} [" in done.stderr and "<00:00" in done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "| Benchmark | Model | Items | Score | Published |" and f"| {name} |" in lines[2]
    summary = json.loads(lines[-1])
    scores = [r["score"] for r in records(out / f"{name}.jsonl").values()]
    assert summary["items"] == items and summary["score"] == pytest.approx(100 * sum(scores) / items)
    assert summary["split"].keys() == {"test"}
    assert json.loads((out / f"{name}.summary.json").read_text()) == summary


@pytest.mark.parametrize("name,sizes,max_tiles", [
    # (350, 400) tiles 1 as it is, 5 enlarged; (300, 600) 3 and 9; DocVQA's 18: (300, 1150) 5 and 17
    ("ChartQA_TEST", [[(350, 400)], [(300, 600), (366, 400)]], 12),
    ("DocVQA_VAL", [[(300, 1150)]], 18),
])
def test_records_hold_the_prompt_of_the_preset(name, sizes, max_tiles, model, tmp_path):
    """Enlarged 2x, tiled up to the preset's tiles, the question with its suffix, in the chat layout;
    with a progress bar, then the summary."""
    from transformers import Qwen2Tokenizer

    rows = []
    for i, item_sizes in enumerate(sizes):
        images = [encoded(picture(w, h, seed=10 * i + k)) for k, (w, h) in enumerate(item_sizes)]
        row = {"index": i, "question": f"What is written in item {i}?", "answer": "['x']", "split": "test"}
        row["image"] = images[0] if len(images) == 1 else str(images)
        if len(images) > 1:
            row["image_path"] = str([f"{i}-{k}.png" for k in range(len(images))])
        rows.append(row)
    data = write_tsv(tmp_path / f"{name}.tsv", rows)
    done = eval_run("--benchmark", name, "--data", str(data), "--model", str(model), "--out", str(tmp_path),
                    "--max-new-tokens", "3")
    assert done.returncode == 0, done.stderr
    assert_progress_and_summary(done, name, len(rows), tmp_path)
    tokenizer = Qwen2Tokenizer.from_pretrained(str(REAL_TOKENIZER))
    got = records(tmp_path / f"{name}.jsonl")
    for row in rows:
        b64s = [row["image"]] if "image_path" not in row else eval(row["image"])
        names = [f"{row['index']}.jpg"] if "image_path" not in row else eval(row["image_path"])
        images = [as_vlmevalkit_reads_it(b, n) for b, n in zip(b64s, names)]
        expected_tiles = [upscaled_tiles(image, max_tiles) for image in images]
        assert expected_tiles != [tiles(*image.size, max_tiles) for image in images]  # the upscale shows
        question = row["question"] + SHORT
        record = got[row["index"]]
        assert record["question"] == question and record["tiles"] == expected_tiles
        assert record["prompt_token_ids"] == tokenizer(expected_prompt(question, expected_tiles)).input_ids
        assert record["split"] == "test" and 1 <= len(record["token_ids"]) <= 3


def test_ctrl_c_keeps_what_is_done_and_a_rerun_answers_the_rest(model, tmp_path):
    """Interrupted once the first record is written (each item has 5 tiles and 16 tokens to write: the
    other two take seconds, and the one in flight stops at its next token)."""
    sizes = [(350 + 8 * i, 400) for i in range(4)]
    data = write_tsv(tmp_path / "ChartQA_TEST.tsv", chartqa_rows(sizes))
    out = tmp_path / "results"
    command = [sys.executable, "-m", "eagle_demo", "eval", "run", "--benchmark", "ChartQA_TEST", "--data", str(data),
               "--model", str(model), "--out", str(out), "--max-new-tokens", "16", "--limit", "3"]
    # Ctrl-C as a terminal sends it: the child starts with SIGINT's default action, which a parent
    # started in the background (as a test runner may be) would otherwise pass on as ignored
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    results = out / "ChartQA_TEST.jsonl"
    deadline = time.monotonic() + 120
    while not (results.exists() and results.read_text().count("\n") >= 1) and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGINT)
    stdout, stderr = first.communicate(timeout=60)
    kept = records(results)
    assert 1 <= len(kept) < 3, "the run ended before it was interrupted"
    assert first.returncode == 130 and "Interrupted:" in stderr and "Traceback" not in stderr
    assert results.read_text().endswith("\n") and all(r["tiles"] == [5] for r in kept.values())
    second = eval_run(*command[5:])
    assert second.returncode == 0, second.stderr
    assert f"{len(kept)} of 3 items already answered" in second.stderr
    answered = records(results)
    assert len(answered) == 3 and len(results.read_text().splitlines()) == 3  # --limit 3 of 4
    assert all(answered[i] == record for i, record in kept.items())
    assert json.loads(second.stdout.splitlines()[-1])["items"] == 3


def test_bad_input_fails_with_one_clear_line(model, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    for args, message in [(["--data", str(tmp_path / "notes.txt")], "neither a VLMEvalKit .tsv file"),
                          (["--data", str(tmp_path), "--limit", "0"], "--limit must be a whole number from 1")]:
        done = eval_run("--benchmark", "ChartQA_TEST", "--model", str(model), *args)
        assert done.returncode == 1 and done.stderr.startswith("error: ") and message in done.stderr
        assert "Traceback" not in done.stderr
