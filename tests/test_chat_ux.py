"""The chat as people use it, in Chromium (issue 10's points, each checked where it went wrong):
the Seed box, a question sent while an answer streams, an empty send, Stop before the answer
began, an empty answer, buttons enabled only when they can act, /chat first on the API page,
files checked as they are added, example cards, per-answer records in the export, images pasted,
dropped or attached in the message box and numbered in the gallery, likes, the settings folded on
a phone, a video answer's frames, and the screen-reader region's words. Screenshots go to
test-artifacts/."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from eagle_demo.chat_actions import BUSY_SENDING
from eagle_demo.config import LIMITS
from tests.conftest import ARTIFACTS, ASSETS, CHROMIUM
from tests.media_factory import make_image
from tests.test_browser import (  # noqa: F401 - small_app is a fixture
    RECORD_STATUS,
    STOP,
    answered,
    ask,
    open_page,
    set_number,
    small_app,
    stop,
)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium: apt-get install -y chromium")
BUTTONS = ("retry", "undo", "clear", "export")


@pytest.fixture
def page(browser, app_server):  # noqa: F811
    page = open_page(browser, app_server.url, width=1440)
    yield page
    page.close()


@pytest.fixture
def small_page(browser, small_app):  # noqa: F811
    """The app on the `small` checkpoint, asked for a long greedy answer: it streams for a while
    (random weights repeat a newline), long enough to act during it."""
    page = open_page(browser, small_app.url, width=1440)
    set_number(page, "Max new tokens", 4096)
    set_number(page, "Temperature", 0)
    yield page
    page.close()


def enabled(page) -> dict[str, bool]:
    """Which buttons are enabled, and whether the box offers Stop (in Send's place)."""
    return {"stop": page.locator(STOP).count() > 0, **{name: page.locator(f"#{name}").is_enabled() for name in BUTTONS}}


def toast(page, text: str) -> None:
    page.locator(".toast-body").filter(has_text=text).first.wait_for(timeout=10_000)


def streaming(app, seen: int) -> None:
    """Wait until the app's answer after `seen` earlier ones has streamed some tokens."""
    end = time.monotonic() + 30
    while time.monotonic() < end and not (len(app.recorder.generations) > seen
                                          and len(app.recorder.generations[seen].token_ids) > 8):
        time.sleep(0.02)


def test_buttons_act_only_when_they_can_and_a_stopped_answer_says_so(small_page, small_app):  # noqa: F811
    page = small_page
    assert enabled(page) == dict.fromkeys(("stop", *BUTTONS), False)  # an empty chat: nothing to act on
    seen = len(small_app.recorder.generations)
    ask(page, "Tell me a long story.")
    streaming(small_app, seen)
    page.locator(STOP).wait_for()
    assert enabled(page) == {"stop": True, "retry": False, "undo": True, "clear": True, "export": False}
    page.screenshot(path=str(ARTIFACTS / "ux-streaming.png"))
    stop(page)
    page.locator("#chat [data-testid=bot]").last.get_by_text("stopped").wait_for()
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('ready')")  # no stale stage
    page.wait_for_function("() => !document.querySelector('#export').disabled")
    assert enabled(page) == {"stop": False, "retry": True, "undo": True, "clear": True, "export": True}
    page.screenshot(path=str(ARTIFACTS / "ux-stopped.png"))
    page.locator("#clear").click()
    page.wait_for_function("() => document.querySelector('#clear').disabled")
    assert enabled(page) == dict.fromkeys(("stop", *BUTTONS), False)


def test_a_question_sent_while_an_answer_streams_is_refused_and_kept_in_the_box(small_page):
    page = small_page
    ask(page, "Tell me a long story.")
    page.locator(STOP).wait_for()
    box = page.locator("#ask textarea")
    box.fill("And what happened next?")
    box.press("Enter")
    toast(page, BUSY_SENDING)
    assert box.input_value() == "And what happened next?"  # nothing typed is lost
    assert page.locator("#chat [data-testid=user]").count() == 1  # and the chat did not take it
    page.screenshot(path=str(ARTIFACTS / "ux-busy-send.png"))
    stop(page)
    set_number(page, "Max new tokens", 4)
    box.press("Enter")  # the kept text, sent once the answer has stopped
    page.locator("#chat [data-testid=user]").last.get_by_text("And what happened next?").wait_for()


def test_an_empty_send_says_what_to_do(page, app_server):
    page.locator("#ask textarea").fill("   ")
    page.locator("#ask textarea").press("Enter")
    toast(page, "Type a question, or add an image or a video.")
    assert page.locator("#chat [data-testid=user]").count() == 0
    assert "ready" in page.locator("#status").inner_text()  # the status line stays


def test_the_seed_box_starts_empty_and_the_export_says_none(page, app_server):
    page.get_by_text("More settings").click()
    assert page.get_by_label("Seed").input_value() == ""
    set_number(page, "Max new tokens", 4)
    ask(page, "Hello?")
    page.wait_for_function("() => !document.querySelector('#export').disabled", timeout=60_000)
    with page.expect_download() as download:
        page.locator("#export").click()
    assert json.loads(Path(download.value.path()).read_text(encoding="utf-8"))["settings"]["seed"] is None


def test_an_empty_answer_gets_a_note_not_a_blank_bubble(page, app_server):
    set_number(page, "Temperature", 0)  # greedy on the tiny checkpoint: a newline first
    set_number(page, "Max new tokens", 1)
    ask(page, "Hi")
    page.locator("#chat [data-testid=bot]").last.get_by_text("without writing anything").wait_for(timeout=60_000)


def test_stop_before_the_answer_began_leaves_a_calm_note_and_the_next_question_stands_alone(browser, small_app,  # noqa: F811
                                                                                             tmp_path):
    page = open_page(browser, small_app.url, width=1440)
    # images no earlier test sent (none of their tiles cached): reading them takes a while
    fresh = [make_image(tmp_path / f"fresh{i}.png", (1500 + i + time.time_ns() % 89, 1100)) for i in range(2)]
    page.locator("#uploads input[type=file]").first.set_input_files([str(p) for p in fresh])
    page.locator("#uploads img").first.wait_for()
    ask(page, "Compare them.")
    page.wait_for_function("() => document.querySelector('#status').innerText.includes('reading the images')")
    page.locator(STOP).click()
    note = page.locator("#chat").get_by_text("Stopped before the answer began.")
    note.wait_for()
    assert "Error" not in page.locator("#chat").inner_text()
    time.sleep(0.5)
    set_number(page, "Max new tokens", 4)
    ask(page, "Hello?")
    users = page.locator("#chat [data-testid=user]")
    users.last.get_by_text("Hello?").wait_for()
    assert users.last.inner_text().strip() == "Hello?"  # its own bubble, not merged into the stopped one
    page.screenshot(path=str(ARTIFACTS / "ux-stopped-before.png"))
    page.close()


def test_the_api_page_lists_chat_first(page, app_server):
    page.get_by_text("Use via API").first.click()
    page.get_by_text("API name: /chat").first.wait_for()
    text = page.locator("body").inner_text()
    assert text.index("API name: /chat") < text.index("API name: /export")
    page.screenshot(path=str(ARTIFACTS / "ux-api-page.png"))


def test_files_are_checked_as_they_are_added_and_the_gallery_counts_them(page, app_server, tmp_path):
    renamed = tmp_path / "notes.png"
    renamed.write_text("a text file with an image's name")
    gallery = page.locator("#uploads input[type=file]").first
    gallery.set_input_files([str(ASSETS / "scene.jpg"), str(renamed)])
    toast(page, "notes.png is not an image this app can open")
    page.get_by_text(f"Images · 1 of {LIMITS.max_images_per_conversation} in this chat").wait_for()
    # the refused file is out (under load an upload's events cross, and it can show for a moment)
    page.wait_for_function("() => document.querySelectorAll('#uploads img').length === 1")
    page.get_by_text(f"Images · 1 of {LIMITS.max_images_per_conversation} in this chat").wait_for()
    page.screenshot(path=str(ARTIFACTS / "ux-refused-upload.png"))
    set_number(page, "Max new tokens", 4)
    ask(page, "What is this?")
    page.get_by_text(f"Images · 1 of {LIMITS.max_images_per_conversation} in this chat").wait_for()  # in the chat now
    assert "notes.png" not in page.locator("#chat").inner_text()


def test_the_chat_s_image_limit_refuses_the_one_too_many_as_it_is_added(page, app_server):
    gallery = page.locator("#uploads input[type=file]").first
    limit = LIMITS.max_images_per_conversation
    gallery.set_input_files([str(ASSETS / "chart.png")] * (limit - 1))
    page.get_by_text(f"Images · {limit - 1} of {limit} in this chat").wait_for()
    gallery.set_input_files([str(ASSETS / "scene.jpg"), str(ASSETS / "document.jpg")])
    toast(page, f"document.jpg was not added: a chat holds {limit} images and videos.")
    page.get_by_text(f"Images · {limit} of {limit} in this chat").wait_for()


def test_an_example_card_in_the_empty_chat_runs_when_clicked(page, app_server):
    set_number(page, "Max new tokens", 4)
    page.locator("#chat").get_by_text("Describe this picture in detail.").first.click()
    page.locator("#chat [data-testid=user]").get_by_text("Describe this picture in detail.").wait_for()
    page.wait_for_function("() => !document.querySelector('#export').disabled", timeout=60_000)
    assert page.locator("#chat [data-testid=bot]").count() >= 1


def test_the_export_records_what_each_answer_was_made_with(page, app_server):
    set_number(page, "Max new tokens", 4)
    set_number(page, "Temperature", 0)
    ask(page, "What is this?", ASSETS / "chart.png")
    answered(page, 1)
    assert "image tiles" in page.locator("#chat [data-testid=bot]").last.inner_text()  # the answer's line
    set_number(page, "Temperature", 1)
    set_number(page, "Max new tokens", 6)
    ask(page, "And now?")
    answered(page, 2)
    page.wait_for_function("() => !document.querySelector('#export').disabled")
    with page.expect_download() as download:
        page.locator("#export").click()
    data = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    first, second = (m["made_with"] for m in data["messages"] if m["role"] == "assistant")
    assert (first["settings"]["temperature"], first["settings"]["max_new_tokens"]) == (0.0, 4)
    assert (second["settings"]["temperature"], second["settings"]["max_new_tokens"]) == (1.0, 6)
    assert first["stats"]["image_tiles"] > 0 and first["stats"]["tokens"] <= 4
    assert first["model"] == app_server.model and first["system_prompt"] == data["system_prompt"]


def test_a_question_s_images_sit_in_one_compact_row(page, app_server):
    set_number(page, "Max new tokens", 4)
    page.locator("#uploads input[type=file]").first.set_input_files(
        [str(ASSETS / name) for name in ("scene.jpg", "chart.png", "document.jpg")])
    page.get_by_text(f"Images · 3 of {LIMITS.max_images_per_conversation} in this chat").wait_for()
    ask(page, "Compare them.")
    page.wait_for_function("() => !document.querySelector('#export').disabled", timeout=60_000)
    boxes = [img.bounding_box() for img in page.locator("#chat .user-row img").all()]
    tops = [b["y"] for b in boxes]
    assert len(boxes) == 3 and max(tops) - min(tops) < 30  # side by side, not stacked
    assert all(b["width"] <= 168 and b["height"] <= 120 for b in boxes)
    page.screenshot(path=str(ARTIFACTS / "ux-thumbnails.png"))


# A file handed to the message box as a browser hands it over: in a paste's clipboard, or in a drop.
HAND_OVER = """async ([b64, name, type, how]) => {
  const file = new File([Uint8Array.from(atob(b64), c => c.charCodeAt(0))], name, {type});
  const data = new DataTransfer(); data.items.add(file);
  const box = document.querySelector('#ask textarea');
  if (how === 'paste') {
    box.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
  } else {
    for (const kind of ['dragenter', 'dragover', 'drop'])
      box.dispatchEvent(new DragEvent(kind, {dataTransfer: data, bubbles: true, cancelable: true}));
  }
}"""


def hand_over(page, path: Path, how: str, type: str = "image/jpeg", name: str | None = None):
    page.evaluate(HAND_OVER, [base64.b64encode(path.read_bytes()).decode(), name or path.name, type, how])


def captions(page) -> list[str]:
    return page.locator("#gallery .caption-label").all_inner_texts()


def wait_for_captions(page, expected: list[str]):
    try:
        page.wait_for_function("want => JSON.stringify([...document.querySelectorAll('#gallery .caption-label')]"
                               ".map(c => c.innerText)) === want", arg=json.dumps(expected, separators=(",", ":")),
                               timeout=10_000)
    except Exception:
        assert captions(page) == expected  # says what the gallery shows instead


def test_images_pasted_dropped_or_attached_in_the_message_box_join_the_gallery_numbered(page, app_server, tmp_path):
    limit = LIMITS.max_images_per_conversation
    page.locator("#ask textarea").fill("Compare")
    hand_over(page, ASSETS / "scene.jpg", "paste")
    wait_for_captions(page, ["Image 1"])
    hand_over(page, ASSETS / "chart.png", "drop", "image/png")
    wait_for_captions(page, ["Image 1", "Image 2"])
    page.locator("#ask input[type=file]").set_input_files(str(ASSETS / "document.jpg"))  # the paperclip
    wait_for_captions(page, ["Image 1", "Image 2", "Image 3"])
    page.get_by_text(f"Images · 3 of {limit} in this chat").wait_for()
    renamed = tmp_path / "notes.jpg"
    renamed.write_text("a text file with an image's name")
    hand_over(page, renamed, "paste")
    toast(page, "notes.jpg is not an image this app can open")
    time.sleep(1)  # the box reports a file twice: one toast all the same
    assert page.locator(".toast-body").filter(has_text="notes.jpg").count() == 1
    assert page.locator("#ask textarea").input_value() == "Compare"  # the text stays as typed
    page.screenshot(path=str(ARTIFACTS / "ux-attached.png"))
    page.locator("#gallery .delete-button").nth(1).click()  # removed before sending: the rest renumbered
    wait_for_captions(page, ["Image 1", "Image 2"])
    page.get_by_text(f"Images · 2 of {limit} in this chat").wait_for()
    set_number(page, "Max new tokens", 4)
    page.locator("#ask textarea").fill("Compare them.")
    page.locator("#ask textarea").press("Enter")
    answered(page, 1)
    assert page.locator("#chat [data-testid=user] img").count() == 2
    hand_over(page, ASSETS / "scene.jpg", "paste")
    wait_for_captions(page, ["Image 3"])  # numbered over the chat's images, after its two
    page.get_by_text(f"Images · 3 of {limit} in this chat").wait_for()
    page.locator("#ask textarea").fill("And this one?")
    page.evaluate("() => document.querySelectorAll('.toast-wrap').forEach(t => t.remove())")
    page.screenshot(path=str(ARTIFACTS / "ux-numbered.png"))  # README's screenshot


def test_a_video_in_the_message_box_takes_the_video_slot(page, app_server):
    page.locator("#ask input[type=file]").set_input_files(str(ASSETS / "ball.mp4"))
    page.locator("#uploads video").wait_for()
    assert captions(page) == []


def test_likes_and_dislikes_are_kept_in_the_export(page, app_server):
    set_number(page, "Max new tokens", 4)
    ask(page, "Hi")
    answered(page, 1)
    ask(page, "Again")
    answered(page, 2)
    page.locator("#chat").get_by_label("Like", exact=True).first.click()
    page.locator("#chat").get_by_label("Dislike", exact=True).last.click()
    time.sleep(1)
    page.wait_for_function("() => !document.querySelector('#export').disabled")
    with page.expect_download() as download:
        page.locator("#export").click()
    data = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert [m.get("rating") for m in data["messages"] if m["role"] == "assistant"] == ["like", "dislike"]


def test_on_a_phone_the_settings_start_folded_and_open_on_a_tap(browser, app_server):  # noqa: F811
    wide = open_page(browser, app_server.url, width=1440)
    wide.get_by_text("Max tiles per image").wait_for()  # shown (on a busy machine, drawn a little later)
    wide.close()
    phone = open_page(browser, app_server.url, width=390, height=844)
    phone.get_by_text("Max tiles per image").wait_for(state="hidden")
    assert phone.locator("#chat").bounding_box()["y"] < 844  # the chat in view, the settings below it
    phone.screenshot(path=str(ARTIFACTS / "ux-phone-folded.png"))
    phone.locator("#settings").get_by_text("Settings").first.click()
    phone.get_by_text("Max tiles per image").wait_for()
    phone.close()


def test_the_frames_a_video_answer_read_show_with_their_times(page, app_server):
    set_number(page, "Max new tokens", 4)
    set_number(page, "Video frames", 4)
    page.locator("#uploads input[type=file]").last.set_input_files(str(ASSETS / "ball.mp4"))
    page.locator("#uploads video").wait_for()
    ask(page, "What happens?")
    answered(page, 1)
    row = page.locator("#frames")
    row.get_by_text("Video frames the last answer read").click()
    page.wait_for_function("() => document.querySelectorAll('#frames .caption-label').length === 4")
    shown = page.locator("#frames .caption-label").all_inner_texts()
    assert [s.split(" · ")[0] for s in shown] == ["Frame 1", "Frame 2", "Frame 3", "Frame 4"]
    times = [float(s.split(" · ")[1].removesuffix(" s")) for s in shown]
    assert times == sorted(times) and times[0] >= 0
    assert "4 video frames" in page.locator("#chat [data-testid=bot]").last.inner_text()
    page.screenshot(path=str(ARTIFACTS / "ux-frames.png"))


LIVE_TEXTS = """window.__live = [];
new MutationObserver(changes => {
  for (const change of changes) {
    const node = change.target.nodeType === 1 ? change.target : change.target.parentElement;
    const live = node && node.closest('[aria-live]');
    if (live) window.__live.push(live.innerText);
  }
}).observe(document, {subtree: true, childList: true, characterData: true});"""


def test_the_screen_reader_region_reads_words_not_translation_keys(browser, app_server):  # noqa: F811
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.add_init_script(LIVE_TEXTS)  # every text the page's live regions held, from the first paint
    page.goto(app_server.url)
    page.locator("#ask textarea").wait_for()
    set_number(page, "Max new tokens", 4)
    ask(page, "Hi", ASSETS / "chart.png")
    answered(page, 1)
    page.wait_for_function("() => !document.querySelector('#export').disabled")
    time.sleep(6)  # gradio's announcer holds each message until 5 s after the one before
    read = page.evaluate("() => window.__live")
    assert read and not [text for text in read if "common." in text or "errors." in text]
    page.close()


@pytest.fixture(scope="module")
def menu_app(tmp_path_factory, tiny_checkpoint):
    """A menu of two: the tiny model (loaded) and a `small` one in four shards, not loaded yet."""
    from eagle_demo.tiny import write_tiny_checkpoint
    from tests.conftest import launched_app

    folder = tmp_path_factory.mktemp("menu")
    sharded = write_tiny_checkpoint(folder / "small-a", size="small", shards=4)
    with launched_app(f"{tiny_checkpoint},{sharded}") as app:
        yield app


def test_loading_shows_its_stages_and_covers_nothing(browser, menu_app):  # noqa: F811
    page = open_page(browser, menu_app.url, width=1440)
    page.evaluate(RECORD_STATUS)
    set_number(page, "Max new tokens", 4)
    page.get_by_label("Model").click()
    page.get_by_role("option", name="small-a").click()
    ask(page, "Hi")
    page.wait_for_function("() => window.stages.some(s => s.includes('shard'))")
    overlays = page.evaluate("() => [...document.querySelectorAll('#chat [data-testid=status-tracker]')]"
                             ".filter(t => !t.classList.contains('hide')).length")
    answered(page, 1)
    stages = page.evaluate("() => window.stages")
    loading = [s for s in stages if "small-a on cpu" in s and "%" in s]
    assert [s.split(": ", 2)[-1].split(" (")[0] for s in loading if "shard" in s] == [
        f"shard {k} of 4" for k in range(1, 5)]
    percents = [int(s.rsplit("(", 1)[1].rstrip("%)")) for s in stages if s.endswith("%)")]
    assert percents == sorted(percents) and any("preparing the decoder" in s for s in stages)
    said = [s.split("\n\n")[-1] for s in stages]  # without gradio's own "queue: 1/1 | 0.1s" line before it
    assert not [s for s in said if "/" in s.replace("tokens/s", "")]  # no folder, ever: the model's name
    assert overlays == 0  # the one indicator is the status line: nothing over the chat
    page.screenshot(path=str(ARTIFACTS / "ux-loaded-menu.png"))
    page.close()


def test_stop_ends_an_answer_begun_from_an_example_card(small_page, small_app):  # noqa: F811
    seen = len(small_app.recorder.generations)
    small_page.locator("#chat").get_by_text("What happens in this video?").first.click()
    small_page.wait_for_function("() => document.querySelectorAll('#chat [data-testid=bot]').length > 0")
    deadline = time.monotonic() + 30  # the bubble shows the video being read before the decode begins
    while len(small_app.recorder.generations) <= seen and time.monotonic() < deadline:
        time.sleep(0.05)
    generation = small_app.recorder.generations[seen]
    small_page.locator(STOP).click()
    assert generation.cancel.wait(timeout=10), "Stop did not cancel the decode"
    deadline = time.monotonic() + 10
    while generation.finish_reason is None and time.monotonic() < deadline:  # the step it is on ends first
        time.sleep(0.05)
    assert generation.finish_reason == "cancelled" and len(generation.token_ids) < 4096
