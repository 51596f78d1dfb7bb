"""A benchmark's score from its records, on the published table's scale, with VLMEvalKit's definitions.

A record is one answered item: `index`, `prediction`, `answer` (a string or a list) and the benchmark's
other columns (`category`, `split`, `l2-category`, `image_path`, the options A, B, ...).
"""

from __future__ import annotations

import string
from collections import defaultdict
from statistics import mean

from . import vqa_metrics
from .choices import option_letter, yes_or_no
from .data import answers
from .presets import Benchmark
from .prompts import options

PERCENT = ("relaxed_accuracy", "anls", "vqa_score", "choice")
METRICS = (*PERCENT, "circular_choice", "ocrbench", "mme", "hallusion", "judge")
OCRBENCH_GROUPS = {
    "Text Recognition": ("Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
                         "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition"),
    "Scene Text-centric VQA": ("Scene Text-centric VQA",),
    "Doc-oriented VQA": ("Doc-oriented VQA",),
    "Key Information Extraction": ("Key Information Extraction",),
    vqa_metrics.HANDWRITTEN_MATHS: (vqa_metrics.HANDWRITTEN_MATHS,),
}
OCRBENCH_ITEMS = 1000
MME_PERCEPTION = ("OCR", "artwork", "celebrity", "color", "count", "existence", "landmark", "position", "posters",
                  "scene")
MME_REASONING = ("code_reasoning", "commonsense_reasoning", "numerical_calculation", "text_translation")
CIRCULAR_COPIES = 1_000_000  # MMBench's rotated copies of question i have the indices i + k * 1e6


class ScoringError(ValueError):
    """Records that cannot be scored here; the message says why and what to do."""


def _choices(benchmark: Benchmark, record: dict) -> tuple[dict[str, str], str]:
    """The options and the right letter. MMMU's open questions become two options (the answer, and
    'Other Answers'), and its non-letter answers count as A, as VLMEvalKit does."""
    choices = options(record)
    truth = str(record["answer"])
    if "MMMU" in benchmark.name:
        if "A" not in choices:
            choices = {"A": truth, "B": "Other Answers", **{k: v for k, v in choices.items() if k not in "AB"}}
        if truth not in set(string.ascii_uppercase):
            truth = "A"
    return choices, truth


def item_score(benchmark: Benchmark, record: dict, rules: str = "eagle2") -> float | None:
    """The item's own score (0 to 1), or None where it has none (no answer, or a judge must decide)."""
    if benchmark.metric == "judge" or record.get("answer") is None:
        return None
    prediction = str(record["prediction"])
    if benchmark.metric in ("choice", "circular_choice"):
        choices, truth = _choices(benchmark, record)
        return float(option_letter(prediction, choices) == truth)
    if benchmark.metric in ("mme", "hallusion"):
        return float(yes_or_no(prediction, rules) == record["answer"])
    truths = answers(record["answer"])
    if benchmark.metric == "relaxed_accuracy":
        return vqa_metrics.relaxed_accuracy(truths, prediction, rules)
    if benchmark.metric == "anls":
        return vqa_metrics.anls(truths, prediction)
    if benchmark.metric == "vqa_score":
        return vqa_metrics.vqa_accuracy(truths, prediction)
    return float(vqa_metrics.ocrbench_hit(truths, prediction, str(record.get("category", ""))))


def summarise(benchmark: Benchmark, records: list[dict], rules: str = "eagle2") -> dict:
    """{"benchmark", "items", "score", "unit", and the per-category figures} for these records."""
    if benchmark.judge:
        raise ScoringError(f"{benchmark.name} needs an LLM judge: {benchmark.judge}. This tool does not score it; "
                           "score its predictions with VLMEvalKit and a judge model.")
    if not records:
        raise ScoringError("There are no records to score.")
    if any(record.get("answer") is None for record in records):
        raise ScoringError(f"These {benchmark.name} items have no answers (a test split): submit the predictions "
                           "to the benchmark's evaluation server, or score the validation split.")
    scored = [(record, item_score(benchmark, record, rules)) for record in records]
    summary = {"benchmark": benchmark.name, "items": len(records)}
    if benchmark.metric in PERCENT:
        summary.update(_percent(benchmark, scored))
    else:
        summary.update(_SUMMARIES[benchmark.metric](scored))
    return summary


def _percent_of(scores) -> float:
    return 100 * mean(scores)


def _by(scored: list[tuple[dict, float]], column: str) -> dict[str, float]:
    groups = defaultdict(list)
    for record, score in scored:
        if column in record:
            groups[str(record[column])].append(score)
    return {name: _percent_of(scores) for name, scores in sorted(groups.items())}


def _percent(benchmark: Benchmark, scored: list[tuple[dict, float]]) -> dict:
    overall = _percent_of([score for _, score in scored])
    summary = {"score": overall, "unit": "%", "overall": overall}
    for column in ("split", "category", "l2-category"):
        if groups := _by(scored, column):
            summary[column] = groups
    if "MMMU" in benchmark.name and "validation" in summary.get("split", {}):
        summary["score"] = summary["split"]["validation"]  # the published "MMMU val"
    return summary


def _circular(scored: list[tuple[dict, float]]) -> dict:
    """A question counts when every rotation of its options was answered right."""
    groups: dict[int, list[tuple[dict, float]]] = defaultdict(list)
    for record, score in scored:
        groups[int(record["index"]) % CIRCULAR_COPIES].append((record, score))
    hits = [(_main_record(group), float(all(score == 1 for _, score in group))) for group in groups.values()]
    overall = _percent_of([hit for _, hit in hits])
    summary = {"score": overall, "unit": "%", "overall": overall, "questions": len(hits)}
    for column in ("split", "category", "l2-category"):
        if by_group := _by(hits, column):
            summary[column] = by_group
    return summary


def _main_record(group: list[tuple[dict, float]]) -> dict:
    """The question as first written (not a rotated copy) where it is there: its category counts."""
    return next((record for record, _ in group if int(record["index"]) < CIRCULAR_COPIES), group[0][0])


def _ocrbench(scored: list[tuple[dict, float]]) -> dict:
    """Points: the items answered, scaled to OCRBench's 1,000 items (1,000 / n) for a part of it."""
    hits = defaultdict(int)
    for record, score in scored:
        hits[str(record.get("category", ""))] += int(score)
    total = sum(hits.values())
    groups = {group: sum(hits[c] for c in members) for group, members in OCRBENCH_GROUPS.items()}
    return {"score": total * OCRBENCH_ITEMS / len(scored), "unit": f"points of {OCRBENCH_ITEMS}",
            "answered": total, "category": groups}


def _mme(scored: list[tuple[dict, float]]) -> dict:
    """Per category: accuracy over questions + accuracy over images (acc+: both of an image's questions
    right), each in percent; the score is the published "sum", perception plus reasoning."""
    by_category: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record, score in scored:
        image = str(record.get("image_path", record["index"]))
        by_category[str(record.get("category", ""))][image].append(score)
    categories = {}
    for category, images in sorted(by_category.items()):
        questions = [score for scores in images.values() for score in scores]
        both = [float(all(scores)) for scores in images.values()]
        categories[category] = _percent_of(questions) + _percent_of(both)
    perception = sum(categories.get(c, 0.0) for c in MME_PERCEPTION)
    reasoning = sum(categories.get(c, 0.0) for c in MME_REASONING)
    return {"score": perception + reasoning, "unit": "sum of category scores", "perception": perception,
            "reasoning": reasoning, "category": categories}


def _hallusion_metrics(scored: list[tuple[dict, float]]) -> dict[str, float]:
    """aAcc over questions; fAcc over figures and qAcc over questions asked of several figures, where
    one counts only when all its items are right (the ids are parts 3, 4 and 5 of the index)."""
    figures, questions = defaultdict(list), defaultdict(list)
    for record, score in scored:
        parts = str(record["index"]).split("_")
        if len(parts) < 6:
            raise ScoringError(f"HallusionBench index {record['index']!r} lacks its set, figure and question ids "
                               "(VLMEvalKit's indices have six parts separated by '_').")
        category = record.get("l2-category", "")
        figures[(category, parts[3], parts[4])].append(score)
        questions[(category, parts[3], parts[5])].append(score)
    return {"aAcc": _percent_of([score for _, score in scored]),
            "fAcc": _percent_of([float(all(s)) for s in figures.values()]),
            "qAcc": _percent_of([float(all(s)) for s in questions.values()])}


def _hallusion(scored: list[tuple[dict, float]]) -> dict:
    overall = _hallusion_metrics(scored)
    summary = {"score": mean(overall.values()), "unit": "mean of aAcc, fAcc, qAcc (%)", **overall}
    for column in ("category", "l2-category"):
        groups = defaultdict(list)
        for record, score in scored:
            if column in record:
                groups[str(record[column])].append((record, score))
        if groups:
            summary[column] = {name: _hallusion_metrics(items) for name, items in sorted(groups.items())}
    return summary


_SUMMARIES = {"circular_choice": _circular, "ocrbench": _ocrbench, "mme": _mme, "hallusion": _hallusion}
