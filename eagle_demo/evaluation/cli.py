"""`python -m eagle_demo eval run|score`: the command line of the evaluation (docs/eval.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..config import DEFAULT_MODEL
from .presets import BENCHMARKS
from .vqa_metrics import RULES

INTERRUPTED = 130


def add_parser(commands) -> None:
    evaluation = commands.add_parser("eval", help="reproduce Eagle2's benchmark table on local benchmark files")
    steps = evaluation.add_subparsers(dest="eval_command", required=True)
    names = ", ".join(BENCHMARKS)

    run = steps.add_parser("run", help="answer a benchmark's items with its preset; resumable")
    run.add_argument("--benchmark", required=True, choices=list(BENCHMARKS), metavar="NAME",
                     help=f"VLMEvalKit's name: {names}")
    run.add_argument("--data", required=True,
                     help="the benchmark's VLMEvalKit .tsv, or a folder written by datasets' save_to_disk")
    run.add_argument("--split", help="the split of a saved dataset folder that holds several")
    run.add_argument("--model", default=DEFAULT_MODEL, help="hub id or local checkpoint folder; with --server, "
                     "the served model's name")
    run.add_argument("--out", default="results", help="folder of the results: {benchmark}.jsonl and its summary")
    run.add_argument("--limit", type=int, help="only the first N items")
    run.add_argument("--max-new-tokens", type=int, help="instead of the preset's 8,192 (for smoke runs)")
    run.add_argument("--server", metavar="URL", help="an OpenAI-compatible server (vLLM with this project's "
                     "plugin) instead of the native engine")
    run.add_argument("--concurrency", type=int, default=1, help="questions in flight at once")
    run.add_argument("--device", choices=["cpu", "cuda"])
    run.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    run.add_argument("--rules", choices=RULES, default=RULES[0], help="whose scorer where the two differ "
                     "(ChartQA's relaxed accuracy, yes/no extraction): the copy that made the table, or VLMEvalKit's")

    score = steps.add_parser("score", help="score a results file; prints one JSON line last")
    score.add_argument("--benchmark", required=True, choices=list(BENCHMARKS), metavar="NAME")
    score.add_argument("records", help="a JSONL file of records: index, prediction, answer and the benchmark's "
                       "columns")
    score.add_argument("--model", help="for the published figure to compare with")
    score.add_argument("--rules", choices=RULES, default=RULES[0])


def main(args) -> int:
    from .presets import benchmark

    chosen = benchmark(args.benchmark)
    if args.eval_command == "run":
        return _run(args, chosen)
    return _score(args, chosen)


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be a whole number from 1.")


def _run(args, chosen) -> int:
    from . import report
    from .backends import NativeBackend, ServerBackend
    from .data import read_items
    from .runner import run

    for name, value in (("--limit", args.limit), ("--max-new-tokens", args.max_new_tokens),
                        ("--concurrency", args.concurrency)):
        _positive(name, value)
    items = read_items(args.data, args.split)[: args.limit]
    backend = ServerBackend(args.server, args.model) if args.server else \
        NativeBackend(args.model, device=args.device, dtype=args.dtype)
    out = Path(args.out)
    records, finished = run(backend, chosen, items, out / f"{chosen.name}.jsonl", max_new_tokens=args.max_new_tokens,
                            concurrency=args.concurrency, rules=args.rules)
    if not finished:
        print(f"Interrupted: {len(records)} of {len(items)} items are answered in {out / chosen.name}.jsonl; "
              "run the same command again to answer the rest.", file=sys.stderr)
        return INTERRUPTED
    result = report.summary(chosen, records, backend.name, args.rules)
    report.write(result, out)
    print(report.markdown(result))
    print(json.dumps(result, ensure_ascii=False))
    return 0


def _score(args, chosen) -> int:
    from . import report
    from .runner import read_records
    from .scores import ScoringError, summarise

    path = Path(args.records)
    if not path.is_file():
        raise ValueError(f"{path} is not a file of records.")
    records = read_records(path)
    try:
        summarise(chosen, records, args.rules)
    except ScoringError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = report.summary(chosen, records, args.model, args.rules)
    print(report.markdown(result))
    print(json.dumps(result, ensure_ascii=False))
    return 0
