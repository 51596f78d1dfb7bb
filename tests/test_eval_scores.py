"""The scorers against cases worked out by hand from VLMEvalKit's definitions (and, where they differ,
from the copy of VLMEvalKit in Eagle2's repository that made the published table)."""

import json
import subprocess
import sys

import pytest

from eagle_demo.evaluation.choices import option_letter, yes_or_no
from eagle_demo.evaluation.data import answers
from eagle_demo.evaluation.presets import benchmark
from eagle_demo.evaluation.scores import ScoringError, summarise
from eagle_demo.evaluation.vqa_metrics import (
    anls,
    normalise_answer,
    ocrbench_hit,
    relaxed_accuracy,
    relaxed_correct,
    vqa_accuracy,
)
from tests.conftest import ROOT


# ------------------------------------------------------------------------------ ChartQA: relaxed accuracy
@pytest.mark.parametrize("truth,prediction,eagle2,vlmevalkit", [
    ("100", "105", True, True),  # 5/105 = 4.76 %; 5/100 = 5 % exactly: both within
    ("100", "105.2", True, False),  # 5.2/105.2 = 4.94 % of the prediction; 5.2 % of the truth
    ("100", "95.1", False, True),  # 4.9/95.1 = 5.15 % of the prediction; 4.9 % of the truth
    ("100", "94.9", False, False),  # 5.37 % and 5.1 %
    ("45%", "45", True, False),  # the copy strips "%" and keeps 45; VLMEvalKit reads 0.45
    ("45%", "0.45", False, True),
    ("1,234", "1234", True, False),  # thousands commas: only the copy drops them
    ("0", "0", True, True),  # a zero target: compared as text
    ("0", "0.0", False, False),
    ("Yes", " yes ", True, True),  # text: equal ignoring case; the prediction is stripped
    ("12", "12 apples", False, False),
])
def test_relaxed_accuracy_divides_by_the_prediction_under_eagle2s_rules(truth, prediction, eagle2, vlmevalkit):
    assert relaxed_correct(truth, prediction, "eagle2") is eagle2
    assert relaxed_correct(truth, prediction, "vlmevalkit") is vlmevalkit


def test_relaxed_accuracy_takes_any_of_several_answers():
    assert relaxed_accuracy(["10", "ten"], "Ten") == 1.0
    assert relaxed_accuracy(["10", "ten"], "11") == 0.0  # 1/11 = 9 %


# ------------------------------------------------------------------------------ DocVQA / InfoVQA: ANLS
@pytest.mark.parametrize("truths,prediction,expected", [
    (["hello"], "hello", 1.0),
    (["hello"], "hallo", 0.8),  # 1 edit in 5
    (["abcd"], "abxy", 0.5),  # 2 in 4: exactly the threshold, kept
    (["abcde"], "abxyz", 0.0),  # 3 in 5: 0.4 < 0.5, so 0
    (["abcdefghij"], "abcdeXXXXj", 0.6),  # 4 in 10 (lower-cased: X != f..i)
    (["abcdefghij"], "abcdeXXXXX", 0.5),  # 5 in 10
    (["Hello  World"], " hello world ", 1.0),  # case and spaces normalised
    (["a  b"], "a c", 0.75),  # 1 edit over the longer *original* length, 4
    (["cat", "kitten"], "kitten", 1.0),  # the closest answer counts
])
def test_anls(truths, prediction, expected):
    assert anls(truths, prediction) == pytest.approx(expected)


# ------------------------------------------------------------------------------ TextVQA: VQA accuracy
@pytest.mark.parametrize("text,expected", [
    ("The Dog", "dog"),
    ("an apple!", "apple"),
    ("two", "2"),
    ("none", "0"),
    ("1,000", "1000"),  # a digit,digit comma: every mark goes
    ("red, blue", "red blue"),  # a mark beside a space goes
    ("a/b", "b"),  # a mark touching no space becomes one ("a" is then an article)
    ("3.5 end.", "3.5 end"),  # a period before a digit stays
    ("dont", "don't"),
    ("Its\tok\n", "its ok"),
])
def test_vqa_normalisation(text, expected):
    assert normalise_answer(text) == expected


def test_vqa_accuracy_averages_the_ten_leave_one_out_subsets():
    truths = ["Two", "2"] + ["three"] * 8
    # leaving out a "2" leaves 1 match of the prediction (1/3); leaving out a "3" leaves 2 (2/3)
    assert vqa_accuracy(truths, "two.") == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    # 7 or 8 matches whichever is left out: capped at 1
    assert vqa_accuracy(truths, "The three") == 1.0
    assert vqa_accuracy(truths, "four") == 0.0
    assert vqa_accuracy(["the dog"] * 10, "A dog") == 1.0
    assert vqa_accuracy(["dog"], "dog") == 0.0  # a lone answer has no others to match


# ------------------------------------------------------------------------------ OCRBench
def test_ocrbench_containment_rules():
    assert ocrbench_hit(["Hello"], "The text says HELLO world", "Regular Text Recognition")
    assert ocrbench_hit(["Hello there"], "hello\nthere", "Regular Text Recognition")  # a line break is a space
    assert not ocrbench_hit(["Hello there"], "hello  there", "Regular Text Recognition")
    maths = "Handwritten Mathematical Expression Recognition"
    assert ocrbench_hit(["x^2 + y"], "it is x ^ 2 +\ny", maths)  # every space and line break ignored
    assert not ocrbench_hit(["X^2"], "x^2", maths)  # but not case
    assert ocrbench_hit(["no", "X^2"], "X ^ 2", maths)


def test_ocrbench_points_are_scaled_to_a_thousand_items():
    records = [{"index": 0, "prediction": "cat", "answer": "['cat']", "category": "Regular Text Recognition"},
               {"index": 1, "prediction": "x+1", "answer": "['x + 1']", "category": "Handwritten Mathematical "
                "Expression Recognition"},
               {"index": 2, "prediction": "dog", "answer": "['cow']", "category": "Doc-oriented VQA"}]
    result = summarise(benchmark("OCRBench"), records)
    assert result["score"] == pytest.approx(2 * 1000 / 3) and result["answered"] == 2
    assert result["category"]["Text Recognition"] == 1 and result["category"]["Doc-oriented VQA"] == 0


# ------------------------------------------------------------------------------ multiple choice, yes/no
@pytest.mark.parametrize("prediction,expected", [
    ("B", "B"),
    ("The answer is (C).", "C"),
    ("A or B", None),  # two letters, and neither option's text
    ("It is a dog", "B"),  # no capital letter as a word: the one option text it contains
    ("red apple", None),  # contains the texts of A and of C
    ("Cannot determine the answer", "Z"),
    ("Z", "Z"),
])
def test_option_letter(prediction, expected):
    assert option_letter(prediction, {"A": "red", "B": "dog", "C": "red apple"}) == expected


@pytest.mark.parametrize("prediction,eagle2,vlmevalkit", [
    ("Yes, it is.", "Yes", "Yes"),
    ("No.", "No", "No"),
    ("Not sure, yes", "No", "Yes"),  # the copy's startswith("no") takes "Not"
    ("yes and no", "Yes", "Unknown"),
    ("Maybe", "Unknown", "Unknown"),
])
def test_yes_or_no(prediction, eagle2, vlmevalkit):
    assert yes_or_no(prediction, "eagle2") == eagle2
    assert yes_or_no(prediction, "vlmevalkit") == vlmevalkit


def test_multiple_choice_accuracy_by_split_and_category():
    records = [{"index": i, "prediction": p, "answer": "A", "A": "x", "B": "y", "split": s, "category": c}
               for i, (p, s, c) in enumerate([("A", "validation", "art"), ("B", "validation", "art"),
                                              ("A", "dev", "maths"), ("A", "validation", "maths")])]
    result = summarise(benchmark("MMStar"), records)
    assert result["score"] == 75.0 and result["split"] == {"dev": 100.0, "validation": pytest.approx(200 / 3)}
    assert result["category"] == {"art": 50.0, "maths": 100.0}
    mmmu = summarise(benchmark("MMMU_DEV_VAL"), records)
    assert mmmu["score"] == pytest.approx(200 / 3)  # the published "MMMU val" is the validation split


def test_mmmu_open_questions_become_two_options():
    record = {"index": 1, "prediction": "It is 42", "answer": "42", "split": "validation"}
    assert summarise(benchmark("MMMU_DEV_VAL"), [record])["score"] == 100.0
    assert summarise(benchmark("MMMU_DEV_VAL"), [{**record, "prediction": "41"}])["score"] == 0.0


def test_mmbench_counts_a_question_when_every_rotation_is_right():
    def copies(question, predictions):
        return [{"index": question + k * 1_000_000, "prediction": p, "answer": "ABCD"[k], "A": "a", "B": "b",
                 "C": "c", "D": "d", "category": "logic"} for k, p in enumerate(predictions)]
    records = copies(5, ["A", "B", "C", "D"]) + copies(7, ["A", "C"])
    result = summarise(benchmark("MMBench_DEV_EN_V11"), records)
    assert result["score"] == 50.0 and result["questions"] == 2 and result["category"] == {"logic": 50.0}


def test_mme_adds_accuracy_and_accuracy_plus_per_category():
    rows = [("OCR", "a.jpg", "Yes", "Yes"), ("OCR", "a.jpg", "No", "Yes"), ("OCR", "b.jpg", "Yes", "yes."),
            ("OCR", "b.jpg", "No", "No"), ("code_reasoning", "c.jpg", "Yes", "Yes"),
            ("code_reasoning", "c.jpg", "No", "no")]
    records = [{"index": i, "category": c, "image_path": p, "answer": a, "prediction": pred}
               for i, (c, p, a, pred) in enumerate(rows)]
    result = summarise(benchmark("MME"), records)
    # OCR: 3 of 4 questions (75) + 1 of 2 images with both right (50); code: 100 + 100
    assert result["category"] == {"OCR": 125.0, "code_reasoning": 200.0}
    assert (result["perception"], result["reasoning"], result["score"]) == (125.0, 200.0, 325.0)


def test_hallusionbench_figure_and_question_accuracies():
    right = {"VD_ocr_x_1_0_0": True, "VD_ocr_x_1_1_0": False, "VD_ocr_x_1_0_1": True, "VD_ocr_x_1_1_1": True}
    records = [{"index": index, "answer": "Yes", "prediction": "Yes" if ok else "No", "category": "VD",
                "l2-category": "ocr"} for index, ok in right.items()]
    result = summarise(benchmark("HallusionBench"), records)
    # aAcc 3/4; figures (set 1, fig 0) right, (1, 1) not: 1/2; questions (1, q0) not, (1, q1) right: 1/2
    assert (result["aAcc"], result["fAcc"], result["qAcc"]) == (75.0, 50.0, 50.0)
    assert result["score"] == pytest.approx(175 / 3)
    assert result["l2-category"]["ocr"]["fAcc"] == 50.0


def test_answers_may_be_a_list_or_a_cell_that_spells_one():
    assert answers("['a', 'b']") == ["a", "b"] and answers(["a", 1]) == ["a", "1"]
    assert answers("[not a list") == ["[not a list"] and answers("42") == ["42"]


def test_percent_scores_by_split():
    records = [{"index": 0, "prediction": "10", "answer": "10", "split": "human"},
               {"index": 1, "prediction": "7", "answer": "['9', '8']", "split": "augmented"}]
    result = summarise(benchmark("ChartQA_TEST"), records)
    assert result["score"] == 50.0 and result["split"] == {"augmented": 0.0, "human": 100.0}


@pytest.mark.parametrize("name,message", [("MMVet", "needs an LLM judge"), ("MathVista_MINI", "needs an LLM judge")])
def test_benchmarks_that_need_a_judge_say_so_and_stop(name, message):
    with pytest.raises(ScoringError, match=message):
        summarise(benchmark(name), [{"index": 0, "prediction": "x", "answer": "x"}])


def score(tmp_path, name: str, records: list[dict], *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return subprocess.run([sys.executable, "-m", "eagle_demo", "eval", "score", "--benchmark", name, str(path), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_score_prints_one_json_line_last(tmp_path):
    records = [{"index": 0, "prediction": "105.2", "answer": "100", "split": "human"}]
    done = score(tmp_path, "ChartQA_TEST", records, "--model", "nvidia/Eagle2-2B")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["score"] == 100.0 and result["published"] == {"model": "Eagle2-2B", "score": 82.0}
    assert "| ChartQA_TEST |" in done.stdout
    strict = json.loads(score(tmp_path, "ChartQA_TEST", records, "--rules", "vlmevalkit").stdout.splitlines()[-1])
    assert strict["score"] == 0.0


def test_score_stops_with_a_message_where_a_judge_is_needed(tmp_path):
    done = score(tmp_path, "MMVet", [{"index": 0, "prediction": "x", "answer": "x"}])
    assert done.returncode == 2 and "needs an LLM judge" in done.stderr and "Traceback" not in done.stderr
