"""`eval run`: ask every item of a benchmark, one JSONL record each, resumable; then the summary.

A record: `index`, `question` (as sent), `prediction`, `answer`, `score` (the item's own, where it has
one), `tiles`, the benchmark's other columns, and from the native engine `prompt_token_ids` and
`token_ids`. A rerun skips the items already in the file; Ctrl-C keeps every finished record.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from .backends import ItemError, prepare_images
from .data import Item
from .presets import Benchmark
from .prompts import question_as_sent
from .scores import item_score


def read_records(path: Path, repair: bool = False) -> list[dict]:
    """The finished records of a results file; a last line cut short by a kill is dropped (and with
    `repair` cut off the file, so that new records start on a line of their own)."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if repair and len(complete) != len(raw):
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    return [json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip()]


def _record(benchmark: Benchmark, item: Item, question: str, answer, error: str | None, rules: str) -> dict:
    record = {"index": item.index, "question": question, "prediction": answer.text if answer else "",
              "answer": item.answer}
    record.update({key: value for key, value in item.fields.items() if key not in record})
    record["score"] = item_score(benchmark, record, rules)
    record["tiles"] = answer.tiles if answer else []
    if error is not None:
        record["error"] = error
    if answer is not None and answer.prompt_token_ids is not None:
        record["prompt_token_ids"], record["token_ids"] = answer.prompt_token_ids, answer.token_ids
    return record


def ask(backend, benchmark: Benchmark, item: Item, folder: Path, settings, cancel: threading.Event,
        rules: str) -> dict | None:
    """One item's record; None when it was cancelled before its answer was complete."""
    question = question_as_sent(benchmark, item)
    images = prepare_images(item.images(), benchmark.upscaled, folder)
    try:
        answer = backend.answer(question, images, settings, cancel)
        error = None
    except ItemError as e:
        answer, error = None, str(e)
    finally:
        for path in images:
            Path(path).unlink(missing_ok=True)
    if answer is not None and answer.finish_reason == "cancelled":
        return None
    return _record(benchmark, item, question, answer, error, rules)


def run(backend, benchmark: Benchmark, items: list[Item], out: Path, *, max_new_tokens: int | None = None,
        concurrency: int = 1, rules: str = "eagle2") -> tuple[list[dict], bool]:
    """Answer the items not yet in `out`; returns (the records of `items`, whether it finished).
    Ctrl-C stops it: the answers in progress are cancelled, the finished ones stay in the file."""
    from tqdm import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    wanted = {item.index for item in items}
    done = {record["index"]: record for record in read_records(out, repair=True) if record["index"] in wanted}
    todo = [item for item in items if item.index not in done]
    settings = benchmark.settings(max_new_tokens)
    if done:
        print(f"{len(done)} of {len(items)} items already answered in {out}; asking the other {len(todo)}.",
              file=sys.stderr)
    backend.load()
    cancel = threading.Event()
    finished = True
    with tempfile.TemporaryDirectory(prefix="eagle-eval-") as folder, open(out, "a", encoding="utf-8") as sink, \
            tqdm(total=len(items), initial=len(done), desc=benchmark.name, unit="item", file=sys.stderr,
                 dynamic_ncols=True) as bar, ThreadPoolExecutor(max(1, concurrency)) as pool:
        pending = iter(todo)
        running = {pool.submit(ask, backend, benchmark, item, Path(folder), settings, cancel, rules)
                   for item in _take(pending, max(1, concurrency))}
        try:
            while running:
                complete, running = wait(running, return_when=FIRST_COMPLETED)
                for future in complete:
                    record = future.result()
                    sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                    sink.flush()
                    done[record["index"]] = record
                    bar.update()
                running |= {pool.submit(ask, backend, benchmark, item, Path(folder), settings, cancel, rules)
                            for item in _take(pending, len(complete))}
        except KeyboardInterrupt:
            finished = False
            _stop(running, cancel)
        except BaseException:
            _stop(running, cancel)
            raise
    return [done[item.index] for item in items if item.index in done], finished


def _stop(running, cancel: threading.Event) -> None:
    """Cancel the answers in progress (the pool waits for them to end) and those not started."""
    cancel.set()
    for future in running:
        future.cancel()


def _take(items, n: int) -> list:
    return [item for _, item in zip(range(n), items)]
