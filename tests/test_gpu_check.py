"""benchmarks/gpu_check.py's CPU-runnable parts: flags, checkpoint writing, its JSON lines and
summary, run end to end at the tiny size on CPU (the GPU-only checks report themselves skipped)."""

import json
import subprocess
import sys

from benchmarks import gpu_check
from tests.conftest import ROOT


def test_flags_default_to_the_three_true_sizes_on_cuda():
    args = gpu_check.parse_args([])
    assert args.sizes == ["1B", "2B", "9B"] and args.device == "cuda" and args.new_tokens == 256
    assert gpu_check.parse_args(["--sizes", "tiny, small"]).sizes == ["tiny", "small"]


def test_a_failing_check_is_reported_and_the_run_goes_on():
    checks = gpu_check.Checks()
    checks.run("fails", lambda: 1 / 0)
    checks.run("skips", lambda: (_ for _ in ()).throw(gpu_check.Skipped("no GPU")))
    assert checks.run("works", lambda: {"x": 1}) == {"x": 1}
    summary = checks.summary()
    assert summary["failed"] == ["fails"] and summary["skipped"] == ["skips"] and summary["passed"] == 1


def test_the_script_runs_end_to_end_on_cpu_at_the_tiny_size():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--sizes", "tiny",
                           "--new-tokens", "16"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    summary = lines[-1]
    assert summary["summary"] and summary["failed"] == [], proc.stdout + proc.stderr
    assert proc.returncode == 0
    decode = next(line for line in lines if line.get("check") == "tiny bf16 decode")
    assert decode["equal_to_eager_tokens"] == 16 and decode["tokens_per_s"] > 0 and decode["generate_tokens_per_s"] > 0
    assert {"ttft_s", "vision_s", "prefill_s", "bare_loop_tokens_per_s"} <= set(decode)
    int4 = next(line for line in lines if line.get("check") == "tiny int4")
    assert int4["kernels"] == ["cpu"] and int4["equal_to_eager_tokens"] == 16
    assert set(summary["skipped"]) == {"tiny 8-bit", "tiny second device", "tiny out of memory x20"}
