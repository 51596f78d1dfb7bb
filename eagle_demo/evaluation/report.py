"""The summary of a run or of a results file: markdown for people, JSON for scripts, beside the
published figure for that model and benchmark."""

from __future__ import annotations

import json
from pathlib import Path

from .presets import Benchmark, published
from .scores import ScoringError, summarise


def summary(benchmark: Benchmark, records: list[dict], model: str | None, rules: str = "eagle2") -> dict:
    """The scores (or, where they cannot be computed here, a note saying why), the published figure,
    and how many items could not be asked."""
    try:
        result = summarise(benchmark, records, rules)
    except ScoringError as e:
        result = {"benchmark": benchmark.name, "items": len(records), "score": None, "note": str(e)}
    result["model"] = model
    figure = published(benchmark.name, model or "")
    result["published"] = {"model": figure[0], "score": figure[1]} if figure else None
    failed = sum("error" in record for record in records)
    if failed:
        result["failed_items"] = failed
    return result


def _figure(value) -> str:
    return "—" if value is None else f"{value:.2f}".rstrip("0").rstrip(".")


def markdown(result: dict) -> str:
    published_figure = result["published"]
    reference = f"{_figure(published_figure['score'])} ({published_figure['model']})" if published_figure else "—"
    lines = ["| Benchmark | Model | Items | Score | Published |", "|---|---|---|---|---|",
             f"| {result['benchmark']} | {result['model'] or '—'} | {result['items']} | "
             f"{_figure(result['score'])} {result.get('unit', '')} | {reference} |"]
    parts = {f"{column}: {name}": value for column in ("split", "category", "l2-category")
             for name, value in result.get(column, {}).items() if not isinstance(value, dict)}
    if parts:
        lines += ["", "| Part | Score |", "|---|---|", *(f"| {name} | {_figure(v)} |" for name, v in parts.items())]
    if "note" in result:
        lines += ["", result["note"]]
    if "failed_items" in result:
        lines += ["", f"{result['failed_items']} items could not be asked (see `error` in their records); "
                      "they score 0."]
    return "\n".join(lines)


def write(result: dict, out: Path) -> None:
    """`{benchmark}.summary.json` and `.summary.md` beside the records."""
    name = result["benchmark"]
    (out / f"{name}.summary.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n",
                                              encoding="utf-8")
    (out / f"{name}.summary.md").write_text(markdown(result) + "\n", encoding="utf-8")
