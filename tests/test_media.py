import hashlib
from dataclasses import replace
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from eagle_demo import media
from eagle_demo.config import LIMITS
from eagle_demo.media import MediaError, file_digest, image_size, open_image, sample_indices, sample_video
from tests.media_factory import (
    frame_index,
    make_animated_gif,
    make_corrupt_file,
    make_frameless_video,
    make_image,
    make_truncated_copy,
    make_video,
    understate_mp4_duration,
)

WHITE = (255, 255, 255)
RED = (255, 0, 0)


def pixel(img, x, y):
    return tuple(int(c) for c in img.getpixel((x, y)))


# ---------------------------------------------------------------------------------------------
# Images


def test_rgb_png_is_returned_unchanged(tmp_path):
    path = make_image(tmp_path / "a.png", (64, 48))
    img = open_image(path)
    assert img.mode == "RGB" and img.size == (64, 48)
    assert np.array_equal(np.asarray(img), np.asarray(Image.open(path)))


@pytest.mark.parametrize(
    ("name", "mode", "transparent"),
    [
        ("rgba.png", "RGBA", True),
        ("la.png", "LA", True),
        ("p.png", "P", False),
        ("p_transparent.png", "P", True),
        ("p_transparent.gif", "P", True),
        ("l.png", "L", False),
        ("bilevel.png", "1", False),
        ("cmyk.jpg", "CMYK", False),
        ("grey16.png", "I;16", False),
        ("grey32.tif", "I", False),
    ],
)
def test_every_mode_becomes_rgb(tmp_path, name, mode, transparent):
    path = make_image(tmp_path / name, (64, 48), mode, transparent=transparent)
    img = open_image(path)
    assert img.mode == "RGB" and img.size == (64, 48)
    if transparent:
        assert pixel(img, 60, 44) == WHITE  # composited on white
        assert pixel(img, 2, 2) != WHITE  # the opaque corner is kept
    if mode not in ("L", "LA", "1", "I;16", "I"):
        assert pixel(img, 2, 2) == pytest.approx(RED, abs=12)


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    path = make_image(tmp_path / "grey16.png", (64, 48), "I;16")
    assert Image.open(path).mode == "I;16"
    expected = np.asarray(Image.open(make_image(tmp_path / "grey8.png", (64, 48), "L")))
    got = np.asarray(open_image(path))
    assert np.array_equal(got[..., 0], expected) and np.array_equal(got[..., 2], expected)
    assert got.max() == 255 and len(np.unique(got)) > 100


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = make_image(tmp_path / "rotated.jpg", (64, 48), exif=exif, quality=95)
    img = open_image(path)
    assert img.size == (48, 64)
    assert pixel(img, 46, 2) == pytest.approx(RED, abs=12)  # the stored top-left is now top-right
    assert image_size(path) == (48, 64)


def test_animated_gif_gives_its_first_frame(tmp_path):
    path = make_animated_gif(tmp_path / "anim.gif", colors=(RED, (0, 0, 255)))
    img = open_image(path)
    assert img.mode == "RGB" and pixel(img, 5, 5) == RED


def test_min_size_decodes_a_jpeg_at_reduced_scale(tmp_path):
    path = make_image(tmp_path / "big.jpg", (800, 600))
    assert open_image(path, min_size=(300, 200)).size == (400, 300)
    assert open_image(path, min_size=(500, 200)).size == (800, 600)
    png = make_image(tmp_path / "big.png", (800, 600))
    assert open_image(png, min_size=(100, 100)).size == (800, 600)


def test_min_size_follows_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = make_image(tmp_path / "tall.jpg", (800, 400), exif=exif)
    # displayed 400x800; (150, 390) allows halving it, the unrotated (390, 150) would not fit
    assert open_image(path, min_size=(150, 390)).size == (200, 400)


def make_bilevel_png(path, size):
    Image.new("1", size).save(path)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: make_corrupt_file(d / "empty.png", b""), "empty.png is empty."),
        (lambda d: make_corrupt_file(d / "notes.png"),
         "notes.png is not an image this app can open; send a JPEG, PNG, GIF, WebP, BMP, TIFF or AVIF image."),
        (
            lambda d: make_truncated_copy(make_image(d / "x.jpg", (640, 480)), d / "cut.jpg", 0.5),
            "cut.jpg is truncated or corrupt.",
        ),
        (
            lambda d: make_truncated_copy(make_image(d / "x.png", (640, 480)), d / "cut.png", 0.5),
            "cut.png is truncated or corrupt.",
        ),
        (
            lambda d: make_bilevel_png(d / "bomb.png", (12000, 9000)),
            "bomb.png is 108 megapixels; the limit is 40.",
        ),
        (
            lambda d: make_bilevel_png(d / "line.png", (25000, 2)),
            "line.png is 25000x2 pixels; the longest side may be 20000.",
        ),
    ],
)
def test_bad_images_raise_a_clear_media_error(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(MediaError) as error:
        open_image(path)
    assert str(error.value) == message
    if "truncated" not in message:  # found in the header
        with pytest.raises(MediaError):
            image_size(path)


def test_pillows_own_bomb_limit_becomes_a_media_error(tmp_path):
    path = make_bilevel_png(tmp_path / "huge.png", (15000, 12000))  # over twice Pillow's limit
    with pytest.raises(MediaError, match=r"^huge.png is over 179 megapixels; the limit is 40\.$"):
        open_image(path)


def test_upload_size_limit(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (600, 1000, 3), dtype=np.uint8)
    path = tmp_path / "noise.png"
    Image.fromarray(noise).save(path)
    with pytest.raises(MediaError, match=r"^noise.png is 2 MB; the limit is 1 MB\.$"):
        open_image(path, replace(LIMITS, max_upload_mb=1))


def test_missing_file(tmp_path):
    with pytest.raises(MediaError, match="could not be found"):
        open_image(tmp_path / "gone.png")


def test_file_digest(tmp_path):
    path = make_image(tmp_path / "a.png")
    assert file_digest(path) == hashlib.sha1(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Videos


def test_sample_indices_follow_the_upstream_rule():
    assert sample_indices(20, 4) == [2, 7, 12, 16]
    assert sample_indices(6, 2) == [1, 3]  # 2.5 rounds to 2 (half to even), not 3
    assert sample_indices(100, 1) == [49]
    assert sample_indices(5, 8) == [0, 0, 1, 2, 2, 2, 3, 4]  # short clips repeat frames


def test_known_clip(tmp_path):
    path = make_video(tmp_path / "clip.mp4", frames=20, fps=10)
    clip = sample_video(path, 4)
    assert [frame_index(f) for f in clip.frames] == [2, 7, 12, 16]
    assert clip.timestamps == pytest.approx([0.2, 0.7, 1.2, 1.6])
    assert clip.fps == 10 and clip.duration == pytest.approx(2.0)
    assert all(f.mode == "RGB" and f.size == (64, 48) for f in clip.frames)


def test_a_container_without_frame_count_is_counted(tmp_path):
    path = make_video(tmp_path / "clip.mkv", frames=20, fps=10)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    clip = sample_video(path, 4)
    assert [frame_index(f) for f in clip.frames] == [2, 7, 12, 16]
    assert clip.timestamps == pytest.approx([0.2, 0.7, 1.2, 1.6])


def test_frame_count_is_capped_by_the_limit(tmp_path):
    path = make_video(tmp_path / "clip.mp4", frames=20)
    clip = sample_video(path, 16, replace(LIMITS, max_video_frames=3))
    assert [frame_index(f) for f in clip.frames] == sample_indices(20, 3)


def test_display_rotation_is_applied(tmp_path):
    path = make_video(tmp_path / "portrait.mp4", frames=3, size=(64, 48), rotation=90)
    frame = sample_video(path, 1).frames[0]
    assert frame.size == (48, 64)
    assert pixel(frame, 2, 62) == pytest.approx(WHITE, abs=16)  # top-left turned counter-clockwise
    assert pixel(frame, 2, 2) != pytest.approx(WHITE, abs=16)


def test_seeking_picks_the_same_frames_as_decoding_straight(tmp_path, monkeypatch):
    path = make_video(tmp_path / "long.mp4", frames=90, fps=30, keyframe_interval=12)
    straight = sample_video(path, 5)
    monkeypatch.setattr(media, "SEEK_GAP_FRAMES", 2)
    seeking = sample_video(path, 5)
    assert [frame_index(f) for f in seeking.frames] == [frame_index(f) for f in straight.frames]
    assert [frame_index(f) for f in straight.frames] == sample_indices(90, 5)
    assert seeking.timestamps == straight.timestamps


def test_frames_missing_behind_the_header_are_not_sampled(tmp_path):
    path = make_video(tmp_path / "x.mp4", frames=60, keyframe_interval=5, faststart=True)
    path = make_truncated_copy(path, tmp_path / "cut.mp4", 0.8)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 60
        decodable = 0
        with pytest.raises(av.InvalidDataError):  # where the data stops
            for _ in container.decode(video=0):
                decodable += 1
    assert 10 < decodable < 60
    clip = sample_video(path, 4)
    assert [frame_index(f) for f in clip.frames] == sample_indices(decodable, 4)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: make_frameless_video(d / "none.mp4"), "none.mp4 has no readable video stream."),
        (lambda d: make_corrupt_file(d / "notes.mp4"), "notes.mp4 is not a video PyAV can read."),
        (
            lambda d: make_truncated_copy(make_video(d / "x.mp4", frames=30), d / "cut.mp4", 0.6),
            "cut.mp4 has no readable video stream.",
        ),
        (lambda d: make_corrupt_file(d / "empty.mp4", b""), "empty.mp4 is empty."),
        (lambda d: make_image(d / "still.png", (64, 48)), "still.png is not a video file"),
    ],
)
def test_bad_videos_raise_a_clear_media_error(tmp_path, make, message):
    with pytest.raises(MediaError) as error:
        sample_video(make(tmp_path), 4)
    assert str(error.value).startswith(message)


def test_video_limits(tmp_path):
    path = make_video(tmp_path / "clip.mp4", frames=20, size=(64, 48), fps=10)
    with pytest.raises(MediaError, match=r"^clip.mp4 is 64x48 \(0.0 megapixels per frame\); the limit is 0.0\.$"):
        sample_video(path, 4, replace(LIMITS, max_video_pixels=1000))
    with pytest.raises(MediaError, match=r"^clip.mp4 lasts 0:00:02 \(h:mm:ss\); the limit is 0:00:01\.$"):
        sample_video(path, 4, replace(LIMITS, max_video_seconds=1.0))
    with pytest.raises(ValueError):
        sample_video(path, 0)


def test_a_video_over_a_day_long_is_refused_in_hours(tmp_path):
    path = make_video(tmp_path / "slow.mp4", frames=20, fps=Fraction(1, 5000))  # a frame every 83 minutes
    with pytest.raises(MediaError, match=r"^slow.mp4 lasts 27:46:40 \(h:mm:ss\); the limit is 4:00:00\.$"):
        sample_video(path, 4)


def test_a_header_that_understates_the_length_is_not_believed(tmp_path):
    path = understate_mp4_duration(make_video(tmp_path / "long.mp4", frames=1000, size=(16, 16), fps=10))
    with av.open(str(path)) as container:  # the header says 10 s; the stream holds 100
        assert float(container.streams.video[0].duration * container.streams.video[0].time_base) == 10.0
    with pytest.raises(MediaError, match=r"^long.mp4 lasts 0:01:40 \(h:mm:ss\); the limit is 0:01:00\.$"):
        sample_video(path, 4, replace(LIMITS, max_video_seconds=60.0))
    assert sample_video(path, 4).duration == pytest.approx(100.0, abs=0.2)


def test_decord_reads_the_same_frames_as_pyav(tmp_path):
    """decord is optional (used when installed): its frames and times must equal PyAV's."""
    pytest.importorskip("decord")
    path = make_video(tmp_path / "clip.mp4", frames=40, fps=10)
    indices = media.sample_indices(40, 5)
    fast, plain = media._decode_with_decord(path, indices, 40), media._decode_straight(path, indices, 10)
    assert [frame_index(img) for img, _ in fast] == [frame_index(img) for img, _ in plain] == [4, 12, 19, 27, 35]
    assert [round(t, 3) for _, t in fast] == [round(t, 3) for _, t in plain]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (a, _), (b, _) in zip(fast, plain))
    rotated = make_video(tmp_path / "rotated.mp4", frames=10, rotation=90)
    assert media._decode_with_decord(rotated, [1, 5], 10) is None  # PyAV handles the display matrix


def test_frames_resized_while_decoding_tile_exactly_as_full_frames(tmp_path):
    from eagle_demo.preprocessing import tile_image

    path = make_video(tmp_path / "clip.mp4", frames=12, size=(160, 96), fps=6, rotation=90)
    full, small = sample_video(path, 4), sample_video(path, 4, frame_size=(448, 448))
    assert [img.size for img in small.frames] == [(448, 448)] * 4 and full.frames[0].size == (96, 160)
    assert small.timestamps == full.timestamps
    for a, b in zip(full.frames, small.frames):
        assert torch.equal(tile_image(a, 1, 448, False), tile_image(b, 1, 448, False))
