"""Each benchmark's settings as Eagle2's own VLMEvalKit adapter applied them, and the published figures.

Benchmark names are VLMEvalKit's. The adapter (NVlabs/Eagle, deleted in April 2025) decoded greedily
with no repetition penalty and up to 8,192 new tokens; it chose the tiles per image and the 2x
upscale by fragments of the benchmark's name, as `max_tiles` and `upscaled` do here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import GenerationSettings

# The model's chat() default, which the adapter never replaced.
SYSTEM_PROMPT = "You are a helpful assistant."
MAX_NEW_TOKENS = 8192
SHORT_ANSWER = "Answer the question using a single word or phrase."

# Tiles per image by fragments of the name, first match wins; any other benchmark takes DEFAULT_TILES.
_TILES_BY_NAME = (
    (12, ("ChartQA_TEST", "MMMU_DEV_VAL", "MMMU_Pro", "MMMUPro", "MMMU_TEST", "MME-RealWorld", "VCR_EN", "VCR_ZH",
          "OCRVQA")),
    (18, ("DocVQA_VAL", "DocVQA_TEST", "DUDE", "MMLongBench_DOC", "SLIDEVQA")),
    (24, ("InfoVQA_VAL", "InfoVQA_TEST", "OCRBench", "HRBench4K", "HRBench8K")),
)
DEFAULT_TILES = 6
# Benchmarks whose images are tiled as they are; every other image is first enlarged 2x (PIL bilinear).
_NOT_UPSCALED = ("MathVista_MINI", "AI2D_TEST", "InfoVQA_VAL", "InfoVQA_TEST", "Video-MME")

_MATHVISTA = (" Answer the question with a step-by-step process if the problem is complex, otherwise answer "
              'directly. Finally give the final answer with "The answer is ..."')


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: how its questions are asked and how its answers are scored."""

    name: str
    kind: str  # VLMEvalKit's dataset type: "VQA", "MCQ" or "Y/N"
    metric: str  # a name in scores.METRICS
    suffix: str = ""  # appended to a VQA or yes/no question; multiple choice builds its own
    judge: str | None = None  # what an LLM judge must do to score it, where one is needed

    @property
    def max_tiles(self) -> int:
        return next((tiles for tiles, names in _TILES_BY_NAME if any(n in self.name for n in names)), DEFAULT_TILES)

    @property
    def upscaled(self) -> bool:
        return not any(n in self.name for n in _NOT_UPSCALED)

    def settings(self, max_new_tokens: int | None = None) -> GenerationSettings:
        """Greedy, no repetition penalty; `max_new_tokens` overrides the preset's (smoke runs)."""
        return GenerationSettings(max_tiles=self.max_tiles, temperature=0.0, top_p=1.0, top_k=0,
                                  repetition_penalty=1.0, max_new_tokens=max_new_tokens or MAX_NEW_TOKENS)


def _vqa(name: str, metric: str) -> Benchmark:
    return Benchmark(name, "VQA", metric, suffix="\n" + SHORT_ANSWER)


BENCHMARKS = {b.name: b for b in [
    _vqa("ChartQA_TEST", "relaxed_accuracy"),
    _vqa("DocVQA_VAL", "anls"),
    _vqa("DocVQA_TEST", "anls"),
    _vqa("InfoVQA_VAL", "anls"),
    _vqa("InfoVQA_TEST", "anls"),
    _vqa("TextVQA_VAL", "vqa_score"),
    _vqa("OCRBench", "ocrbench"),
    Benchmark("AI2D_TEST", "MCQ", "choice"),
    Benchmark("MMStar", "MCQ", "choice"),
    Benchmark("RealWorldQA", "MCQ", "choice"),
    Benchmark("MMMU_DEV_VAL", "MCQ", "choice"),
    Benchmark("SEEDBench_IMG", "MCQ", "choice"),
    Benchmark("MMBench_DEV_EN", "MCQ", "circular_choice"),
    Benchmark("MMBench_TEST_EN", "MCQ", "circular_choice"),
    Benchmark("MMBench_DEV_EN_V11", "MCQ", "circular_choice"),
    Benchmark("MMBench_TEST_EN_V11", "MCQ", "circular_choice"),
    Benchmark("MME", "Y/N", "mme", suffix=" " + SHORT_ANSWER),
    Benchmark("HallusionBench", "Y/N", "hallusion", suffix=" Please answer yes or no. " + SHORT_ANSWER),
    Benchmark("MathVista_MINI", "VQA", "judge", suffix=_MATHVISTA,
              judge="an LLM (GPT-4-Turbo in the published table) extracts the final answer from each prediction"),
    Benchmark("MMVet", "VQA", "judge",
              judge="an LLM (GPT-4-Turbo in the published table) grades each open-ended answer against the truth"),
]}


def benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}. Use one of VLMEvalKit's names: {', '.join(BENCHMARKS)}.")
    return BENCHMARKS[name]


# The Eagle2 README's table, for Eagle2-1B, -2B and -9B (None: not published). MME is its "sum"
# (perception + reasoning), HallusionBench the average of aAcc, fAcc and qAcc, MMMU its validation
# split. The 9B table's MMBench-V1.1 and SEED-Image rows list fewer figures than models; their last
# figure stands in the Eagle2-9B column.
PUBLISHED = {
    "DocVQA_TEST": (81.8, 88.0, 92.6),
    "ChartQA_TEST": (77.0, 82.0, 86.4),
    "InfoVQA_TEST": (54.8, 65.8, 77.2),
    "TextVQA_VAL": (76.6, 79.1, 83.0),
    "OCRBench": (767, 818, 868),
    "MME": (1790.2, 2109.8, 2260),
    "RealWorldQA": (55.4, 63.1, 69.3),
    "AI2D_TEST": (70.9, 79.3, 83.9),
    "MMMU_DEV_VAL": (38.8, 43.1, 56.1),
    "MMVet": (40.9, 53.8, 62.2),
    "HallusionBench": (None, 45.8, 49.3),
    "MathVista_MINI": (45.3, 54.7, 63.8),
    "MMStar": (48.5, 56.4, 62.6),
    "MMBench_TEST_EN_V11": (None, None, 80.6),
    "SEEDBench_IMG": (None, None, 77.1),
}
MODEL_SIZES = ("1B", "2B", "9B")


def published(benchmark_name: str, model: str) -> tuple[str, float] | None:
    """(the Eagle2 model, its published figure) when `model` names one (a hub id or a folder named
    after it) and the table has a figure for it."""
    found = re.search(r"eagle2-(1b|2b|9b)", model, re.IGNORECASE)
    figures = PUBLISHED.get(benchmark_name)
    if found is None or figures is None:
        return None
    size = found.group(1).upper()
    figure = figures[MODEL_SIZES.index(size)]
    return None if figure is None else (f"Eagle2-{size}", figure)
