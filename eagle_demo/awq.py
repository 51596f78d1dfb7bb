"""AWQ (activation-aware weight quantisation) for `quantize --method awq`, run through this project's
own engine: no model code from the hub, no AutoAWQ.

A calibration set (a few conversations about the repository's example images, with answers of
several kinds of text) goes through the engine's prefill with hooks on every decoder layer. For each
group of Linear layers that read the same input x (q, k and v after input_layernorm; gate and up
after post_attention_layernorm; down after up's product), the scale s = mean|x|^a is searched on a
grid of a from 0 (plain round-to-nearest) to 0.95: the a whose quantised W diag(s), times x / s,
comes closest to the float layers' outputs on the calibration rows wins. The exporter then multiplies
the weights' inputs by s and divides what feeds them by s (the norm's scale, up's rows), which
leaves the float model's function as it was. o_proj keeps s = 1: its inputs come from v's heads,
each shared by several query heads, so one scale per input could not be folded into v.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from .model.loading import weight_files
from .model.quantized import dequantize, quantize_groups


@dataclass
class Scaling:
    """AWQ's per-input-channel scales by checkpoint key: `columns` multiply a weight's inputs before it is
    quantised; `rows` divide what feeds them (a norm's scale, the rows of up_proj), so the product is kept."""

    columns: dict[str, torch.Tensor] = field(default_factory=dict)
    rows: dict[str, torch.Tensor] = field(default_factory=dict)


# input tap: (the layers that read it, what feeds them), by checkpoint key within a decoder layer
GROUPS = {"attn": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "input_layernorm.weight"),
          "mlp": (("mlp.gate_proj", "mlp.up_proj"), "post_attention_layernorm.weight"),
          "down": (("mlp.down_proj",), "mlp.up_proj.weight")}
GRID = 20  # values of a tried: 0, 0.05, ..., 0.95
ROW_STRIDE = 4  # every 4th token's input is kept for the search (the mean |x| counts every token)
SEARCH_ROWS = 512  # of those, at most this many, evenly spread, weigh each candidate scale: minutes on a CPU at 1B
CALIBRATION_TILES = 2  # per image: the vision tower's time on a CPU, and still the image tokens' statistics
ASSETS = Path(__file__).resolve().parents[1] / "assets"
LAYER_KEY = "language_model.model.layers.{i}."
QUESTION = "Describe this picture in detail."
FOLLOW_UP = "What else do you notice?"
# Earlier answers in the calibration conversations: prose, lists, numbers, code and other languages,
# so that the statistics are not those of one kind of text.
ANSWERS = [
    "The picture shows a quiet street in the early morning. A cyclist in a yellow jacket waits at the "
    "crossing while a delivery van unloads crates of vegetables in front of a small grocery shop.",
    "Here are the steps:\n1. Open the settings page.\n2. Choose \"Display\" and set the scale to 125%.\n"
    "3. Restart the application so that the change takes effect.",
    "Revenue grew from $4.2 million in 2021 to $5.9 million in 2023, an increase of 40.5%. The largest "
    "quarter was Q3 2023 with $1.7 million, while Q1 2022 was the weakest at $0.9 million.",
    "```python\ndef moving_average(values, window):\n    total = sum(values[:window])\n    result = [total / window]\n"
    "    for i in range(window, len(values)):\n        total += values[i] - values[i - window]\n"
    "        result.append(total / window)\n    return result\n```",
    "La photo montre un marché animé: des fruits, des fleurs et des fromages. 图片中有一只猫坐在窗台上，"
    "阳光照在它的背上。 Auf dem Tisch liegen drei Bücher und eine Brille.",
    "Let x be the number of apples. Then 3x + 7 = 25, so 3x = 18 and x = 6. Checking: 3 * 6 + 7 = 25.",
    "User: Can you summarise the document?\nAssistant: The memo asks every team to submit its budget by "
    "Friday, lists the three approved suppliers, and reminds staff that travel needs prior approval.",
    "<ref>the red car</ref><box>[[120, 340, 410, 620]]</box> is parked next to <ref>a fire hydrant</ref>"
    "<box>[[450, 500, 520, 640]]</box>; the street sign above them reads MAIN ST.",
]


def default_images() -> list[str]:
    """The repository's example images (none when the package is installed without them)."""
    return sorted(str(p) for p in ASSETS.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def calibration_conversations(images: list[str]):
    """One conversation per answer of ANSWERS, the images taken in turn; each ends with a question."""
    from .conversation import Message

    conversations = []
    for i, answer in enumerate(ANSWERS):
        shown = [images[i % len(images)]] if images else []
        conversations.append([Message("user", QUESTION if shown else "Tell me about it.", shown),
                              Message("assistant", answer), Message("user", FOLLOW_UP)])
    return conversations


class InputRecorder:
    """Keeps, of the inputs x it is shown, the sum of |x| per channel over every token, and every
    ROW_STRIDE-th token's x (on the model's device, float32)."""

    def __init__(self):
        self.abs_sum, self.tokens, self.rows = None, 0, []

    def record(self, x: torch.Tensor) -> None:
        x = x.detach().flatten(0, -2).float()
        total = x.abs().sum(0)
        self.abs_sum = total if self.abs_sum is None else self.abs_sum + total
        start = (-self.tokens) % ROW_STRIDE
        self.rows.append(x[start::ROW_STRIDE])
        self.tokens += x.shape[0]

    def inputs(self) -> torch.Tensor:
        rows = torch.cat(self.rows)
        if len(rows) <= SEARCH_ROWS:
            return rows
        return rows[torch.linspace(0, len(rows) - 1, SEARCH_ROWS).round().long()]

    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / self.tokens


def search_scale(x: torch.Tensor, mean_abs: torch.Tensor, weights: list[torch.Tensor],
                 group_size: int) -> tuple[torch.Tensor, list[float]]:
    """(the per-input scale s for layers that read x [rows, in], the output error for each a of the grid).
    a = 0 gives s = 1, round-to-nearest: the scale found is never worse on these rows."""
    weight = torch.cat([w.float() for w in weights])
    reference = x @ weight.t()
    losses, best = [], None
    for i in range(GRID):
        s = mean_abs.pow(i / GRID).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        q, scale = quantize_groups(weight * s, group_size)
        loss = (x @ (dequantize(q, scale) / s).t() - reference).pow(2).mean().item()
        losses.append(loss)
        if best is None or loss < best[0]:
            best = (loss, s)
    return best[1], losses


def calibrate(path: Path, group_size: int, device: str | None = None, images: list[str] | None = None) -> Scaling:
    """AWQ's scales for the checkpoint at `path`, keyed as `Scaling` wants them. The model is loaded
    whole (by the engine, in its default dtype on `device`) for the calibration run."""
    from huggingface_hub.utils import tqdm

    from .config import GenerationSettings
    from .engine import Engine

    engine = Engine(str(path), device=device)
    engine.load()
    layers = engine.model.language_model.model.layers
    recorders, hooks = [], []
    for layer in layers:  # taps on the norms' outputs and down's input, whatever layout the Linear layers have
        taken = {name: InputRecorder() for name in ("attn", "mlp", "down")}
        recorders.append(taken)
        hooks += [layer.input_layernorm.register_forward_hook(lambda m, a, out, r=taken["attn"]: r.record(out)),
                  layer.post_attention_layernorm.register_forward_hook(lambda m, a, out, r=taken["mlp"]: r.record(out)),
                  layer.mlp.down_proj.register_forward_pre_hook(lambda m, args, r=taken["down"]: r.record(args[0]))]
    settings = GenerationSettings(max_tiles=CALIBRATION_TILES, temperature=0.0, max_new_tokens=1)
    try:
        for messages in tqdm(calibration_conversations(default_images() if images is None else images),
                             desc="calibration set", file=sys.stderr):
            list(engine.chat(messages, "", settings))
    finally:
        for hook in hooks:
            hook.remove()
    engine.unload()
    scaling = Scaling()
    with ExitStack() as stack:
        handles = [stack.enter_context(safe_open(f, framework="pt")) for f in weight_files(path)]
        stored = {key: handle for handle in handles for key in handle.keys()}
        for i, taken in enumerate(tqdm(recorders, desc="AWQ scales", file=sys.stderr)):
            _layer_scales(LAYER_KEY.format(i=i), stored, taken, group_size, scaling)
    return scaling


def _layer_scales(prefix: str, stored: dict, taken: dict, group_size: int, scaling: Scaling) -> None:
    """One decoder layer's scales, its weights read from the checkpoint (`stored`: key -> open file)."""
    for tap, (linears, feeder) in GROUPS.items():
        recorder = taken[tap]
        x = recorder.inputs()
        weights = [stored[f"{prefix}{name}.weight"].get_tensor(f"{prefix}{name}.weight").to(x.device)
                   for name in linears]
        s, _ = search_scale(x, recorder.mean_abs(), weights, group_size)
        for name in linears:
            scaling.columns[f"{prefix}{name}.weight"] = s.cpu()
        scaling.rows[f"{prefix}{feeder}"] = s.cpu()
