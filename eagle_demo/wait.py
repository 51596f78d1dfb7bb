"""How long a CPU works before an answer's first word: the vision tower per tile, then the prefill
per prompt token. Until an engine's own turns measure both, they come from this CPU's measured
matmul speed and the checkpoint's parameter counts (a vision transformer and a prefill are almost
all matmuls). On a GPU the wait is a few seconds at most, and nothing here is used.

torch and the model code load inside the functions that need them: the UI words its notes with this
module, without torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model.config import Eagle2Config

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
    import torch

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


class CpuWait:
    """One checkpoint's wait before the first word on a CPU: the matmul probe's rates (made once,
    when an estimate is first asked for), each replaced by what the engine's own turns measured."""

    def __init__(self, dtype=None):
        self.dtype = dtype  # what the CPU multiplies in; None: the CPU's default
        self.probe_rates: WaitRates | None = None
        self.measured: dict[str, float] = {}  # WaitRates fields, from the latest turns

    def rates(self, checkpoint: Path, config: Eagle2Config) -> WaitRates:
        if self.probe_rates is None:
            from .model.loading import default_dtype, parameter_counts

            vision, language = parameter_counts(checkpoint)
            siglip = config.siglip
            self.probe_rates = probe_rates(
                vision, language, patches=(config.tile_size // siglip.patch_size) ** 2,
                vision_layers=siglip.num_hidden_layers, vision_width=siglip.hidden_size,
                flops_per_s=matmul_flops_per_s(siglip.hidden_size, self.dtype or default_dtype("cpu")))
        return replace(self.probe_rates, **self.measured, measured=bool(self.measured))

    def calibrate(self, timings: dict) -> None:
        """Keep what a turn measured (no probe here: this runs on the way to an answer's second token)."""
        self.measured = {**self.measured, **measured_rates(timings)}

    def estimate(self, checkpoint: Path, config: Eagle2Config, sizes: list[tuple[int, int]], frames: int,
                 max_tiles: int) -> WaitEstimate:
        """The wait for images of `sizes` at `max_tiles` tiles each, and `frames` video frames."""
        from .preprocessing import count_tiles

        tiles = frames + sum(count_tiles(w, h, max_tiles, config.tile_size, config.use_thumbnail) for w, h in sizes)
        tokens = tiles * config.tokens_per_tile + TEXT_TOKENS
        return WaitEstimate(self.rates(checkpoint, config).seconds(tiles, tokens), tiles, tokens)

    def default_tiles(self, checkpoint: Path, config: Eagle2Config, most: int) -> int:
        """The most tiles (up to `most`, at least 1) a typical photo may take for its first word
        within the target wait."""
        for max_tiles in range(most, 1, -1):
            if self.estimate(checkpoint, config, [TYPICAL_PHOTO], 0, max_tiles).seconds <= TARGET_FIRST_WORD_S:
                return max_tiles
        return 1


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
