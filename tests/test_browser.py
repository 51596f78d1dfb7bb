"""The app in a real browser (Debian's Chromium driven by Playwright) on a tiny random checkpoint:
upload an image, ask, watch the answer stream in, press Stop, export the chat, and recover from a
broken upload. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS, ASSETS, CHROMIUM, endless_answers

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium: apt-get install -y chromium")


def open_page(browser, url: str, width: int = 1280, height: int = 900):
    """A new tab on the app, once its message box is there."""
    page = browser.new_page(viewport={"width": width, "height": height}, accept_downloads=True)
    page.set_default_timeout(30_000)
    page.goto(url)
    page.locator("#ask textarea").wait_for()
    return page


@pytest.fixture
def page(browser, app_server):
    page = open_page(browser, app_server.url)
    yield page
    page.close()


def set_number(page, label: str, value):
    box = page.get_by_label(f"number input for {label}")
    box.fill(str(value))
    box.press("Enter")


def sample_with_seed(page, seed: int = 0):
    """Random weights: greedy decoding repeats newlines, plain sampling soon picks an end-of-answer
    token. Sampling from the 3 likeliest tokens with this seed shows words for 3000+ tokens."""
    set_number(page, "Temperature", 1)
    page.get_by_text("More settings").click()
    set_number(page, "Top-p", 1)
    set_number(page, "Top-k", 3)
    page.get_by_label("Seed").fill(str(seed))
    page.get_by_label("Seed").press("Enter")


def ask(page, text: str, image: Path | None = None):
    if image is not None:
        page.locator("#uploads input[type=file]").first.set_input_files(str(image))
        page.locator("#uploads img").first.wait_for()  # the gallery shows the upload
    page.locator("#ask textarea").fill(text)
    page.locator("#ask textarea").press("Enter")


def answered(page, count: int, timeout: float = 60_000) -> None:
    """Wait until `count` answers have ended (each ends with its line: model, tokens, time to the
    first token, ...)."""
    page.wait_for_function("n => [...document.querySelectorAll('#chat [data-testid=bot]')]"
                           ".filter(b => / tokens · [\\d.]+ s to first token/.test(b.innerText)).length >= n",
                           arg=count, timeout=timeout)


STOP = "#ask .stop-button"  # Send becomes Stop while an answer streams


def stop(page) -> None:
    """Press Stop, once an answer streams, and wait until Send is back."""
    page.locator(STOP).click()
    page.wait_for_function("() => !document.querySelector('#ask .stop-button')")


def settle(generation, quiet: float = 0.3, timeout: float = 10):
    """Wait until the decode loop has produced no token for `quiet` seconds."""
    last, since, end = -1, time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < end:
        n = len(generation.token_ids)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > quiet:
            return n
        time.sleep(0.02)
    raise AssertionError("the decode loop did not stop")


def test_upload_ask_stream_stop_and_export(page, app_server, monkeypatch):
    ARTIFACTS.mkdir(exist_ok=True)
    # (fresh-clone CI once: an end token after 2,225 tokens, before Stop was clicked)
    endless_answers(monkeypatch, app_server.engine)
    set_number(page, "Max new tokens", 4096)  # long enough to Stop mid-way
    sample_with_seed(page)
    generations = len(app_server.recorder.generations)
    ask(page, "Describe this picture.", ASSETS / "scene.jpg")

    chat = page.locator("#chat")
    chat.locator("[data-testid=user] img").first.wait_for()  # the image is shown in the chat
    answer = chat.locator("[data-testid=bot]").last
    answer.wait_for()
    generation = app_server.recorder.generations[generations]
    seen, deadline = [], time.monotonic() + 20
    while len(set(seen)) < 3 and time.monotonic() < deadline:  # the answer grows while we watch
        seen.append(len(answer.inner_text()))
        time.sleep(0.05)
    assert len(set(seen)) >= 3, f"the answer did not stream: {seen}"

    page.locator(STOP).wait_for()
    clicked = time.monotonic()
    page.locator(STOP).click()
    assert generation.cancel.wait(timeout=10), "Stop did not cancel the decode"  # gradio's cancel takes a moment
    decoded = settle(generation)
    assert generation.finish_reason == "cancelled", (
        f"the answer ended by itself ({generation.finish_reason}, {decoded} tokens) "
        f"{time.monotonic() - clicked:.1f} s after Stop was clicked")
    time.sleep(0.5)
    shown = answer.inner_text()
    time.sleep(0.5)
    assert answer.inner_text() == shown, "the answer kept changing after Stop"
    assert shown.strip()
    chat.locator("[role=log]").evaluate("log => log.scrollTop = 0")  # the question and its image in view
    page.screenshot(path=str(ARTIFACTS / "browser-stopped.png"))
    page.screenshot(path=str(ARTIFACTS / "browser-stopped-full.png"), full_page=True)

    with page.expect_download() as download:
        page.locator("#export").click()
    data = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert data["messages"][0] == {"role": "user", "text": "Describe this picture.", "images": ["scene.jpg"],
                                   "video": None}
    assert data["messages"][1]["role"] == "assistant" and data["messages"][1]["text"].strip()
    assert data["settings"]["max_new_tokens"] == 4096 and data["settings"]["seed"] == 0


def test_a_broken_upload_is_refused_with_a_message_and_the_chat_goes_on(page, app_server, tmp_path):
    broken = tmp_path / "photo.png"
    broken.write_text("this is text, not a PNG")
    page.locator("#uploads input[type=file]").first.set_input_files(str(broken))  # refused as it is added
    refusal = page.locator(".toast-body").filter(has_text="photo.png is not an image this app can open")
    refusal.first.wait_for()
    assert "/tmp" not in refusal.first.inner_text()  # the file's name, not the server's folders
    set_number(page, "Max new tokens", 8)
    sample_with_seed(page)
    ask(page, "What is in this photo?")
    answered(page, 1)
    ask(page, "Hello?")
    answered(page, 2)
    chat = page.locator("#chat")
    assert chat.locator("[data-testid=user]").filter(has_text="What is in this photo?").count() == 1
    assert "Could not answer" not in chat.inner_text()  # the broken file never reached the chat
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing sticks out sideways
    time.sleep(0.3)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.screenshot(path=str(ARTIFACTS / "browser-phone.png"))


@pytest.fixture(scope="module")
def small_app(tmp_path_factory):
    """The app on a `small` random checkpoint: a CPU turn slow enough to watch its stages."""
    from eagle_demo.tiny import write_tiny_checkpoint
    from tests.conftest import launched_app

    with launched_app(write_tiny_checkpoint(tmp_path_factory.mktemp("small") / "small-eagle2", size="small")) as app:
        yield app


RECORD_STATUS = """() => { window.stages = [];
  new MutationObserver(() => { const text = document.querySelector('#status').innerText;
    if (window.stages[window.stages.length - 1] !== text) window.stages.push(text); })
  .observe(document.querySelector('#status'), {subtree: true, childList: true, characterData: true}); }"""


def test_a_cpu_turn_shows_its_wait_before_sending_and_its_stages_while_it_works(browser, small_app):
    ARTIFACTS.mkdir(exist_ok=True)
    page = open_page(browser, small_app.url)
    images = [str(ASSETS / "scene.jpg"), str(ASSETS / "chart.png")]
    page.locator("#uploads input[type=file]").first.set_input_files(images)
    note = page.locator("#wait")
    note.get_by_text("First word in about").wait_for()
    shown = note.inner_text()
    assert "on this CPU" in shown and "image tiles" in shown and "/" not in shown, shown
    page.screenshot(path=str(ARTIFACTS / "browser-cpu-wait.png"))

    page.evaluate(RECORD_STATUS)
    page.locator("#ask textarea").fill("Compare the two pictures.")
    page.locator("#ask textarea").press("Enter")
    page.wait_for_function("() => window.stages.some(s => s.includes('reading the'))", polling="raf")
    page.screenshot(path=str(ARTIFACTS / "browser-cpu-stages.png"))
    page.wait_for_function("() => window.stages.some(s => s.includes('ready'))"
                           " && window.stages[window.stages.length - 1].includes('ready')", timeout=60_000)
    stages = [s.split(" · ", 1)[-1] for s in page.evaluate("window.stages")]
    generation = small_app.recorder.generations[-1]
    tiles, tokens = sum(generation.num_tiles), len(generation.prompt_token_ids)
    images_read = [s for s in stages if s.startswith("reading the images")]
    prompt_read = [s for s in stages if s.startswith("reading the prompt")]
    assert images_read[0] == f"reading the images: 0 of {tiles} tiles", stages
    assert prompt_read[0] == f"reading the prompt: 0 of {tokens:,} tokens" and len(prompt_read) > 1, stages
    assert stages.index(images_read[-1]) < stages.index(prompt_read[0])  # tiles first, then the prompt
    assert f"({tiles} image tiles, " in shown  # the estimate counted the tiles the turn read
    assert note.inner_text() == ""  # the images went with the message
    page.close()
