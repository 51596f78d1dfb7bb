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


# The extended run (`pytest -m extended`), which README's command (CI's run) leaves out: CI must end
# within 25 minutes on two cores, and a CI machine has run this suite 1.7 times slower than ours.
# First, the first round's page tests: test_page.py checks most of the same points again.
EXTENDED_MODULES = {"test_chat_ux", "test_browser"}
# Then the slowest tests whose point another test in CI's run makes on a smaller input or a shorter
# run, stress runs, and checks of a page's looks that the page audit checks too. docs/testing.md
# asks for the extended run before a change to the page, the server path or the evaluation.
EXTENDED_TESTS = {
    # vLLM: a second server start (the 9B layout at 4 bits; test_quantize loads that export in the
    # engine), the largest inputs, and a whole evaluation through the server
    "test_vllm::test_the_9b_layout_exported_at_4_bits_is_served_as_the_engine_serves_its_weights",
    "test_vllm::test_the_largest_image_and_video_the_app_allows_are_answered",
    "test_vllm::test_the_server_tiles_a_big_jpeg_from_the_pixels_the_engine_tiles",
    "test_vllm::test_eval_run_through_the_server_gives_the_engines_greedy_predictions",
    # the page: apps of their own, a second viewport, and looks the page audit checks as well
    "test_page::test_the_tile_default_the_page_shows_first_is_the_one_it_keeps",
    "test_page::test_two_apps_on_one_machine_keep_their_own_temporary_files",
    "test_page::test_the_saved_chats_list_left_without_a_pick_changes_nothing",
    "test_page::test_chats_survive_a_reload_and_can_be_reopened_and_deleted",
    "test_page::test_captions_count_images_and_frames_apart_and_show_whole",
    "test_page::test_text_contrast_passes_wcag_aa_in_light_and_dark",
    "test_page::test_no_like_on_what_is_not_an_answer",
    "test_page::test_a_one_pixel_image_shows_as_a_thumbnail",
    "test_page::test_on_a_phone_the_images_of_a_question_sit_in_one_row",
    "test_page::test_the_status_follows_a_load_that_stop_cut_short",
    "test_page::test_the_model_menu_is_locked_while_an_answer_streams",
    "test_page::test_progress_shows_inside_the_answer_bubble",
    "test_page::test_the_chat_the_box_and_its_controls_fit_the_first_screen[1366-768]",
    "test_zerogpu::test_the_page_chats_through_the_worker",
    # the same checks on a second endpoint or a second preset; stress runs
    "test_every_parameter::test_every_parameter_with_malformed_values[export]",
    "test_eval_run::test_records_hold_the_prompt_of_the_preset[ChartQA_TEST-sizes0-12]",
    "test_eval_run::test_ctrl_c_keeps_what_is_done_and_a_rerun_answers_the_rest",
    "test_fairness::test_v1_allows_one_answer_at_a_time_per_client",
    "test_fairness::test_a_cancel_storm_decodes_nothing_for_nobody",
    "test_concurrency::test_eight_clients_at_once_are_all_served_one_at_a_time",
    "test_hostile::test_the_corpus_leaves_no_thread_or_memory_behind",
    # benchmarks/gpu_check.py end to end (its failure path stays in CI's run)
    "test_gpu_check::test_the_script_runs_end_to_end_on_cpu_at_the_tiny_size",
}


def pytest_collection_modifyitems(config, items):
    found = set()
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module in QUICK_MODULES:
            item.add_marker(pytest.mark.quick)
        if module in EXTENDED_MODULES or f"{module}::{item.name}" in EXTENDED_TESTS:
            item.add_marker(pytest.mark.extended)
            found.add(f"{module}::{item.name}")
    # a renamed test must not leave the list naming nothing (and itself back in CI's run): checked
    # where whole modules were collected
    modules = {item.module.__name__.rsplit(".", 1)[-1] for item in items}
    if not any("::" in arg for arg in config.args) and not config.option.keyword:
        if missing := {name for name in EXTENDED_TESTS if name.split("::")[0] in modules} - found:
            raise pytest.UsageError(f"EXTENDED_TESTS names tests that were not collected: {sorted(missing)}")


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


def endless_answers(monkeypatch, engine, pause: float = 0.01) -> None:
    """Answers that only Stop or Max new tokens end: no end token (random weights pick one sooner or
    later, and when depends on the tests before), and each token `pause` s at least (4,096 take over
    40 s), so that a page on a busy machine acts before the answer ends by itself."""
    from eagle_demo.generation import ModelRunner

    step = ModelRunner.step

    def paced_step(self, token, pos):
        time.sleep(pause)
        return step(self, token, pos)

    monkeypatch.setattr(engine, "stop_ids", set())
    monkeypatch.setattr(ModelRunner, "step", paced_step)


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
