"""The page as a stranger meets it, in Chromium (issue 18): every refusal is one toast and leaves
no component failed nor the session stuck; the chat, the message box and its controls on the first
screen; progress inside the answer's bubble; one Clear; every upload checked as it arrives; nothing
a user made thrown away; marks and labels that read right; chats that survive a reload; an edited
question asked again; contrast, focus rings and screen-reader names; a quiet API page; and two
apps on one machine. One app (a menu of the tiny checkpoint and a `small` one) and one browser
serve the whole module; each test opens its own tab (its own browser storage). Screenshots go to
test-artifacts/."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from eagle_demo.config import LIMITS
from tests.conftest import ARTIFACTS, ASSETS, CHROMIUM, endless_answers, serve_app, stop_app, wait_until_serving
from tests.media_factory import make_image

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium: apt-get install -y chromium")
LIMIT = LIMITS.max_images_per_conversation
SIZES = [(1440, 900), (1366, 768), (390, 844)]

# components gradio marks as failed: a red "Error" badge on the component, or an error toast's title
ERROR_MARKS = """() => [...document.querySelectorAll('.error, [data-testid="error"], .status-error')]
  .filter(e => e.offsetParent && e.innerText.trim().toLowerCase() === 'error').length"""
TOASTS = "() => [...document.querySelectorAll('.toast-body')].map(t => t.innerText.replace(/\\s+/g, ' '))"
ENDED = "n => [...document.querySelectorAll('#chat [data-testid=bot]')].filter(b => / s to first token/.test(b.innerText)).length >= n"  # noqa: E501
# Text colours against the background they sit on (WCAG 2 relative luminance): what falls short of
# 4.5:1 (3:1 for large text). Disabled controls are exempt, as WCAG says.
LOW_CONTRAST = """() => {
  const channel = c => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
  const luminance = ([r, g, b]) => 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
  const rgba = text => (text.match(/[\\d.]+/g) || []).map(Number);
  const background = node => {
    for (let e = node; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c.length >= 3 && (c.length < 4 || c[3] > 0.5)) return c;
    }
    return [255, 255, 255];
  };
  const found = [], walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT), seen = new Set();
  while (walker.nextNode()) {
    const node = walker.currentNode.parentElement, text = walker.currentNode.textContent.trim();
    if (!text || !node || seen.has(node) || !node.offsetParent) continue;
    seen.add(node);
    const box = node.getBoundingClientRect(), style = getComputedStyle(node);
    if (box.width < 2 || box.height < 2 || style.visibility === 'hidden' || parseFloat(style.opacity) < 0.5) continue;
    if (node.closest('button:disabled, [aria-disabled=true], input:disabled, textarea:disabled')) continue;
    const a = luminance(rgba(style.color)), b = luminance(background(node));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize), large = size >= 24 || (parseInt(style.fontWeight) >= 700 && size >= 18.66);
    if (ratio < (large ? 3 : 4.5)) found.push(`${text.slice(0, 40)} (${ratio.toFixed(2)}:1)`);
  }
  return found;
}"""


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    from eagle_demo.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("page") / "small-eagle2", size="small")


@pytest.fixture(scope="module")
def app(tiny_checkpoint, small_checkpoint):
    """A menu of two: the tiny checkpoint (loaded) and a `small` one, which loads when first asked."""
    from tests.conftest import launched_app

    with launched_app(f"{tiny_checkpoint},{small_checkpoint}") as app:
        yield app


def open_page(browser, app, width: int = 1440, height: int = 900, **options):
    """A tab of its own (its own browser storage) on the app, once its message box is there; what
    the console and the network said is kept in page.said."""
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True,
                                  is_mobile=width < 600, has_touch=width < 600, **options)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.said = []
    page.on("console", lambda m: page.said.append(f"{m.type}: {m.text[:200]}"))
    page.on("response", lambda r: page.said.append(f"http {r.status}: {r.url}") if r.status >= 400 else None)
    page.goto(app if isinstance(app, str) else app.url)
    page.locator("#ask textarea").wait_for()
    return page


@pytest.fixture
def page(browser, app):
    page = open_page(browser, app)
    yield page
    page.context.close()


def set_number(page, label: str, value):
    field = page.get_by_label(f"number input for {label}")
    # A phone's settings start folded. Decided by the width, as the page decides: on a busy machine
    # the open panel may not be drawn yet, and a click would then fold it.
    if page.viewport_size["width"] <= 640 and not field.is_visible():
        page.locator("#settings").get_by_text("Settings").first.click()
    field.fill(str(value))
    field.press("Enter")


def more_settings(page):
    if not page.get_by_label("Seed").is_visible():
        page.get_by_text("More settings").click()


def set_seed(page, value: str):
    """Type the Seed and leave the field (its check runs on blur). Typed again if the field lost it:
    right after an answer ends the page sometimes drops a value typed into it (seen once in six runs;
    cause not found, kept open in the notes of issue 18)."""
    more_settings(page)
    seed = page.get_by_label("Seed")
    for _ in range(3):
        seed.fill(value)
        seed.press("Tab")
        page.wait_for_timeout(300)
        if seed.input_value() == value:
            return


def ask(page, text: str):
    page.locator("#ask textarea").fill(text)
    page.locator("#ask textarea").press("Enter")


def toast(page, text: str, times: int = 1, timeout: float = 10_000):
    """Wait until the toasts have said `text` (`times` times: gradio groups its toasts in one)."""
    try:
        page.wait_for_function("([text, times]) => [...document.querySelectorAll('.toast-body')]"
                               ".map(t => t.innerText.split(text).length - 1).reduce((a, b) => a + b, 0) >= times",
                               arg=[text, times], timeout=timeout)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "page-no-toast.png"))
        raise AssertionError(f"no toast said {text!r} {times} time(s); the toasts: {page.evaluate(TOASTS)}; "
                             f"the page said: {page.said[-8:]}") from None


def ended(page, count: int, timeout: float = 60_000):
    """Wait until `count` answers have their line (model, tokens, time to the first token)."""
    page.wait_for_function(ENDED, arg=count, timeout=timeout)


def stop_button(page):
    """The enabled Stop control the page shows, if any."""
    return next((b for b in page.get_by_role("button", name="Stop", exact=True).all()
                 if b.is_visible() and b.is_enabled()), None)


def offered_stop(page):
    """The Stop control, once the page offers it (an answer may run before the page has heard)."""
    page.wait_for_function("() => [...document.querySelectorAll('button')].some(b => b.innerText.trim() === 'Stop'"
                           " && b.offsetParent && !b.disabled)")
    return stop_button(page)


def press_stop(page):
    offered_stop(page).click()


def long_answer(page, app, monkeypatch, text: str = "Tell me a long story."):
    """Ask for an answer that only Stop ends (random weights never pick an end token here), and wait
    until it streams."""
    endless_answers(monkeypatch, app.engine)
    set_number(page, "Max new tokens", 4096)
    seen = len(app.recorder.generations)
    ask(page, text)
    end = time.monotonic() + 30
    while not (len(app.recorder.generations) > seen and len(app.recorder.generations[seen].token_ids) > 4):
        assert time.monotonic() < end, "the answer did not start"
        time.sleep(0.05)
    page.locator("#chat [data-testid=bot]").last.wait_for()
    return app.recorder.generations[seen]


def user_texts(page) -> list[str]:
    return [t.strip() for t in page.locator("#chat [data-testid=user]").all_inner_texts() if t.strip()]


def chat_name(option) -> str:
    """A saved chat's name in the list (the one open may carry a check mark before it)."""
    return option.inner_text().strip().splitlines()[-1].split(" · ")[0]


def copies(tmp_path: Path, source: Path, count: int) -> list[str]:
    out = []
    for i in range(count):
        target = tmp_path / f"photo{i:02d}{source.suffix}"
        shutil.copy(source, target)
        out.append(str(target))
    return out


# --------------------------------------------------------------------------- refusals
def test_a_refused_send_is_one_toast_and_leaves_nothing_marked_failed(page, app, monkeypatch):
    """Point 1: an empty send, a send while an answer streams, a bad setting: each a toast, and
    no component is left in an error state; the box and the example cards still work."""
    ask(page, "   ")
    toast(page, "Type a question, or add an image or a video.")
    assert page.evaluate(ERROR_MARKS) == 0
    set_seed(page, "abc")
    ask(page, "Hello?")
    toast(page, "Seed must be a whole number")
    assert page.evaluate(ERROR_MARKS) == 0
    set_seed(page, "")
    long_answer(page, app, monkeypatch)
    ask(page, "And then?")
    toast(page, "The answer is still coming")
    assert page.evaluate(ERROR_MARKS) == 0
    assert page.locator("#ask textarea").input_value() == "And then?"  # the box works, and kept the text
    page.screenshot(path=str(ARTIFACTS / "page-refusals.png"))
    press_stop(page)
    page.wait_for_function("() => !document.querySelector('#ask .stop-button')")
    set_number(page, "Max new tokens", 3)
    page.locator("#chat").get_by_label("Clear").first.click()
    page.locator("#chat").get_by_text("Describe this picture in detail.").first.click()  # a card still runs
    ended(page, 1)
    assert page.evaluate(ERROR_MARKS) == 0


def test_a_bad_setting_is_refused_with_the_question_kept_and_the_session_goes_on(page, app):
    """Point 2: a Seed of "abc" or "1.5", a Temperature of 0.005: told as it is set, and a send is
    refused with the text left in the box; the next good question is answered."""
    set_number(page, "Max new tokens", 3)
    for seed in ("abc", "1.5"):
        set_seed(page, seed)
        toast(page, "Seed must be a whole number")  # told as soon as it is set
        ask(page, "What is this?")
        toast(page, "Change it in Settings, then try again.")
        assert page.locator("#ask textarea").input_value() == "What is this?"
        assert not user_texts(page) and page.evaluate(ERROR_MARKS) == 0
    set_seed(page, "")
    set_number(page, "Temperature", 0.005)
    toast(page, "Temperature must be 0 (greedy) or at least 0.01.")
    page.locator("#ask textarea").press("Enter")
    toast(page, "Temperature must be 0 (greedy) or at least 0.01.", times=2)
    assert not user_texts(page)
    set_number(page, "Temperature", 0)
    page.locator("#ask textarea").press("Enter")
    ended(page, 1)
    assert user_texts(page) == ["What is this?"]
    assert not [t for t in page.evaluate(TOASTS) if "still coming" in t]


def test_a_number_typed_out_of_range_is_told_and_goes_back_to_the_last_one_in_range(page, app):
    """Page audit: 99999999 typed into Max new tokens was told, then clamped to 4,096 by the slider
    when the field was left, and the next question asked for 4,096 tokens."""
    set_number(page, "Max new tokens", 3)
    field = page.get_by_label("number input for Max new tokens")
    field.fill("99999999")
    toast(page, "Max new tokens must be a whole number from 1 to 4,096.")
    ask(page, "What is this?")  # the field is left
    ended(page, 1)
    assert field.input_value() == "3"
    assert len(app.recorder.generations[-1].token_ids) <= 3


def test_after_a_refused_setting_nothing_seems_to_run_and_the_trash_icon_empties_the_buttons(page, app):
    """Broken point (buttons): after a refused setting no Stop is offered and Retry is, as nothing
    runs; the chat's own trash icon leaves Retry, Undo and Export disabled."""
    set_number(page, "Max new tokens", 3)
    ask(page, "Hi")
    ended(page, 1)
    set_seed(page, "abc")
    ask(page, "Again")
    toast(page, "Seed must be a whole number")
    assert stop_button(page) is None and page.locator("#retry").is_enabled()
    page.locator("#chat").get_by_label("Clear").first.click()
    page.wait_for_function("() => document.querySelector('#retry').disabled")
    assert not any(page.locator(f"#{name}").is_enabled() for name in ("retry", "undo", "export"))


# --------------------------------------------------------------------------- layout
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_the_chat_the_box_and_its_controls_fit_the_first_screen(browser, app, monkeypatch, width, height):
    """Point 3 and "Send becomes Stop": the message box and the chat's buttons on the first screen;
    while an answer streams, Stop sits where Send was."""
    ARTIFACTS.mkdir(exist_ok=True)
    page = open_page(browser, app, width, height)
    try:
        page.screenshot(path=str(ARTIFACTS / f"page-{width}x{height}.png"))
        send = page.locator("#ask button").filter(has_text="Send").bounding_box()
        for selector in ("#ask textarea", "#retry", "#clear", "#export"):
            box = page.locator(selector).bounding_box()
            assert box and 0 <= box["y"] and box["y"] + box["height"] <= height, (selector, box)
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        long_answer(page, app, monkeypatch)
        stop = offered_stop(page)
        box = stop.bounding_box()
        assert box["y"] + box["height"] <= height and abs(box["x"] + box["width"] - send["x"] - send["width"]) < 24
        page.screenshot(path=str(ARTIFACTS / f"page-{width}x{height}-answering.png"))
        stop.click()
        page.locator("#ask button").filter(has_text="Send").wait_for()
    finally:
        page.context.close()


def test_progress_shows_inside_the_answer_bubble(page, app, tmp_path, monkeypatch):
    """Point 4: while the images are read, the answer's own bubble says so."""
    fresh = make_image(tmp_path / "fresh.png", (1400 + time.time_ns() % 97, 1000))  # no cached tiles
    seen = threading.Event()
    encode = app.engine.model.encode_images

    def encode_once_seen(pixels):  # the tiny model reads tiles faster than a page can look
        seen.wait(timeout=30)
        return encode(pixels)

    monkeypatch.setattr(app.engine.model, "encode_images", encode_once_seen)
    page.locator("#gallery input[type=file]").set_input_files(str(fresh))
    page.locator("#gallery img").first.wait_for()
    set_number(page, "Max new tokens", 3)
    ask(page, "What is this?")
    try:
        page.locator("#chat [data-testid=bot]").filter(has_text="reading the").first.wait_for()
        page.screenshot(path=str(ARTIFACTS / "page-progress.png"))
    finally:
        seen.set()
    ended(page, 1)


def test_the_chat_s_trash_icon_is_clear(page, app, monkeypatch):
    """Point 5: the trash icon stops the answer, empties the chat for good and the gallery's count."""
    page.locator("#gallery input[type=file]").set_input_files(str(ASSETS / "chart.png"))
    page.locator("#gallery img").first.wait_for()
    generation = long_answer(page, app, monkeypatch, "Describe it.")
    page.get_by_text(f"Images · 1 of {LIMIT} in this chat").wait_for()
    page.locator("#chat").get_by_label("Clear").first.click()
    assert generation.cancel.wait(timeout=10), "the answer went on"
    page.wait_for_function("() => !document.querySelector('#chat [data-testid=user]')")
    page.get_by_text(f"Images · 0 of {LIMIT} in this chat").wait_for()
    page.wait_for_function("() => !document.querySelector('#ask .stop-button')")
    assert not user_texts(page)  # and it stays empty


# --------------------------------------------------------------------------- uploads
def test_more_images_than_fit_are_taken_up_to_the_limit_and_the_rest_named(page, app, tmp_path):
    """Broken point (uploads): 18 images picked at once: 16 taken, the other two named in one
    toast, never "An error occurred."."""
    page.locator("#gallery input[type=file]").set_input_files(copies(tmp_path, ASSETS / "chart.png", LIMIT + 2))
    page.get_by_text(f"Images · {LIMIT} of {LIMIT} in this chat").wait_for()
    toast(page, f"photo{LIMIT:02d}.png, photo{LIMIT + 1:02d}.png were not added")
    page.wait_for_function("n => document.querySelectorAll('#gallery img').length === n", arg=LIMIT)
    page.wait_for_timeout(1000)  # a second toast would come within this
    said = " ".join(page.evaluate(TOASTS))
    assert said.count("were not added") == 1 and "An error occurred" not in said


def test_videos_are_checked_as_they_are_added(page, app, tmp_path):
    """Point 6: a text file named .mp4 is refused as it is added; so is a video while the gallery
    holds a chat's worth of images, which stay."""
    fake = tmp_path / "notes.mp4"
    fake.write_text("a text file with a video's name")
    page.locator("#video input[type=file]").set_input_files(str(fake))
    toast(page, "notes.mp4 is not a video")
    page.wait_for_function("() => !document.querySelector('#video video')")
    page.locator("#gallery input[type=file]").set_input_files(copies(tmp_path, ASSETS / "chart.png", LIMIT))
    page.get_by_text(f"Images · {LIMIT} of {LIMIT} in this chat").wait_for()
    page.locator("#video input[type=file]").set_input_files(str(ASSETS / "ball.mp4"))
    toast(page, "ball.mp4 was not added: a chat holds")
    page.wait_for_function("() => !document.querySelector('#video video')")
    try:
        page.wait_for_function("n => document.querySelectorAll('#gallery img').length === n", arg=LIMIT)
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "page-video-refused.png"))
        raise AssertionError(f"the gallery shows {page.locator('#gallery img').count()} images") from None
    page.get_by_text(f"Images · {LIMIT} of {LIMIT} in this chat").wait_for()


def test_an_example_card_keeps_the_draft_and_the_waiting_images(page, app):
    """Point 7, and focus after an example: the draft and the waiting image stay; the focus is back in
    the message box."""
    set_number(page, "Max new tokens", 3)
    page.locator("#gallery input[type=file]").set_input_files(str(ASSETS / "chart.png"))
    page.locator("#gallery img").first.wait_for()
    page.locator("#ask textarea").fill("My own question")
    page.locator("#chat").get_by_text("Describe this picture in detail.").first.click()
    ended(page, 1)
    assert page.locator("#ask textarea").input_value() == "My own question"
    assert page.locator("#gallery img").count() == 1
    page.wait_for_function("() => document.activeElement === document.querySelector('#ask textarea')")


def test_an_over_long_message_stays_in_the_box(page, app):
    """Point 9: 8,100 characters are refused at once, and stay in the box to be shortened."""
    page.locator("#ask textarea").fill("x" * (LIMITS.max_prompt_chars + 100))
    page.locator("#ask textarea").press("Enter")
    toast(page, f"The message is {LIMITS.max_prompt_chars + 100:,} characters long")
    assert len(page.locator("#ask textarea").input_value()) == LIMITS.max_prompt_chars + 100
    assert not user_texts(page) and page.evaluate(ERROR_MARKS) == 0


# --------------------------------------------------------------------------- the model menu
def test_the_model_menu_is_locked_while_an_answer_streams(page, app, monkeypatch):
    """Point 11: another model cannot be picked while one answers (the menu would say "ready" for
    a model that is not the one writing)."""
    long_answer(page, app, monkeypatch)
    page.wait_for_function("() => document.querySelector('#model input').disabled")
    press_stop(page)
    page.wait_for_function("() => !document.querySelector('#model input').disabled")


def test_the_status_follows_a_load_that_stop_cut_short(page, app, monkeypatch):
    """Point 10: Stop while `small` loads; the status says "ready" once the load has ended."""
    import eagle_demo.model

    stopped = threading.Event()
    load = eagle_demo.model.load_eagle2

    def load_after_stop(*args, **kwargs):  # a small checkpoint loads faster than a page can look
        stopped.wait(timeout=60)
        return load(*args, **kwargs)

    monkeypatch.setattr(eagle_demo.model, "load_eagle2", load_after_stop)
    page.locator("#model input").click()
    page.get_by_role("option", name="small-eagle2").click()
    set_number(page, "Max new tokens", 3)
    ask(page, "Hi")
    try:
        page.locator("#status").get_by_text("loading small-eagle2").wait_for()
        press_stop(page)
    finally:
        stopped.set()
    page.locator("#status").get_by_text("ready").wait_for(timeout=120_000)


# --------------------------------------------------------------------------- marks and labels
def test_captions_count_images_and_frames_apart_and_show_whole(page, app):
    """Point 12: after a video turn the next image is "Image 1" (frames are not images), its caption
    is not cut, and the frames row shows each of the 8 frames with its time."""
    set_number(page, "Max new tokens", 3)
    page.locator("#video input[type=file]").set_input_files(str(ASSETS / "ball.mp4"))
    page.locator("#video video").wait_for()
    ask(page, "What happens?")
    ended(page, 1)
    page.locator("#gallery input[type=file]").set_input_files(str(ASSETS / "chart.png"))
    page.locator("#gallery .caption-label").first.wait_for()
    assert page.locator("#gallery .caption-label").all_inner_texts() == ["Image 1"]
    page.get_by_text(f"Images · 2 of {LIMIT} in this chat").wait_for()
    clipped = "e => e.scrollWidth > e.clientWidth + 1"
    assert not page.locator("#gallery .caption-label").first.evaluate(clipped)
    page.locator("#frames").get_by_text("Video frames the last answer read").click()
    page.wait_for_function("() => document.querySelectorAll('#frames .caption-label').length === 8")
    frames = page.locator("#frames .caption-label")
    row = page.locator("#frames").bounding_box()
    for k in range(8):
        caption = frames.nth(k)
        caption.scroll_into_view_if_needed()
        assert caption.inner_text().startswith(f"Frame {k + 1} · ") and caption.inner_text().endswith(" s")
        assert not caption.evaluate(clipped)
        box = caption.bounding_box()
        assert row["x"] <= box["x"] and box["x"] + box["width"] <= row["x"] + row["width"] + 1
    page.screenshot(path=str(ARTIFACTS / "page-frames.png"))


def test_an_answer_cut_at_max_new_tokens_says_so_and_continues_in_one_click(page, app):
    """Point 13: the answer's line says it was cut at the limit, and Continue asks for more."""
    set_number(page, "Max new tokens", 3)
    set_number(page, "Temperature", 1)
    set_seed(page, "0")
    ask(page, "Tell me everything.")
    ended(page, 1)
    page.locator("#chat [data-testid=bot]").get_by_text("cut at the 3-token limit").first.wait_for()
    page.locator("#chat").get_by_role("button", name="Continue").click()
    ended(page, 2)
    assert user_texts(page) == ["Tell me everything.", "Continue."]


def test_a_stopped_answer_exports_with_its_settings_stats_and_mark(page, app, monkeypatch):
    """Broken point (export): a stopped answer's record carries its settings, its stats and
    "stopped"; after the trash icon the old chat is no longer offered."""
    set_number(page, "Temperature", 1)
    long_answer(page, app, monkeypatch)
    press_stop(page)
    page.locator("#chat [data-testid=bot]").get_by_text("stopped").first.wait_for()
    page.wait_for_function("() => !document.querySelector('#export').disabled")
    with page.expect_download() as download:
        page.locator("#export").click()
    exported = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    answer = exported["messages"][-1]
    assert answer["stopped"] is True and answer["text"].strip()
    made_with = answer["made_with"]
    assert made_with["settings"]["max_new_tokens"] == 4096 and made_with["settings"]["temperature"] == 1.0
    assert made_with["stats"]["finish_reason"] == "stopped" and made_with["stats"]["tokens"] > 0
    page.locator("#chat").get_by_label("Clear").first.click()
    page.wait_for_function("() => document.querySelector('#export').disabled")


# --------------------------------------------------------------------------- chats kept
def test_chats_survive_a_reload_and_can_be_reopened_and_deleted(page, app):
    """Point 14: a reload keeps the chat; Clear starts a new one; the list reopens the first and
    deletes it. Nothing of it is kept by the server."""
    set_number(page, "Max new tokens", 3)
    ask(page, "First chat")
    ended(page, 1)
    page.wait_for_function("() => document.querySelector('#saved-list input').value.startsWith('First chat')")
    page.reload()
    page.locator("#chat [data-testid=user]").filter(has_text="First chat").wait_for()
    ended(page, 1)  # its answer too, with its line
    page.locator("#clear").click()
    page.wait_for_function("() => !document.querySelector('#chat [data-testid=user]')")
    set_number(page, "Max new tokens", 3)
    ask(page, "Second chat")
    ended(page, 1)
    page.wait_for_function("() => document.querySelector('#saved-list input').value.startsWith('Second chat')")
    page.locator("#saved-list input").click()
    options = page.get_by_role("option")
    assert [chat_name(o) for o in options.all()] == ["Second chat", "First chat"]
    options.filter(has_text="First chat").click()
    page.locator("#chat [data-testid=user]").filter(has_text="First chat").wait_for()
    page.locator("#delete-chat").click()
    page.wait_for_function("() => !document.querySelector('#chat [data-testid=user]')")
    # the store follows (the list names no chat once the deleted one is gone from it)
    page.wait_for_function("() => document.querySelector('#saved-list input').value === ''")
    page.locator("#saved-list input").click()
    assert [chat_name(o) for o in page.get_by_role("option").all()] == ["Second chat"]


def test_the_saved_chats_list_left_without_a_pick_changes_nothing(page, app, monkeypatch):
    """The list also reports an input when it merely loses focus: opened and left with nothing
    picked, it says nothing ("no longer saved" of a chat nobody deleted, "still coming" while an
    answer streams) and opens nothing; a real pick still opens the chat."""
    page.evaluate("""() => { window.toastsSeen = [];
      new MutationObserver(() => document.querySelectorAll('.toast-body').forEach(t => {
        if (!window.toastsSeen.includes(t.innerText)) window.toastsSeen.push(t.innerText); }))
        .observe(document.body, {childList: true, subtree: true}); }""")
    set_number(page, "Max new tokens", 3)
    ask(page, "Kept chat")
    ended(page, 1)
    page.wait_for_function("() => document.querySelector('#saved-list input').value.startsWith('Kept chat')")
    page.locator("#clear").click()
    page.wait_for_function("() => !document.querySelector('#chat [data-testid=user]')")

    def open_and_leave():
        page.locator("#saved-list input").click()
        page.get_by_role("option").first.wait_for()
        page.locator("#ask textarea").click()
        page.wait_for_function("() => !document.querySelector('#saved-list [role=option]')")

    def pick_kept_chat():  # after the list's earlier inputs, in their order (one event, one at a time)
        page.locator("#saved-list input").click()
        page.get_by_role("option").filter(has_text="Kept chat").click()
        page.locator("#chat [data-testid=user]").filter(has_text="Kept chat").wait_for()

    open_and_leave()  # a new chat, not in the list
    pick_kept_chat()
    long_answer(page, app, monkeypatch, "And more.")
    open_and_leave()  # the chat shown, while its answer streams
    press_stop(page)
    page.locator("#clear").click()
    page.wait_for_function("() => !document.querySelector('#chat [data-testid=user]')")
    pick_kept_chat()
    assert page.evaluate("() => window.toastsSeen") == []


def test_an_earlier_question_is_edited_and_asked_again_from_there(page, app):
    """Build: the pencil on an earlier question; the chat goes on from the edited question."""
    set_number(page, "Max new tokens", 3)
    page.locator("#gallery input[type=file]").set_input_files(str(ASSETS / "scene.jpg"))
    page.locator("#gallery img").first.wait_for()
    ask(page, "What is in the picture?")
    ended(page, 1)
    ask(page, "And the colours?")
    ended(page, 2)
    first = page.locator("#chat .user-row").first
    first.hover()
    page.locator("#chat").get_by_label("Edit").first.click()
    page.locator("#chat .user-row textarea").fill("How many windows?")
    page.locator("#chat").get_by_label("Submit").click()
    page.wait_for_function("() => document.querySelectorAll('#chat .user-row').length === 1")
    ended(page, 1)
    assert user_texts(page) == ["How many windows?"]
    assert page.locator("#chat .user-row img").count() == 1  # the question keeps its image


# --------------------------------------------------------------------------- phone
def test_on_a_phone_the_images_of_a_question_sit_in_one_row(browser, app):
    """Broken point (bubble grid): four images in one question take one row of thumbnails."""
    page = open_page(browser, app, 390, 844)
    try:
        page.locator("#gallery input[type=file]").set_input_files(
            [str(ASSETS / n) for n in ("scene.jpg", "chart.png", "document.jpg", "compare_a.jpg")])
        page.get_by_text(f"Images · 4 of {LIMIT}").wait_for()
        page.locator("#settings").get_by_text("Settings").first.click()
        set_number(page, "Max new tokens", 3)
        ask(page, "Compare them.")
        ended(page, 1)
        boxes = [img.bounding_box() for img in page.locator("#chat .user-row img").all()]
        tops = [b["y"] for b in boxes]
        assert len(boxes) == 4 and max(tops) - min(tops) < 30 and max(b["height"] for b in boxes) <= 96
        page.screenshot(path=str(ARTIFACTS / "page-phone-thumbnails.png"))
    finally:
        page.context.close()


def test_on_a_phone_the_intro_the_first_example_and_the_gallery_label_are_whole(browser, app):
    """Broken point (phone layout): the empty chat opens at its top, the intro and the first card in
    view; the gallery's label is one line that never covers a thumbnail."""
    page = open_page(browser, app, 390, 844)
    try:
        log = page.locator("#chat [role=log]")
        assert log.evaluate("e => e.scrollTop") == 0
        chat = log.bounding_box()
        for item in (page.locator("#chat .placeholder p").first, page.locator("#chat .example").first):
            box = item.bounding_box()
            assert chat["y"] <= box["y"] and box["y"] + box["height"] <= chat["y"] + chat["height"]
        page.locator("#gallery input[type=file]").set_input_files(str(ASSETS / "chart.png"))
        page.locator("#gallery img").first.wait_for()
        label = page.locator("#gallery [data-testid=block-label]").bounding_box()
        thumbnail = page.locator("#gallery .thumbnail-item").first.bounding_box()
        assert label["height"] < 32 and label["y"] + label["height"] <= thumbnail["y"]
        placeholder = page.locator("#ask textarea").evaluate(
            "e => { const c = document.createElement('canvas').getContext('2d'); c.font = getComputedStyle(e).font;"
            " return [c.measureText(e.placeholder).width, e.clientWidth]; }")
        assert placeholder[0] <= placeholder[1]  # the placeholder is whole
        page.screenshot(path=str(ARTIFACTS / "page-phone.png"))
    finally:
        page.context.close()


# --------------------------------------------------------------------------- accessibility
def test_text_contrast_passes_wcag_aa_in_light_and_dark(browser, app):
    """Point 8: every text colour on the page against its background, light and dark, with the
    settings and the upload boxes in view."""
    for theme in ("light", "dark"):
        page = open_page(browser, app, 1440, 900, color_scheme=theme)
        try:
            if theme == "dark":
                page.goto(app.url + "?__theme=dark")
                page.locator("#ask textarea").wait_for()
            more_settings(page)
            page.locator("#gallery input[type=file]").set_input_files(str(ASSETS / "chart.png"))
            page.locator("#gallery img").first.wait_for()
            assert page.evaluate(LOW_CONTRAST) == [], theme
        finally:
            page.context.close()


def test_every_control_shows_a_focus_ring_and_the_box_has_a_name(page, app):
    """Point 15 (focus) and broken point (names): the range sliders show a ring when the keyboard
    reaches them; the message box is announced as "Message", Send and Stop by their words."""
    page.get_by_role("textbox", name="Message").wait_for()
    page.get_by_role("button", name="Send", exact=True).wait_for()
    slider = page.locator("#settings input[type=range]").first
    slider.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowLeft")
    ring = slider.evaluate("e => { const s = getComputedStyle(e); "
                           "return [s.outlineStyle, s.outlineWidth, s.boxShadow]; }")
    assert (ring[0] != "none" and ring[1] != "0px") or ring[2] != "none", ring


def test_no_like_on_what_is_not_an_answer(page, app, tmp_path):
    """Point 15: Like and Dislike on an answer, not on a "Stopped" note."""
    # images no earlier test sent, as many tiles as fit: the prompt takes a while to read
    fresh = [make_image(tmp_path / f"slow{i}.png", (1900 + i + time.time_ns() % 53, 1400)) for i in range(6)]
    page.locator("#gallery input[type=file]").set_input_files([str(f) for f in fresh])
    page.get_by_text(f"Images · 6 of {LIMIT}").wait_for()
    set_number(page, "Max tiles per image", 24)
    ask(page, "What is this?")
    page.locator("#chat [data-testid=bot]").filter(has_text="reading the prompt").first.wait_for()
    press_stop(page)
    note = page.locator("#chat .bot-row").filter(has_text="Stopped before the answer began")
    note.wait_for()
    buttons = page.locator("#chat .message-buttons").last
    assert not buttons.get_by_label("Like", exact=True).is_visible()
    assert not buttons.get_by_label("Dislike", exact=True).is_visible()


def test_a_one_pixel_image_shows_as_a_thumbnail(page, app, tmp_path):
    """Point 15: a 1x1 image is a thumbnail one can see, in the gallery and in the chat."""
    dot = make_image(tmp_path / "dot.png", (1, 1))
    page.locator("#gallery input[type=file]").set_input_files(str(dot))
    page.locator("#gallery img").first.wait_for()
    assert page.locator("#gallery img").first.bounding_box()["width"] >= 24
    set_number(page, "Max new tokens", 3)
    ask(page, "What is this?")
    ended(page, 1)
    box = page.locator("#chat .user-row img").first.bounding_box()
    assert box["width"] >= 24 and box["height"] >= 24


def test_the_footer_and_the_console_are_quiet(page, app):
    """Point 15: no dangling "·" in the footer; no "Method not implemented." warnings over a session."""
    items = page.locator("footer").evaluate("f => [...f.children].filter(e => e.offsetParent)"
                                            ".map(e => e.innerText.trim())")
    assert items and items[0] != "·" and items[-1] != "·", items
    assert all(not (a == "·" and b == "·") for a, b in zip(items, items[1:])), items
    set_number(page, "Max new tokens", 3)
    for question in ("Hi", "Again"):
        ask(page, question)
    ended(page, 1)
    page.locator("#clear").click()
    ask(page, "Once more")
    ended(page, 1)
    assert not [s for s in page.said if "Method not implemented" in s]


def test_the_tile_default_the_page_shows_first_is_the_one_it_keeps(browser, small_checkpoint):
    """Point 15: on a CPU, Max tiles starts at what gives a first word in about 10 s there; once a turn
    has measured the CPU, a page load still shows one value from its first paint on, load after load.
    (An app of its own, in a process of its own: its temporary files are its own.)"""
    process, url = serve_app(["--model", str(small_checkpoint)], env={"GRADIO_TEMP_DIR": ""})
    try:
        wait_until_serving(process, url, 120)
        page = open_page(browser, url)
        page.locator("#gallery input[type=file]").set_input_files(str(ASSETS / "scene.jpg"))
        page.locator("#gallery img").first.wait_for()
        set_number(page, "Max new tokens", 2)
        ask(page, "What is this?")
        ended(page, 1, timeout=120_000)
        page.context.close()
        values = []
        for _ in range(2):
            page = open_page(browser, url)
            first = page.get_by_label("number input for Max tiles per image").input_value()
            page.wait_for_timeout(2000)  # what the page's load events would set meanwhile
            values += [first, page.get_by_label("number input for Max tiles per image").input_value()]
            page.context.close()
        assert len(set(values)) == 1, values
    finally:
        stop_app(process)


# each time a live region says "Done": whether the last answer had ended (it has its line) by then
HEARD = """() => { window.heard = [];
  new MutationObserver(() => {
    for (const region of document.querySelectorAll('[aria-live]')) {
      if (region.innerText.trim() !== 'Done') continue;
      const answers = [...document.querySelectorAll('#chat [data-testid=bot]')];
      window.heard.push(answers.length > 0 && / s to first token/.test(answers.at(-1).innerText));
    }
  }).observe(document.body, {subtree: true, childList: true, characterData: true}); }"""


def test_the_screen_reader_hears_done_only_when_the_answer_is_done(browser, app):
    """Broken point (API page, "Done"): the live region says "Done" once, after the answer ended."""
    page = open_page(browser, app)
    try:
        page.evaluate(HEARD)
        set_number(page, "Max new tokens", 3)
        ask(page, "Hi")
        ended(page, 1)
        page.wait_for_function("() => window.heard.length > 0", timeout=15_000)
        assert all(page.evaluate("window.heard")), "Done was said before the answer ended"
    finally:
        page.context.close()


def test_the_api_page_is_quiet(page, app):
    """Broken point (API page): no request that fails, no console error, no MCP tab with MCP off."""
    page.get_by_text("Use via API").first.click()
    page.get_by_text("API name: /chat").first.wait_for()
    page.wait_for_timeout(1000)  # its requests
    assert not [s for s in page.said if s.startswith(("http ", "error"))], page.said
    assert not page.get_by_role("button", name="MCP", exact=True).count()
    assert "MCP" not in page.locator("body").inner_text()


# --------------------------------------------------------------------------- two apps
def test_two_apps_on_one_machine_keep_their_own_temporary_files(tiny_checkpoint):
    """Point 15: an app that stops does not take the other's example thumbnails with it."""
    first, first_url = serve_app(["--model", str(tiny_checkpoint)], env={"GRADIO_TEMP_DIR": ""})
    second, second_url = serve_app(["--model", str(tiny_checkpoint)], env={"GRADIO_TEMP_DIR": ""})
    try:
        wait_until_serving(first, first_url, 60)
        wait_until_serving(second, second_url, 60)
        config = httpx.get(first_url + "config", timeout=10).json()
        icons = [e["icon"]["url"] for c in config["components"] if c.get("props", {}).get("elem_id") == "chat"
                 for e in c["props"]["examples"] if e.get("icon")]
        assert icons and all(httpx.get(url, timeout=10).status_code == 200 for url in icons)
        stop_app(second)
        assert all(httpx.get(url, timeout=10).status_code == 200 for url in icons)
    finally:
        stop_app(first)
        if second.poll() is None:
            stop_app(second)
