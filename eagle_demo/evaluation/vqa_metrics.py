"""VLMEvalKit's open-answer scorers, one item at a time: relaxed accuracy (ChartQA), ANLS (DocVQA,
InfoVQA), VQA accuracy with its answer normalisation (TextVQA), and OCRBench's containment rules.

Where the copy of VLMEvalKit inside Eagle2's repository (which made the published table) differs
from VLMEvalKit itself, `rules` picks one: "eagle2" (the default) or "vlmevalkit".
"""

from __future__ import annotations

import re

RELAXED_TOLERANCE = 0.05
ANLS_THRESHOLD = 0.5
RULES = ("eagle2", "vlmevalkit")

# ------------------------------------------------------------------------------------------ normalisation
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")  # a period not followed by a digit
# VLMEvalKit passes re.UNICODE (32) where re.sub takes its count: at most 32 periods go.
_PERIODS_REMOVED = 32
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# The VQA evaluation's contractions, written without their apostrophes (the text is lower-cased before
# they are looked up, so the table's capitalised keys never match and are left out).
_CONTRACTIONS = dict(pair.split("=") for pair in """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd
howll=how'll hows=how's isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am
mightnt=mightn't mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't
mustve=must've neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at
'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's
shouldve=should've shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
someones=someone's somethingd=something'd somethingd've=something'd've something'dve=something'd've
somethingll=something'll thats=that's thered=there'd thered've=there'd've there'dve=there'd've
therere=there're theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll
theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've
werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've whens=when's whered=where'd
wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
""".split())


def strip_punctuation(text: str) -> str:
    """Each mark goes, or becomes a space when it touches no space and the text has no digit,digit."""
    digit_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        gone = digit_comma or mark + " " in text or " " + mark in text
        out = out.replace(mark, "" if gone else " ")
    return _PERIOD.sub("", out, count=_PERIODS_REMOVED)


def normalise_words(text: str) -> str:
    """Lower case, number words as digits, no articles, contractions with their apostrophes."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def normalise_answer(text: str) -> str:
    return normalise_words(strip_punctuation(text.replace("\n", " ").replace("\t", " ").strip()))


# ------------------------------------------------------------------------------------------ scorers
def vqa_accuracy(truths: list[str], prediction: str) -> float:
    """The mean over the answers of min(1, matches among the *other* answers / 3): with TextVQA's ten
    answers, the average over its ten leave-one-out subsets (a single answer scores 0)."""
    truths = [normalise_answer(t) for t in truths]
    prediction = normalise_answer(prediction)
    scores = [min(1.0, sum(other == prediction for j, other in enumerate(truths) if j != i) / 3)
              for i in range(len(truths))]
    return sum(scores) / len(scores)


def _number(text: str, rules: str) -> float | None:
    try:
        if rules == "eagle2":  # spaces and thousands commas go; a percentage keeps its number
            return float(text.replace(" ", "").strip().rstrip("%").replace(",", ""))
        return float(text.rstrip("%")) / 100 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correct(truth: str, prediction: str, rules: str = "eagle2") -> bool:
    """Within 5 % of the target when both are numbers (and the target is not 0), else equal ignoring case.

    The 5 % is relative to the *prediction* under "eagle2" (the adapter's VLMEvalKit passed the two the
    other way round, as VLMEvalKit did until September 2025), to the truth under "vlmevalkit"."""
    prediction = prediction.strip()
    target, other = (prediction, truth) if rules == "eagle2" else (truth, prediction)
    target_number, other_number = _number(target, rules), _number(other, rules)
    if other_number is not None and target_number:
        return abs(other_number - target_number) / abs(target_number) <= RELAXED_TOLERANCE
    return other.lower() == target.lower()


def relaxed_accuracy(truths: list[str], prediction: str, rules: str = "eagle2") -> float:
    """1 when any accepted answer matches."""
    return float(any(relaxed_correct(t, prediction, rules) for t in truths))


def levenshtein(a: str, b: str) -> int:
    previous = list(range(len(a) + 1))
    for j, cb in enumerate(b, 1):
        current = [j]
        for i, ca in enumerate(a, 1):
            current.append(previous[i - 1] if ca == cb else 1 + min(previous[i - 1], previous[i], current[-1]))
        previous = current
    return previous[-1]


def anls_distance(truth: str, prediction: str) -> float:
    """Edit distance of the lower-cased, space-collapsed texts over the longer *original* length."""
    longest = max(len(truth.upper()), len(prediction.upper()))
    if longest == 0:
        return 0.0
    squeeze = lambda text: " ".join(text.strip().lower().split())  # noqa: E731
    return levenshtein(squeeze(truth), squeeze(prediction)) / longest


def anls(truths: list[str], prediction: str) -> float:
    """1 - the smallest distance to an accepted answer, or 0 below the 0.5 threshold."""
    similarity = 1 - min(anls_distance(t, prediction) for t in truths)
    return 0.0 if similarity < ANLS_THRESHOLD else similarity


HANDWRITTEN_MATHS = "Handwritten Mathematical Expression Recognition"


def ocrbench_hit(truths: list[str], prediction: str, category: str) -> bool:
    """An accepted answer is contained in the prediction: ignoring case and line breaks, or for
    handwritten maths ignoring every space and line break but not case."""
    if category == HANDWRITTEN_MATHS:
        squeeze = lambda text: text.strip().replace("\n", " ").replace(" ", "")  # noqa: E731
    else:
        squeeze = lambda text: text.lower().strip().replace("\n", " ")  # noqa: E731
    return any(squeeze(t) in squeeze(prediction) for t in truths)
