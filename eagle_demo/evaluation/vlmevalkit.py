"""Eagle2 as a VLMEvalKit model, answered by this project's engine or a server, with Eagle2's presets.

VLMEvalKit has no plugin entry point: register the class in its `vlmeval/config.py` (docs/eval.md),

    from eagle_demo.evaluation.vlmevalkit import Eagle2
    supported_VLM["Eagle2-1B"] = partial(Eagle2, model_path="nvidia/Eagle2-1B")

then `python run.py --model Eagle2-1B --data ChartQA_TEST` scores it with VLMEvalKit itself (and its
LLM judges). Arguments: `model_path` (hub id or folder; with `server`, the served model's name),
`server` (an OpenAI-compatible server's URL), `max_new_tokens`, `device`, `dtype`.
Imported by VLMEvalKit only: this module needs it installed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image
from vlmeval.dataset import DATASET_TYPE
from vlmeval.vlm.base import BaseModel

from ..config import DEFAULT_MODEL
from . import presets
from .backends import NativeBackend, ServerBackend, prepare_images
from .data import Item
from .prompts import question_as_sent

_NO_CUSTOM_PROMPT = ("MMDU", "MME-RealWorld", "MME-RealWorld-CN")  # multi-turn: VLMEvalKit's own prompt


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


class Eagle2(BaseModel):
    INSTALL_REQ = False
    INTERLEAVE = True

    def __init__(self, model_path: str = DEFAULT_MODEL, server: str | None = None, max_new_tokens: int | None = None,
                 device: str | None = None, dtype: str | None = None, **unused):
        super().__init__()
        self.backend = ServerBackend(server, model_path) if server else NativeBackend(model_path, device, dtype)
        self.max_new_tokens = max_new_tokens

    @staticmethod
    def preset(dataset: str | None) -> presets.Benchmark:
        """This project's preset, or for another benchmark one built from VLMEvalKit's type of it (its
        name still picks the tiles and the upscale)."""
        if dataset in presets.BENCHMARKS:
            return presets.BENCHMARKS[dataset]
        kind = DATASET_TYPE(dataset) if dataset else "VQA"
        suffix = "\n" + presets.SHORT_ANSWER if kind == "VQA" else ""
        return presets.Benchmark(dataset or "", kind, "judge", suffix=suffix)

    def use_custom_prompt(self, dataset: str) -> bool:
        return dataset is not None and not any(name in dataset for name in _NO_CUSTOM_PROMPT)

    def build_prompt(self, line, dataset: str | None = None) -> list[dict]:
        fields = {key: str(value) for key, value in dict(line).items()
                  if key not in ("index", "question", "answer", "image") and not _missing(value)}
        item = Item(line["index"], str(line["question"]), None, fields=fields)
        text = question_as_sent(self.preset(dataset), item)
        return [dict(type="text", value=text)] + [dict(type="image", value=p) for p in self.dump_image(line, dataset)]

    def generate_inner(self, message: list[dict], dataset: str | None = None) -> str:
        """The texts joined as the adapter joined them (by line breaks beside one image, directly beside
        several), the images laid out by the engine."""
        preset = self.preset(dataset)
        texts = [m["value"] for m in message if m["type"] == "text"]
        images = [Image.open(m["value"]) for m in message if m["type"] == "image"]
        text = "\n".join(texts) if len(images) == 1 else "".join(texts)
        with tempfile.TemporaryDirectory(prefix="eagle-vlmeval-") as folder:
            paths = prepare_images(images, preset.upscaled, Path(folder))
            return self.backend.answer(text, paths, preset.settings(self.max_new_tokens)).text
