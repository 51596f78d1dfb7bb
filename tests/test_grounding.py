from PIL import Image

from eagle_demo.grounding import Box, draw_boxes, parse_boxes


def test_parse_one_labelled_box():
    text = "The sun is here: <ref>the sun</ref><box>[[700, 50, 900, 250]]</box>."
    assert parse_boxes(text) == [Box("the sun", 700, 50, 900, 250)]


def test_parse_several_boxes_per_ref_and_several_refs():
    text = ("<ref>tree</ref><box>[[10,20,30,40],[50,60,70,80]]</box> and "
            "<ref>house</ref> <box>[[100.5, 200, 300, 400]]</box>")
    assert parse_boxes(text) == [
        Box("tree", 10, 20, 30, 40), Box("tree", 50, 60, 70, 80), Box("house", 100.5, 200, 300, 400)]


def test_parse_box_without_ref_swapped_corners_and_out_of_range():
    assert parse_boxes("<box>[[900, 800, 100, -5]]</box>") == [Box("", 100, 0, 900, 800)]
    assert parse_boxes("<box>[[0, 0, 2000, 1000]]</box>") == [Box("", 0, 0, 1000, 1000)]


def test_parse_ignores_plain_text_broken_markup_and_unfinished_stream():
    assert parse_boxes("no boxes here [[1,2,3,4]]") == []
    assert parse_boxes("<ref>cat</ref> without a box") == []
    assert parse_boxes("<ref>cat</ref><box>[[1, 2, 3]]</box>") == []
    assert parse_boxes("<ref>cat</ref><box>[[1, 2, 3, 4]]") == []  # still streaming


def test_parse_label_whitespace_is_normalised():
    assert parse_boxes("<ref> big\n red  car </ref><box>[[1,2,3,4]]</box>")[0].label == "big red car"


def test_draw_boxes_maps_the_1000_grid_onto_the_image():
    image = Image.new("RGB", (200, 100), "black")
    out = draw_boxes(image, [Box("", 250, 500, 750, 1000)])
    assert out is not image and out.size == image.size and image.getpixel((50, 50)) == (0, 0, 0)
    # outline corners land on x = 0.25*199, 0.75*199 and y = 0.5*99, 99; the inside stays untouched
    assert out.getpixel((50, 75)) != (0, 0, 0)
    assert out.getpixel((149, 75)) != (0, 0, 0)
    assert out.getpixel((100, 99)) != (0, 0, 0)
    assert out.getpixel((100, 75)) == (0, 0, 0)
    assert out.getpixel((10, 10)) == (0, 0, 0)


def test_draw_boxes_labels_and_colours_per_label():
    image = Image.new("RGBA", (400, 400), (0, 0, 0, 0))
    boxes = [Box("sun", 600, 100, 900, 400), Box("tree", 100, 500, 300, 900), Box("sun", 100, 100, 200, 200)]
    out = draw_boxes(image, boxes)
    assert out.mode == "RGB"
    sun, tree = out.getpixel((round(0.6 * 399), 100)), out.getpixel((round(0.1 * 399), 280))
    assert sun != tree and sun != (0, 0, 0) and tree != (0, 0, 0)
    assert out.getpixel((round(0.1 * 399), 60)) == sun  # same label, same colour
    label_area = out.crop((240, 0, 400, 40))  # the "sun" tag sits above its box
    assert len(label_area.getcolors(maxcolors=1000)) > 2


def test_draw_boxes_without_boxes_returns_an_rgb_copy():
    image = Image.new("L", (10, 10), 7)
    out = draw_boxes(image, [])
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (7, 7, 7)


def test_the_app_draws_an_answers_boxes_on_the_latest_image(tmp_path):
    from eagle_demo.chat_actions import annotate
    from eagle_demo.conversation import Message
    from eagle_demo.records import OutputFiles

    files = OutputFiles(tmp_path / "out")

    first, latest = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (100, 100), "white").save(first)
    Image.new("RGB", (200, 100), "black").save(latest)
    turns = [Message("user", "", [str(first), str(latest)])]
    path = annotate("<ref>thing</ref><box>[[0, 0, 500, 500]]</box>", turns, files)
    with Image.open(path) as drawn:
        assert drawn.size == (200, 100) and drawn.getpixel((0, 25)) != (0, 0, 0)
    assert files.generated == {path}  # deleted with the uploads
    assert annotate("no boxes", turns, files) is None
    assert annotate("<box>[[0, 0, 5, 5]]</box>", [Message("user", "")], files) is None


def test_boxes_are_drawn_on_the_image_as_the_model_saw_it(tmp_path):
    """Upright per its EXIF orientation, and nothing drawn on a file the model would refuse."""
    from eagle_demo.chat_actions import annotate
    from eagle_demo.conversation import Message
    from eagle_demo.records import OutputFiles
    from tests.media_factory import make_bomb_png, make_exif_rotated_photo

    files = OutputFiles(tmp_path / "out")
    turns = [Message("user", "", [str(make_exif_rotated_photo(tmp_path / "r.jpg", (64, 48)))])]
    with Image.open(annotate("<box>[[0, 0, 500, 500]]</box>", turns, files)) as drawn:
        assert drawn.size == (48, 64)
    turns[0].images = [str(make_bomb_png(tmp_path / "bomb.png"))]
    assert annotate("<box>[[0, 0, 500, 500]]</box>", turns, files) is None
