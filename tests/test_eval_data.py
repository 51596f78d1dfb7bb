"""Reading VLMEvalKit's TSV as VLMEvalKit reads it, and the questions as Eagle2's adapter asked them."""

import io

import numpy as np
import pytest
from PIL import Image

from eagle_demo.evaluation.data import read_items
from eagle_demo.evaluation.presets import benchmark, published
from eagle_demo.evaluation.prompts import question_as_sent
from tests.eval_data import encoded, picture, write_tsv


def test_tsv_images_references_lists_and_missing_cells(tmp_path):
    one, two, three = picture(60, 40, 1), picture(50, 50, 2), picture(30, 70, 3)
    rows = [{"index": 1, "image": encoded(one), "question": "q1", "answer": "Yes", "hint": None},
            {"index": 2, "image": "1", "question": "q2", "answer": "No", "hint": "look"},  # the image of row 1
            {"index": 3, "image": str([encoded(two), encoded(three)]), "image_path": str(["3-a.png", "3-b.jpg"]),
             "question": "q3", "answer": None, "hint": "None"}]  # pandas reads "None" as missing, as VLMEvalKit does
    items = read_items(write_tsv(tmp_path / "MME.tsv", rows))
    assert [item.index for item in items] == [1, 2, 3] and [item.answer for item in items] == ["Yes", "No", None]
    assert [item.fields.get("hint") for item in items] == [None, "look", None]
    first, second, third = (item.images() for item in items)
    assert len(first) == len(second) == 1 and len(third) == 2
    # a single image reaches the model as VLMEvalKit's {index}.jpg: a JPEG of the original
    jpeg = io.BytesIO()
    one.save(jpeg, format="JPEG")
    as_jpeg = np.asarray(Image.open(jpeg).convert("RGB"))
    assert np.array_equal(np.asarray(first[0].convert("RGB")), as_jpeg)
    assert np.array_equal(np.asarray(second[0].convert("RGB")), as_jpeg)
    # several keep the formats of their names in image_path: the PNG exactly
    assert np.array_equal(np.asarray(third[0].convert("RGB")), np.asarray(two))
    assert third[1].format == "JPEG" and third[1].size == (30, 70)


def test_a_reference_to_a_row_without_an_image_is_named(tmp_path):
    rows = [{"index": 1, "image": "7", "question": "q", "answer": "a"}]
    with pytest.raises(ValueError, match="its image names item '7'"):
        read_items(write_tsv(tmp_path / "x.tsv", rows))[0].images()


def test_image_paths_beside_the_tsv(tmp_path):
    picture(20, 10, 0).save(tmp_path / "a.png")
    items = read_items(write_tsv(tmp_path / "x.tsv", [{"index": "q-1", "image_path": "a.png", "question": "q",
                                                       "answer": "a"}]))
    assert items[0].index == "q-1" and items[0].images()[0].size == (20, 10)


def test_questions_as_the_adapter_asked_them(tmp_path):
    png = encoded(picture(4, 4, 0))
    rows = [{"index": 0, "image": png, "question": "Which one?", "answer": "B", "hint": "Look closely.", "A": "cat",
             "B": "dog", "C": None},
            {"index": 1, "image": png, "question": "哪一个?", "answer": "A", "A": "猫", "B": "狗"},
            {"index": 2, "image": png, "question": "How much?", "answer": "42"}]
    mcq, chinese, open_question = read_items(write_tsv(tmp_path / "x.tsv", rows))
    mmstar = benchmark("MMStar")
    assert question_as_sent(mmstar, mcq) == ("Look closely.\nWhich one?\nA. cat\nB. dog\n"
                                             "Answer with the option's letter from the given choices directly.")
    assert question_as_sent(mmstar, chinese) == "哪一个?\nA. 猫\nB. 狗\n请直接回答选项字母。"
    assert question_as_sent(benchmark("MMMU_DEV_VAL"), open_question) == "How much?\nAnswer the question directly."
    assert question_as_sent(benchmark("OCRBench"), open_question) == \
        "How much?\nAnswer the question using a single word or phrase."
    assert question_as_sent(benchmark("MME"), open_question) == \
        "How much? Answer the question using a single word or phrase."
    assert question_as_sent(benchmark("HallusionBench"), open_question) == \
        "How much? Please answer yes or no. Answer the question using a single word or phrase."
    assert question_as_sent(benchmark("MMVet"), open_question) == "How much?"


@pytest.mark.parametrize("name,tiles,upscaled", [
    ("ChartQA_TEST", 12, True), ("MMMU_DEV_VAL", 12, True), ("DocVQA_VAL", 18, True), ("DocVQA_TEST", 18, True),
    ("InfoVQA_VAL", 24, False), ("OCRBench", 24, True), ("AI2D_TEST", 6, False), ("MathVista_MINI", 6, False),
    ("TextVQA_VAL", 6, True), ("MME", 6, True), ("HallusionBench", 6, True),
])
def test_presets(name, tiles, upscaled):
    preset = benchmark(name)
    settings = preset.settings()
    assert (preset.max_tiles, preset.upscaled) == (tiles, upscaled)
    assert (settings.temperature, settings.top_p, settings.top_k, settings.repetition_penalty,
            settings.max_new_tokens) == (0.0, 1.0, 0, 1.0, 8192)
    assert preset.settings(16).max_new_tokens == 16


def test_published_figures_follow_the_model_name():
    assert published("OCRBench", "nvidia/Eagle2-9B") == ("Eagle2-9B", 868)
    assert published("MME", "/models/eagle2-2b-awq") == ("Eagle2-2B", 2109.8)
    assert published("HallusionBench", "nvidia/Eagle2-1B") is None  # not in the 1B table
    assert published("DocVQA_VAL", "nvidia/Eagle2-1B") is None and published("OCRBench", "my-model") is None
