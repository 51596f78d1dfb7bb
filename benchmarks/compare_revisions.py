"""A benchmark script run on an earlier revision and on this working tree, alternating, in one run.

    python benchmarks/compare_revisions.py --baseline main -- benchmarks/bench_decode.py --device cpu

The baseline is the revision's files (`git archive`) in a temporary folder, run with its own package
first on the path; each round runs both, in alternating order, so that a slower stretch of the
machine hits both alike. Prints each run's summary (the script's last JSON line) and, last, the
median of every numeric summary field for both and their ratio (this tree over the baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def summary_of(tree: Path, script: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, *script], cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{script[0]} failed in {tree}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def numbers(summary: dict, prefix: str = "") -> dict[str, float]:
    """The summary's numeric fields, nested ones as `outer.inner`."""
    found = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            found |= numbers(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[prefix + key] = value
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="the git revision to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("script", nargs=argparse.REMAINDER, help="-- the benchmark script and its flags")
    args = parser.parse_args()
    script = args.script[1:] if args.script[:1] == ["--"] else args.script
    with tempfile.TemporaryDirectory(prefix="baseline-") as folder:
        baseline = Path(folder)
        archive = subprocess.run(["git", "archive", args.baseline], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(baseline)], input=archive.stdout, check=True)
        runs: dict[str, list[dict]] = {"baseline": [], "this tree": []}
        for round_ in range(args.rounds):
            order = [("baseline", baseline), ("this tree", REPO)]
            for name, tree in order if round_ % 2 == 0 else order[::-1]:
                runs[name].append(summary_of(tree, script))
                print(json.dumps({"round": round_, "tree": name, **runs[name][-1]}), flush=True)
    medians = {name: {k: statistics.median(n[k] for n in map(numbers, summaries) if k in n)
                      for k in numbers(summaries[0])} for name, summaries in runs.items()}
    ratios = {k: round(v / medians["baseline"][k], 3) for k, v in medians["this tree"].items()
              if medians["baseline"].get(k)}
    print(json.dumps({"summary": True, "baseline": args.baseline, "script": script, "rounds": args.rounds,
                      "median": medians, "ratio_this_tree_to_baseline": ratios}), flush=True)


if __name__ == "__main__":
    main()
