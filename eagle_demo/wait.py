"""How long a CPU works before an answer's first word: the vision tower per tile, then the prefill
per prompt token. Until an engine's own turns measure both, they come from this CPU's measured
matmul speed and the checkpoint's parameter counts (a vision transformer and a prefill are almost
all matmuls). On a GPU the wait is a few seconds at most, and nothing here is used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

# The wait the CPU tile default aims for, for a typical photo (4:3) and a short question.
TARGET_FIRST_WORD_S = 10.0
TYPICAL_PHOTO = (1600, 1200)
TEXT_TOKENS = 40  # the chat template and a short question


@dataclass(frozen=True)
class WaitRates:
    tile_s: float  # one tile through the vision tower
    token_s: float  # one prompt token through the prefill
    measured: bool = False  # from the engine's own turns, not the matmul probe

    def seconds(self, tiles: int, tokens: int) -> float:
        return tiles * self.tile_s + tokens * self.token_s


@dataclass(frozen=True)
class WaitEstimate:
    seconds: float
    tiles: int
    prompt_tokens: int


def matmul_flops_per_s(width: int, dtype, rows: int = 1024) -> float:
    """This CPU's speed on the shape that dominates a vision transformer: its MLP's first matmul."""
    import torch  # here, not at import: the UI words its notes with this module, without torch

    a, b = torch.randn(rows, width, dtype=dtype), torch.randn(width, 4 * width, dtype=dtype)
    torch.mm(a, b)  # warm-up: thread pool and packing buffers
    runs, start = 0, time.perf_counter()
    while runs < 2 or time.perf_counter() - start < 0.2:
        torch.mm(a, b)
        runs += 1
    return runs * 2 * rows * width * 4 * width / (time.perf_counter() - start)


def probe_rates(vision_params: int, language_params: int, patches: int, vision_layers: int, vision_width: int,
                flops_per_s: float) -> WaitRates:
    """Rates from FLOP counts: 2 per parameter per position, plus the tower's attention over its
    patches (a tile's prompt tokens attend over a few thousand positions at most: left out)."""
    tile_flops = 2 * vision_params * patches + 4 * vision_layers * patches ** 2 * vision_width
    return WaitRates(tile_s=tile_flops / flops_per_s, token_s=2 * language_params / flops_per_s)


def measured_rates(timings: dict) -> dict[str, float]:
    """What a turn measured, as WaitRates fields: its vision tower time per tile encoded, and its
    prefill time per token (each when there was enough of it to time)."""
    rates = {}
    if timings.get("encoded_tiles"):
        rates["tile_s"] = timings["vision_s"] / timings["encoded_tiles"]
    if timings.get("prefill_tokens", 0) >= 64 and "prefill_s" in timings:
        rates["token_s"] = timings["prefill_s"] / timings["prefill_tokens"]
    return rates


def describe(estimate: WaitEstimate, loaded: bool) -> str:
    """The note the UI shows before sending, and the CLI prints to stderr."""
    text = (f"First word in about {_rounded(estimate.seconds)} on this CPU "
            f"({estimate.tiles} image tiles, {estimate.prompt_tokens:,} prompt tokens)")
    if estimate.seconds > 2 * TARGET_FIRST_WORD_S and estimate.tiles > 1:
        text += "; fewer tiles or frames is faster"
    return text + ("." if loaded else ", after the model has loaded.")


def _rounded(seconds: float) -> str:
    if seconds < 1.5:
        return "1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"
