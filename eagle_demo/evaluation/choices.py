"""VLMEvalKit's rule-based answer extraction: the option letter of a multiple-choice prediction, and
Yes/No from a yes-or-no one (what it does before, or without, an LLM judge)."""

from __future__ import annotations

from .vqa_metrics import strip_punctuation

REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")
NO_OPTION = "Z"  # what VLMEvalKit records for a prediction that names no option
_SEPARATORS = ".()[],:;!*#{}"


def option_letter(prediction: str, options: dict[str, str]) -> str | None:
    """The one option letter the prediction names as a word (after the marks .()[],:;!*#{} become
    spaces); else the one option whose text it contains (ignoring case); else None. A refusal, or a
    bare "Z" without any option letter, is "Z"."""
    letter = _named_letter(prediction, options)
    if letter is not None:
        return letter
    lower = prediction.lower()
    contained = [letter for letter, text in options.items() if str(text).lower() in lower]
    return contained[0] if len(contained) == 1 else None


def _named_letter(prediction: str, options: dict[str, str]) -> str | None:
    if "Failed to obtain answer via API" in prediction:  # an API client's failure: only the texts may tell
        return None
    if any(refusal in prediction for refusal in REFUSALS):
        return NO_OPTION
    spaced = prediction
    for mark in _SEPARATORS:
        spaced = spaced.replace(mark, " ")
    words = spaced.split()
    named = [letter for letter in options if letter in words]
    if len(named) == 1:
        return named[0]
    return NO_OPTION if not named and NO_OPTION in words else None


def yes_or_no(prediction: str, rules: str = "eagle2") -> str:
    """"Yes", "No" or "Unknown": the one of yes/no among the words (punctuation stripped, lower case).
    Under "eagle2" (the adapter's VLMEvalKit) a prediction that starts with "yes"/"no" is that first."""
    text = prediction.lower()
    if rules == "eagle2":
        if text.startswith("yes"):
            return "Yes"
        if text.startswith("no"):
            return "No"
    words = strip_punctuation(text).split()
    if "yes" in words and "no" not in words:
        return "Yes"
    if "no" in words and "yes" not in words:
        return "No"
    return "Unknown"
