"""lmms-eval's model `eagle2`, registered through its `lmms_eval.models` entry point (pyproject.toml).

    python -m lmms_eval --model eagle2 --model_args pretrained=nvidia/Eagle2-1B --tasks chartqa

Each task is asked with the preset of the VLMEvalKit benchmark it corresponds to (tiles, the 2x
upscale, greedy decoding, 8,192 new tokens) and lmms-eval's own prompt, which its scorer expects.
Model arguments: `pretrained` (hub id or folder), `server` (an OpenAI-compatible server's URL, then
`pretrained` names the served model), `concurrency` (questions in flight, for a server), `benchmark`
(a VLMEvalKit name whose preset every task takes), `max_new_tokens`, `device`, `dtype`.
Imported by lmms-eval only: this module needs it installed.
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from tqdm import tqdm

from ..config import DEFAULT_MODEL
from . import presets
from .backends import NativeBackend, ServerBackend, prepare_images

# lmms-eval's task -> the VLMEvalKit benchmark whose preset it takes; other tasks take the default
# (6 tiles, upscaled), as the adapter gave benchmarks it did not name.
TASK_BENCHMARKS = {
    "chartqa": "ChartQA_TEST", "docvqa_val": "DocVQA_VAL", "docvqa_test": "DocVQA_TEST", "infovqa_val": "InfoVQA_VAL",
    "infovqa_test": "InfoVQA_TEST", "textvqa_val": "TextVQA_VAL", "ocrbench": "OCRBench", "ai2d": "AI2D_TEST",
    "mmstar": "MMStar", "realworldqa": "RealWorldQA", "mmmu_val": "MMMU_DEV_VAL", "mme": "MME",
    "hallusion_bench_image": "HallusionBench", "seedbench": "SEEDBench_IMG", "mmbench_en_dev": "MMBench_DEV_EN",
    "mathvista_testmini": "MathVista_MINI", "mmvet": "MMVet",
}


def manifest() -> ModelManifest:
    return ModelManifest(model_id="eagle2", simple_class_path=f"{__name__}.Eagle2")


class Eagle2(lmms):
    is_simple = True

    def __init__(self, pretrained: str = DEFAULT_MODEL, server: str | None = None, concurrency: int = 1,
                 benchmark: str | None = None, max_new_tokens: int | None = None, device: str | None = None,
                 dtype: str | None = None, batch_size: int = 1, **unused):
        super().__init__()
        self.backend = ServerBackend(server, pretrained) if server else NativeBackend(pretrained, device, dtype)
        self.backend.load()
        self.concurrency = max(1, int(concurrency))
        self.benchmark_name = benchmark
        self.max_new_tokens = None if max_new_tokens is None else int(max_new_tokens)

    def _preset(self, task: str) -> presets.Benchmark:
        name = self.benchmark_name or TASK_BENCHMARKS.get(task)
        return presets.benchmark(name) if name else presets.Benchmark(task, "VQA", "judge")

    def _answer(self, request, folder: Path) -> str:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        preset = self._preset(task)
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        images = [image for visual in visuals for image in (visual if isinstance(visual, list) else [visual])]
        paths = prepare_images(images, preset.upscaled, folder)
        try:
            text = self.backend.answer(context, paths, preset.settings(self.max_new_tokens)).text
        finally:
            for path in paths:
                Path(path).unlink(missing_ok=True)
        until = gen_kwargs.get("until") or []
        for stop in [until] if isinstance(until, str) else until:
            if stop:
                text = text.split(stop)[0]
        self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return text

    def generate_until(self, requests) -> list[str]:
        with tempfile.TemporaryDirectory(prefix="eagle-lmms-") as folder, \
                ThreadPoolExecutor(self.concurrency) as pool, tqdm(total=len(requests), desc="Eagle2") as bar:
            futures = [pool.submit(self._answer, request, Path(folder)) for request in requests]
            answers = []
            for future in futures:
                answers.append(future.result())
                bar.update()
        return answers

    def loglikelihood(self, requests):
        raise NotImplementedError("Eagle2 is evaluated on generation tasks only (output_type: generate_until).")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("Eagle2 is evaluated on single-turn generation tasks only.")
