"""Broken and hostile inputs, sent to the real app over HTTP on a tiny checkpoint.

Every item of the corpus (made here, no third-party files) is either answered or refused with a
clear message, quickly; nothing crashes, no thread or memory is left behind, and the next normal
request is answered.
"""

from __future__ import annotations

import gc
import threading
import time

import httpx
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from eagle_demo.config import LIMITS
from tests.conftest import rss, threads_left_behind
from tests.media_factory import (
    make_bomb_png,
    make_corrupt_file,
    make_exif_rotated_photo,
    make_frameless_video,
    make_gif_js_polyglot,
    make_image,
    make_long_gif,
    make_mp4_with_duration,
    make_polyglot,
    make_truncated_copy,
    make_video,
)

# Random weights, sampled with a fixed seed: a few visible tokens, the same on every run.
QUICK = dict(temperature=1.0, top_p=1.0, top_k=0, seed=0, max_tiles=2, num_frames=4, max_new_tokens=8)
ANSWERED = None  # an item's expected outcome: answered, or refused with a message matching the text


def _cut(make, name: str, keep: float = 0.5):
    return lambda d: make_truncated_copy(make(d / f"whole-{name}"), d / name, keep)


# name -> (what to send: message / images / video, each made in a folder; the expected outcome)
CORPUS = {
    "decompression bomb": (dict(images=[lambda d: make_bomb_png(d / "bomb.png")]), "bomb.png is 108 megapixels"),
    "truncated jpeg": (dict(images=[_cut(lambda p: make_image(p, (640, 480)), "cut.jpg")]), "cut.jpg is truncated"),
    "truncated png": (dict(images=[_cut(lambda p: make_image(p, (640, 480)), "cut.png")]), "cut.png is truncated"),
    "zero bytes": (dict(images=[lambda d: make_corrupt_file(d / "empty.png", b"")]), "empty.png is empty"),
    "text named .png": (dict(images=[lambda d: make_corrupt_file(d / "notes.png")]), "notes.png is not an image"),
    "png with zip and html": (dict(images=[lambda d: make_polyglot(d / "poly.png")]), ANSWERED),
    "gif/js polyglot": (dict(images=[lambda d: make_gif_js_polyglot(d / "poly.gif")]), "poly.gif is"),
    "cmyk jpeg": (dict(images=[lambda d: make_image(d / "cmyk.jpg", mode="CMYK")]), ANSWERED),
    "16-bit png": (dict(images=[lambda d: make_image(d / "grey16.png", mode="I;16")]), ANSWERED),
    "rgba png": (dict(images=[lambda d: make_image(d / "rgba.png", mode="RGBA", transparent=True)]), ANSWERED),
    "palette png": (dict(images=[lambda d: make_image(d / "p.png", mode="P", transparent=True)]), ANSWERED),
    "grey+alpha png": (dict(images=[lambda d: make_image(d / "la.png", mode="LA", transparent=True)]), ANSWERED),
    "exif-rotated photo": (dict(images=[lambda d: make_exif_rotated_photo(d / "rotated.jpg")]), ANSWERED),
    "1x20000 strip": (dict(images=[lambda d: make_image(d / "strip.png", (1, 20000))]), ANSWERED),
    "gif of 1000 frames": (dict(images=[lambda d: make_long_gif(d / "long.gif")]), ANSWERED),
    "corrupt mp4": (dict(video=lambda d: make_corrupt_file(d / "noise.mp4", b"\0\0\0\x18ftypmp42" + bytes(256) * 8)),
                    "noise.mp4 is not a video"),
    "mp4 without frames": (dict(video=lambda d: make_frameless_video(d / "none.mp4")), "none.mp4 has no readable"),
    "truncated mp4": (dict(video=_cut(lambda p: make_video(p, frames=30), "cut.mp4", 0.6)), "cut.mp4"),
    # the sample table's real length counts, not the header's claim
    "mp4 claiming 2**62 ticks": (dict(video=lambda d: make_mp4_with_duration(d / "forever.mp4",
                                                                         make_video(d / "clip.mp4"), 2**62)), ANSWERED),
    "8k mp4": (dict(video=lambda d: make_video(d / "8k.mp4", frames=2, size=(7680, 4320))), "8k.mp4 is 7680x4320"),
    "over-long prompt": (dict(message="why? " * (LIMITS.max_prompt_chars // 5 + 1)), "characters long"),
    "over-long system prompt": (dict(system="Be brief. " * (LIMITS.max_prompt_chars // 10 + 1)),
                                "system prompt is"),
    "5 MB of history": (dict(history=[{"role": "user", "content": "word " * 1_000_000},
                                      {"role": "assistant", "content": "ok"}]), "conversation is too long"),
    "10,000 messages": (dict(history=[{"role": role, "content": "a"} for _ in range(5_000)
                                      for role in ("user", "assistant")]), "conversation is too long"),
    "too many images": (dict(images=[lambda d: make_image(d / "many.png")] * (LIMITS.max_images_per_conversation + 1)),
                        f"the limit is {LIMITS.max_images_per_conversation}"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, dict]:
    """The corpus made on disk: name -> {message, images (paths), video (path), history, system}."""
    d = tmp_path_factory.mktemp("hostile")
    made = {}
    for name, (spec, _) in CORPUS.items():
        made[name] = {"message": spec.get("message", "What is this?"), "history": spec.get("history", []),
                      "system": spec.get("system", "You are a helpful assistant."),
                      "images": [make(d) for make in spec.get("images", [])],
                      "video": spec["video"](d) if "video" in spec else None}
    return made


def send(client, request: dict) -> tuple[str | None, str | None, float]:
    """(answer, error message, seconds) for one request, uploads included."""
    images = [handle_file(str(p)) for p in request["images"]]
    video = handle_file(str(request["video"])) if request["video"] else None
    start = time.monotonic()
    try:
        answer = client.predict(request["message"], images, video, request["history"], request["system"], **QUICK,
                                api_name="/chat")
        return answer, None, time.monotonic() - start
    except AppError as e:
        return None, str(e), time.monotonic() - start


def test_the_page_shows_every_limit_a_user_meets(app_server):
    config = httpx.get(app_server.url + "config").json()
    line = next(c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == "limits")
    for shown in (f"{LIMITS.max_upload_mb} MB", f"{LIMITS.max_image_pixels / 1e6:.0f} MP",
                  f"{LIMITS.max_images_per_conversation} images", f"{LIMITS.max_video_frames} sampled frames",
                  f"{LIMITS.max_prompt_chars:,} characters", f"{LIMITS.context_tokens:,} tokens"):
        assert shown in line
    assert config["max_file_size"] == LIMITS.max_upload_mb * 2**20  # the upload limit gradio enforces


def test_an_over_size_upload_is_refused_with_a_clear_message(client, app_server, tmp_path):
    big = tmp_path / "huge.png"
    with open(big, "wb") as f:
        f.truncate((LIMITS.max_upload_mb + 1) * 2**20)  # sparse: no disk or time spent
    with open(big, "rb") as f:  # the server refuses it however it is sent
        response = httpx.post(app_server.url + "gradio_api/upload", files={"files": ("huge.png", f)})
    assert response.status_code == 413 and "maximum allowed size" in response.text
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # gradio_client checks first
        client.predict("What is this?", [handle_file(str(big))], api_name="/chat")


@pytest.mark.parametrize("name", CORPUS)
def test_hostile_input_is_answered_or_refused_clearly(client, app_server, corpus, name):
    """Answered, or refused before the model runs, in words that say what to change. The time it
    took is printed (the issue asked for 2 s; a busy machine's times are not asserted)."""
    handed_out = len(app_server.recorder.generations)
    answer, error, seconds = send(client, corpus[name])
    print(f"{name}: {seconds:.2f} s, {'answered' if error is None else error}")
    expected = CORPUS[name][1]
    if expected is ANSWERED:
        assert error is None and answer.strip()
        request = corpus[name]  # every image and sampled frame reached the model
        visuals = len(request["images"]) + (QUICK["num_frames"] if request["video"] else 0)
        assert len(app_server.recorder.generations[-1].num_tiles) == visuals
    else:
        assert error is not None and expected in error
        assert "Traceback" not in error and "/tmp/" not in error and len(error) < 300
        assert len(app_server.recorder.generations) == handed_out  # no prefill, no decode
    normal = client.predict("Hello", **QUICK, api_name="/chat")
    assert normal.strip()


def test_the_corpus_leaves_no_thread_or_memory_behind(client, app_server, corpus):
    """Client and server share this process, so both sides' threads and memory are counted. RSS
    keeps the high-water mark of past requests (the allocator holds on to what they freed) and
    settles over a few runs, hence two warm-up runs and a bound (not zero) on what follows."""
    def run_corpus():
        for request in corpus.values():
            send(client, request)

    for _ in range(2):
        run_corpus()
    gc.collect()
    threads, memory = set(threading.enumerate()), rss()
    for _ in range(3):
        run_corpus()
    gc.collect()
    left = threads_left_behind(threads, pools=(client.executor, client.helper_executor))
    grown = (rss() - memory) / 2**20
    print(f"threads left behind: {left}; RSS {memory / 2**20:.0f} MB, grown by {grown:.0f} MB over 3 runs of "
          f"{len(corpus)} requests")
    assert not left
    assert grown < 150


def test_distinct_uploads_keep_the_image_cache_within_its_budget(client, app_server, tmp_path):
    """Each image is 25 tiles, 15 MB: a cache counted in entries would keep all ten (150 MB)."""
    from eagle_demo.media_cache import PIXEL_CACHE_BYTES, visuals_of

    cache = app_server.engine.media.pixels
    for i in range(10):
        image = make_image(tmp_path / f"distinct{i}.png", (1800 + i, 1200))
        assert client.predict("What is this?", [handle_file(str(image))], **{**QUICK, "max_tiles": 24},
                              api_name="/chat").strip()
    visuals = [v for entry in cache.values() for v in visuals_of(entry)]
    held_bytes = sum(v.pixel_values.nbytes for v in visuals)  # counted here, not by the cache's bookkeeping
    print(f"image cache: {held_bytes / 2**20:.0f} MB in {len(cache)} entries")
    assert 0 < held_bytes <= PIXEL_CACHE_BYTES
