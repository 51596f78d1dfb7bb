"""The text of each question as Eagle2's adapter asked it (the images' layout is the engine's)."""

from __future__ import annotations

import re
import string

from .data import Item
from .presets import Benchmark

_CHINESE = re.compile("[\u4e00-\u9fff]")
_LETTER = "\nAnswer with the option's letter from the given choices directly."
_LETTER_ZH = "\n请直接回答选项字母。"
_DIRECT = "\nAnswer the question directly."
_DIRECT_ZH = "\n请直接回答问题。"


def options(fields: dict[str, str]) -> dict[str, str]:
    """A multiple-choice item's options: its columns named by single capital letters, in order."""
    return {letter: fields[letter] for letter in string.ascii_uppercase if letter in fields}


def multiple_choice(item: Item) -> str:
    """The hint, the question, one line per option, then the instruction; in Chinese where the text has
    Chinese characters. A question without options (MMMU's open ones) is asked to be answered directly."""
    text = item.question
    if "hint" in item.fields:
        text = item.fields["hint"] + "\n" + text
    choices = options(item.fields)
    for letter, option in choices.items():
        text += f"\n{letter}. {option}"
    chinese = _CHINESE.search(text) is not None
    if choices:
        return text + (_LETTER_ZH if chinese else _LETTER)
    return text + (_DIRECT_ZH if chinese else _DIRECT)


def question_as_sent(benchmark: Benchmark, item: Item) -> str:
    if benchmark.kind == "MCQ":
        return multiple_choice(item)
    return item.question + benchmark.suffix
