import numpy as np
import pytest
import torch
from PIL import Image

from eagle_demo.media import image_size, open_image
from eagle_demo.preprocessing import (
    candidate_grids,
    choose_grid,
    count_tiles,
    fit_tiles_to_context,
    tile_image,
    tile_image_reference,
)
from tests.media_factory import make_photo

S = 448  # Eagle2's tile size, as its config says; a parameter everywhere in the code


def picture(size, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR).convert(mode)


def test_candidate_grids_keep_the_official_order():
    # sorted by tile count; equal counts stay in CPython's set order, as in the official code
    assert candidate_grids(1, 6) == [
        (1, 1),
        (1, 2), (2, 1),
        (3, 1), (1, 3),
        (4, 1), (1, 4), (2, 2),
        (1, 5), (5, 1),
        (6, 1), (2, 3), (1, 6), (3, 2),
    ]  # fmt: skip
    assert candidate_grids(1, 1) == [(1, 1)]
    assert candidate_grids(2, 2) == [(1, 2), (2, 1)]


def official_triple_loop(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """The official construction, as its source writes it (cubic in max_tiles)."""
    grids = {(i, j) for n in range(min_tiles, max_tiles + 1) for i in range(1, n + 1) for j in range(1, n + 1)
             if min_tiles <= i * j <= max_tiles}
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def test_candidate_grids_equal_the_official_loop_in_order_and_stay_small_for_any_bound():
    for max_tiles in range(1, 41):
        for min_tiles in range(1, max_tiles + 1):
            assert candidate_grids(min_tiles, max_tiles) == official_triple_loop(min_tiles, max_tiles)
    assert len(candidate_grids(1, 20_000)) == sum(20_000 // i for i in range(1, 20_001))  # d(1) + ... + d(20000)
    assert len(candidate_grids(1, 12)) == 35 and candidate_grids(1, 12)[-1][0] * candidate_grids(1, 12)[-1][1] == 12


# Expected grids worked out by hand from score = min(tiles*S*S/(W*H), 0.6) * min(r/a, a/r)
# with a = W/H, r = cols/rows; the first strictly greater score wins.
@pytest.mark.parametrize(
    ("size", "max_tiles", "grid"),
    [
        ((448, 448), 1, (1, 1)),
        ((448, 448), 12, (1, 1)),  # (2,2), (3,3) tie at the 0.6 cap: the first stays
        ((1000, 1000), 12, (2, 2)),  # 0.6 beats (1,1)'s 0.20; (3,3) only ties
        ((896, 448), 12, (2, 1)),  # (4,2) ties at the cap
        ((100, 50), 12, (2, 1)),  # small images still get their aspect's grid
        ((4000, 3000), 1, (1, 1)),
        ((4000, 3000), 6, (3, 2)),  # 6u*0.889 beats (2,2)'s 4u*0.75 (u = S*S/(W*H))
        ((4000, 3000), 12, (4, 3)),  # exact aspect, 12u
        ((4000, 3000), 24, (6, 4)),  # 24u*0.889 = 21.3u beats (5,4)'s 20u*0.9375 = 18.75u
        ((3000, 4000), 12, (3, 4)),
        ((1920, 1080), 6, (3, 2)),
        ((1920, 1080), 12, (4, 2)),  # 0.6*0.889 beats (4,3)'s 0.6*0.75 and (3,2)'s 0.58*0.84
        ((1, 20000), 1, (1, 1)),
        ((1, 20000), 6, (1, 6)),  # every grid is at the cap: the tallest wins
        ((1, 20000), 12, (1, 12)),
        ((1, 20000), 24, (1, 24)),
        ((20000, 1), 24, (24, 1)),
    ],
)
def test_choose_grid(size, max_tiles, grid):
    assert choose_grid(*size, 1, max_tiles, S) == grid


def test_choose_grid_breaks_ties_by_candidate_order():
    # (1,2) and (2,1) score the same for a square; the official set order puts (1,2) first
    assert choose_grid(1000, 1000, 2, 2, S) == (1, 2)


def test_choose_grid_scales_with_the_tile_size():
    assert choose_grid(1000, 1000, 1, 12, 224) == (3, 3)  # 9 small tiles reach the 0.6 cap, (2,2) does not


@pytest.mark.parametrize(
    ("size", "max_tiles", "use_thumbnail", "tiles"),
    [
        ((896, 448), 12, True, 3),  # 2 tiles + thumbnail
        ((896, 448), 12, False, 2),
        ((4000, 3000), 12, True, 13),
        ((448, 448), 12, True, 1),  # a single tile gets no thumbnail
        ((4000, 3000), 1, True, 1),
    ],
)
def test_tile_count_and_thumbnail(size, max_tiles, use_thumbnail, tiles):
    img = picture(size)
    pixels = tile_image(img, max_tiles, S, use_thumbnail)
    assert pixels.shape == (tiles, 3, S, S) and pixels.dtype == torch.float32
    assert count_tiles(*size, max_tiles, S, use_thumbnail) == tiles
    if tiles > 1 and use_thumbnail:
        whole = np.asarray(img.resize((S, S), Image.Resampling.BICUBIC), dtype=np.float32)
        expected = torch.from_numpy(whole).permute(2, 0, 1) / 255 * 2 - 1
        assert torch.allclose(pixels[-1], expected, atol=1e-6)


def test_tiles_are_row_major_and_normalised():
    img = Image.new("RGB", (2 * S, 2 * S))
    for i, color in enumerate([(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        img.paste(color, (i % 2 * S, i // 2 * S, (i % 2 + 1) * S, (i // 2 + 1) * S))
    pixels = tile_image(img, 4, S, use_thumbnail=False)
    centres = pixels[:, :, S // 2, S // 2]
    assert centres.tolist() == [[-1, -1, -1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]


@pytest.mark.parametrize(
    ("size", "max_tiles", "mode", "tile_size"),
    [
        ((4000, 3000), 12, "RGB", S),
        ((1000, 700), 6, "RGB", S),
        ((300, 2000), 24, "RGB", S),
        ((640, 480), 1, "RGB", S),
        ((800, 600), 12, "L", S),
        ((500, 500), 12, "RGB", 224),
    ],
)
def test_fast_path_is_bit_identical_to_the_reference(size, max_tiles, mode, tile_size):
    img = picture(size, mode)
    expected = tile_image_reference(img, max_tiles, tile_size, True)
    assert torch.equal(tile_image(img, max_tiles, tile_size, True), expected)


# The reduced-scale JPEG decode (open_image's min_size) is the fast path's only approximation.
# Stated tolerance, in pixel levels of 1/255 (after normalisation: twice as much):
MEAN_ABS_LEVELS = 1.0  # mean |error| over all tiles
P99_ABS_LEVELS = 5.0  # 99% of the values


def test_reduced_scale_decode_stays_within_tolerance(tmp_path):
    """Golden test on the benchmark's kind of image: a 12 MP photo into 12 tiles + thumbnail."""
    path = make_photo(tmp_path / "photo.jpg")
    reference = tile_image_reference(open_image(path), 12, S, True)

    size = image_size(path)
    cols, rows = choose_grid(*size, 1, 12, S)
    img = open_image(path, min_size=(cols * S, rows * S))
    assert img.size == (2000, 1500)  # decoded at half scale
    fast = tile_image(img, 12, S, True, source_size=size)

    assert fast.shape == reference.shape == (13, 3, S, S)
    error = (fast - reference).abs() * 255 / 2
    assert error.mean() <= MEAN_ABS_LEVELS
    assert torch.quantile(error.flatten()[::7], 0.99) <= P99_ABS_LEVELS


def test_fit_tiles_to_context_lowers_the_limit_by_two():
    fit = dict(context_tokens=16384, tile_size=S, tokens_per_tile=256, use_thumbnail=True)  # 64 tiles
    photo = (4000, 3000)
    tiles = {limit: count_tiles(*photo, limit, S, True) for limit in (12, 11, 10, 9, 8, 7)}
    assert tiles == {12: 13, 11: 10, 10: 10, 9: 10, 8: 7, 7: 7}  # (4,3), (3,3), (3,2) + thumbnail
    assert fit_tiles_to_context([photo], 0, 12, **fit) == 12
    assert fit_tiles_to_context([photo] * 5, 0, 12, **fit) == 10  # 65 tiles, then 50
    assert fit_tiles_to_context([photo] * 7, 0, 12, **fit) == 8  # 91, 70, then 49
    assert fit_tiles_to_context([photo] * 7, 0, 11, **fit) == 7  # 70, 70, then 49
    assert fit_tiles_to_context([photo] * 2, 45, 12, **fit) == 8  # frames count one tile each: 71, 65, 59
    assert fit_tiles_to_context([photo] * 30, 0, 12, **fit) == 1  # never below 1
    assert fit_tiles_to_context([photo], 64, 12, **fit) == 1  # 64 frames alone fill the context
