"""Shared fixtures: a tiny random-weight checkpoint and the real app serving it over loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's: Playwright cannot download its own browsers here
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# Tests never reach the network: no hub downloads, no gradio telemetry or version checks.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


# The daily loop (`pytest -m quick`): modules that start no app, browser, vLLM or side environment.
QUICK_MODULES = {
    "test_model", "test_qwen2", "test_preprocessing", "test_prompt", "test_tiny", "test_media",
    "test_engine", "test_grounding", "test_cpu", "test_cuda_emulation",
    "test_vllm_config", "test_gpu_check", "test_eval_scores", "test_eval_data", "test_saved_chats",
}


# The first round's page tests (`pytest -m extended`): test_page.py checks most of the same points
# again, and CI's whole run must stay under 25 minutes on two cores, so README's command leaves them out.
EXTENDED_MODULES = {"test_chat_ux", "test_browser"}


def pytest_collection_modifyitems(items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module in QUICK_MODULES:
            item.add_marker(pytest.mark.quick)
        if module in EXTENDED_MODULES:
            item.add_marker(pytest.mark.extended)


@pytest.fixture(scope="module")
def browser():
    """One Chromium for a module's page tests."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["contiguous", "cuda_fused"])
def sdpa_layout(request, monkeypatch) -> str:
    """Runs a test twice: with CPU attention's contiguous output, and with the layout CUDA's fused
    kernels return (see tests/cuda_emulation.py)."""
    if request.param == "cuda_fused":
        from tests.cuda_emulation import fused_attention_layout

        fused_attention_layout(monkeypatch)
    return request.param


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weight Eagle2 checkpoint (current 1B/2B layout); loads in well under a second."""
    from eagle_demo.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-eagle2", layout="eagle_2_5_vl")


class Recorder:
    """Keeps every Generation the engine hands out, so tests can see what the decode loop did, and
    when each request reached the engine (perf_counter, like the Generation's timings)."""

    def __init__(self, engine):
        self.generations: list = []
        self.asked_at: list[float] = []  # one per generation
        self._lock = threading.Lock()
        chat = engine.chat

        def recording_chat(*args, **kwargs):
            asked_at = time.perf_counter()
            generation = chat(*args, **kwargs)
            with self._lock:
                self.generations.append(generation)
                self.asked_at.append(asked_at)
            return generation

        engine.chat = recording_chat  # the real engine, observed


@contextmanager
def launched_app(checkpoint: Path, mcp: bool = False, flags: tuple[str, ...] = ()):
    """`app.py`'s own app on a free loopback port, launched in this process so tests can look at
    its engine: url, engine (already loaded), recorder, the Blocks and the model's name. `mcp`:
    with `--mcp` (gradio's MCP server at /gradio_api/mcp/); `flags`: more of app.py's flags."""
    sys.path.insert(0, str(ROOT))
    import app

    port = free_port()
    flags = ["--model", str(checkpoint), "--port", str(port), *(["--mcp"] if mcp else []), *flags]
    demo, menu, launch = app.build(app.parse_args(flags))
    engine = menu.model(menu.names[0])
    engine.load()
    recorder = Recorder(engine)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", engine=engine, recorder=recorder, demo=demo,
                              model=menu.names[0])
    finally:
        demo.close()


@pytest.fixture(scope="session")
def app_server(tiny_checkpoint):
    with launched_app(tiny_checkpoint) as server:
        yield server


@pytest.fixture
def client(app_server):
    from gradio_client import Client

    return Client(app_server.url, verbose=False, analytics_enabled=False)


def stream(job, timeout: float = 60.0) -> list:
    """All the updates a gradio_client job streams, in order (waits for the job to finish)."""
    done = threading.Event()
    job.add_done_callback(lambda _: done.set())
    assert done.wait(timeout), "the job did not finish in time"
    return job.outputs()


def rss() -> int:
    """This process's resident memory, once glibc has handed back the free heap pages it keeps
    (otherwise the high-water mark of earlier tests' requests counts as growth)."""
    import ctypes
    import ctypes.util

    import psutil

    libc = ctypes.util.find_library("c")
    if libc and hasattr(ctypes.CDLL(libc), "malloc_trim"):
        ctypes.CDLL(libc).malloc_trim(0)
    return psutil.Process().memory_info().rss


# gradio runs handlers on anyio's worker pool (at most 40 threads), whose idle workers only go
# when later work prunes them: a burst leaves it bigger for a while, which is no leak.
GRADIO_POOL = "AnyIO worker thread"


def threads_left_behind(before: set[threading.Thread], timeout: float = 15.0, pools=()) -> list[str]:
    """Names of the threads started since `before` (threading.enumerate() then) that are still
    alive after up to `timeout` seconds, gradio's worker pool aside, and the workers of `pools`
    (bounded ThreadPoolExecutors, such as a gradio_client's: they too keep idle workers)."""
    end = time.monotonic() + timeout
    while True:
        pooled = {t for pool in pools for t in pool._threads}
        left = [t.name for t in threading.enumerate()
                if t not in before and t not in pooled and t.name != GRADIO_POOL]
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.1)


def serve_app(args: list[str], env: dict | None = None):
    """`python app.py ARGS` on a free loopback port, in a process of its own: (process, url)."""
    port = free_port()
    cmd = [sys.executable, str(ROOT / "app.py"), *args, "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}/"


def wait_until_serving(proc, url: str, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"not serving after {timeout} s")


def stop_app(proc) -> str:
    """Stop a `serve_app` process and everything it started (e.g. forked workers); its output."""
    os.killpg(proc.pid, signal.SIGTERM)
    return proc.communicate(timeout=30)[0]
