"""The real lmms-eval and the real VLMEvalKit answering with Eagle2 through this package's adapters.

Both live in one virtualenv of their own (lmms-eval pins av<16, the app needs av>=18): lmms-eval runs
`--model eagle2`, which this package registers through its `lmms_eval.models` entry point, end to end
on a local task (a small dataset the test saves with `datasets`' save_to_disk, as lmms-eval keeps its
data); VLMEvalKit (the `nvidia-vlmeval` release) runs its own inference loop on a local TSV with the
model class registered by the two lines docs/eval.md gives. Each answers as `eval run` does.

Skipped where that virtualenv (LMMS_VENV, default .lmms-venv beside this checkout's root, as .ci/run
makes it) is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from eagle_demo.evaluation.backends import EvalModel
from eagle_demo.evaluation.presets import benchmark
from eagle_demo.tiny import write_tiny_checkpoint
from tests.conftest import ROOT
from tests.eval_data import picture
from tests.support import REAL_TOKENIZER

VENV = Path(os.environ.get("LMMS_VENV") or ROOT / ".lmms-venv")
# lets torchvision's CUDA-built wheel (an lmms-eval dependency) import beside the CPU torch
SHIM = ROOT / "tests" / "vllm_shim"
QUESTIONS = [("What is the value of bar 1?", "10"), ("What is the value of bar 2?", "20"),
             ("What is the value of bar 3?", "30")]
SIZES = [(350, 400), (358, 400), (366, 400)]  # 5 tiles each, enlarged
SUFFIX = "\nAnswer the question using a single word or phrase."
NEW_TOKENS = 6

pytestmark = [
    pytest.mark.skipif(not (VENV / "bin" / "python").is_file(), reason=f"no lmms-eval virtualenv at {VENV}"),
]

SAVE_DATASET = """
import sys
from datasets import Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PIL
out, *rows = sys.argv[1:]
rows = [row.split("|") for row in rows]
features = Features({"question": Value("string"), "answer": Value("string"), "image": Image()})
test = Dataset.from_dict({"question": [q for q, a, p in rows], "answer": [a for q, a, p in rows],
                          "image": [PIL.open(p) for q, a, p in rows]}, features=features)
DatasetDict({"test": test}).save_to_disk(out)
"""

TASK = """task: eagle2_local_chartqa
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: test
output_type: generate_until
doc_to_visual: !function task_utils.doc_to_visual
doc_to_text: !function task_utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 16
process_results: !function task_utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

TASK_UTILS = f"""
def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc):
    return doc["question"] + {SUFFIX!r}


def process_results(doc, results):
    return {{"exact_match": float(results[0].strip() == doc["answer"])}}
"""


def in_venv(*args: str, env_extra: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SHIM), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           **(env_extra or {})}
    return subprocess.run([str(VENV / "bin" / "python"), *args], capture_output=True, text=True, env=env,
                          timeout=600, **kwargs)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("adapters") / "small", tokenizer_dir=REAL_TOKENIZER,
                                 size="small")


def test_lmms_eval_runs_eagle2_on_a_local_task_as_eval_run_answers(model, tmp_path):
    images = []
    for i, (width, height) in enumerate(SIZES):
        images.append(tmp_path / f"bar-{i}.png")
        picture(width, height, seed=i, text=QUESTIONS[i][1]).save(images[-1])
    rows = [f"{q}|{a}|{p}" for (q, a), p in zip(QUESTIONS, images)]
    made = in_venv("-c", SAVE_DATASET, str(tmp_path / "data"), *rows)
    assert made.returncode == 0, made.stderr
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "eagle2_local_chartqa.yaml").write_text(TASK.format(data=tmp_path / "data"))
    (tasks / "task_utils.py").write_text(TASK_UTILS)

    done = in_venv("-m", "lmms_eval", "--model", "eagle2", "--model_args",
                   f"pretrained={model},benchmark=ChartQA_TEST,max_new_tokens={NEW_TOKENS},device=cpu",
                   "--tasks", "eagle2_local_chartqa", "--include_path", str(tasks), "--limit", "2",
                   "--batch_size", "1", "--output_path", str(tmp_path / "out"), "--log_samples", cwd=tmp_path)
    found = sorted((tmp_path / "out").rglob("*_results.json")) if (tmp_path / "out").is_dir() else []
    # lmms-eval logs a failed evaluation and exits 0 all the same: the results file tells
    assert done.returncode == 0 and found, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(found[0].read_text())
    assert "exact_match,none" in results["results"]["eagle2_local_chartqa"]
    samples = [json.loads(line) for line in next((tmp_path / "out").rglob("*samples_eagle2_local_chartqa*.jsonl"))
               .read_text().splitlines()]
    assert len(samples) == 2  # --limit 2

    # `eval run` on the same saved dataset folder (its reader needs `datasets`, which this environment has)
    # asks with the same preset and gives the same answers
    ours = in_venv("-m", "eagle_demo", "eval", "run", "--benchmark", "ChartQA_TEST", "--data", str(tmp_path / "data"),
                   "--model", str(model), "--device", "cpu", "--limit", "2", "--max-new-tokens", str(NEW_TOKENS),
                   "--out", str(tmp_path / "ours"), cwd=ROOT)
    assert ours.returncode == 0, ours.stderr
    lines = (tmp_path / "ours" / "ChartQA_TEST.jsonl").read_text().splitlines()
    records = {r["index"]: r for r in map(json.loads, lines)}
    for sample in samples:
        record = records[sample["doc_id"]]  # no index column: the row number
        assert sample["input"] == record["question"] == QUESTIONS[sample["doc_id"]][0] + SUFFIX
        assert sample["filtered_resps"] == record["prediction"] and record["answer"] == sample["target"]


VLMEVALKIT_RUN = """
import json, os, sys
from functools import partial

from vlmeval.config import supported_VLM
from vlmeval.dataset import build_dataset
from vlmeval.inference import infer_data_job
from vlmeval.smp import load

from eagle_demo.evaluation.vlmevalkit import Eagle2

checkpoint, name, work = sys.argv[1:]
os.makedirs(work, exist_ok=True)
supported_VLM["Eagle2-small"] = partial(Eagle2, model_path=checkpoint, device="cpu", dtype="float32",
                                        max_new_tokens={tokens})
infer_data_job("Eagle2-small", work_dir=work, model_name="Eagle2-small", dataset=build_dataset(name))
data = load(os.path.join(work, f"Eagle2-small_{{name}}.xlsx"))
print(json.dumps({{str(i): str(p) for i, p in zip(data["index"], data["prediction"])}}))
"""


def test_vlmevalkit_runs_the_registered_model_class_as_eval_run_answers(model, tmp_path):
    """A local TSV, which VLMEvalKit takes for a custom set (open-ended, as its name says; the name also
    carries ChartQA_TEST's preset): VLMEvalKit writes each image as {index}.jpg and asks the model class,
    whose answers equal those of `eval run --benchmark ChartQA_TEST` on the same file."""
    from eagle_demo.evaluation.data import read_tsv
    from eagle_demo.evaluation.runner import run
    from tests.eval_data import chartqa_rows, write_tsv

    data = tmp_path / "data"
    data.mkdir()
    name = "Local_ChartQA_TEST_openended"
    tsv = write_tsv(data / f"{name}.tsv", chartqa_rows([(350, 400), (358, 400)]))
    done = in_venv("-c", VLMEVALKIT_RUN.format(tokens=NEW_TOKENS), str(model), name, str(tmp_path / "work"),
                   cwd=tmp_path, env_extra={"LMUData": str(data)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    theirs = json.loads(done.stdout.splitlines()[-1])
    ours, _ = run(EvalModel.native(str(model), device="cpu", dtype="float32"), benchmark("ChartQA_TEST"), read_tsv(tsv),
                  tmp_path / "ours.jsonl", max_new_tokens=NEW_TOKENS)
    # VLMEvalKit's spreadsheet reads an empty answer back as NaN
    assert {str(r["index"]): r["prediction"] or "nan" for r in ours} == theirs
