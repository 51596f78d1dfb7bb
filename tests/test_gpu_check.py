"""benchmarks/gpu_check.py run as a script, as it runs on a GPU machine: end to end at the tiny size on
CPU (the GPU-only checks, and those of optional packages not installed, report themselves skipped,
with their reasons), and a failing check is reported while the run goes on."""

import importlib.util
import json
import subprocess
import sys

from tests.conftest import ROOT


def gpu_check(*args: str, timeout: int = 300) -> tuple[subprocess.CompletedProcess, list[dict]]:
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    return proc, [json.loads(line) for line in proc.stdout.splitlines()]


def test_the_script_runs_end_to_end_on_cpu_at_the_tiny_size():
    proc, lines = gpu_check("--sizes", "tiny", "--new-tokens", "16")
    summary = lines[-1]
    assert summary["summary"] and summary["failed"] == [], proc.stdout + proc.stderr
    assert proc.returncode == 0
    decode = next(line for line in lines if line.get("check") == "tiny bf16 decode")
    assert decode["equal_to_eager_tokens"] == 16 and decode["tokens_per_s"] > 0 and decode["generate_tokens_per_s"] > 0
    assert {"ttft_s", "vision_s", "prefill_s", "bare_loop_tokens_per_s"} <= set(decode)
    assert next(line for line in lines if line.get("check") == "tiny eval run")["items"] == 2
    int4 = next(line for line in lines if line.get("check") == "tiny int4")
    assert int4["kernels"] == ["cpu"] and int4["equal_to_eager_tokens"] == 16
    assert decode["follow_up_prompt_tokens"] > 2 * decode["prompt_tokens"] - 100  # two images of 13 tiles
    for check in ("tiny sampling", "tiny spans", "tiny video", "tiny 8-bit"):
        assert next(line for line in lines if line.get("check") == check)["ok"], check
    absent = {f"tiny {package}" for package, module in (("flash-attn", "flash_attn"), ("decord", "decord"))
              if importlib.util.find_spec(module) is None}
    gpu_only = {"tiny compiled decode", "tiny cuDNN attention", "tiny second device", "tiny out of memory x20"}
    assert set(summary["skipped"]) == gpu_only | absent
    reasons = {line["check"]: line["skipped"] for line in lines if "check" in line and line.get("skipped")}
    assert all(reasons[check].endswith("is not installed (pip install " + check.split()[1] + ")") for check in absent)


def test_a_failing_check_is_reported_and_the_run_goes_on():
    proc, lines = gpu_check("--sizes", "no-such-size")
    failed, summary = lines[0], lines[-1]  # the run went on to its summary
    assert failed["check"] == "write no-such-size" and failed["ok"] is False and "unknown size" in failed["error"]
    assert summary["summary"] and summary["failed"] == ["write no-such-size"] and proc.returncode == 1
