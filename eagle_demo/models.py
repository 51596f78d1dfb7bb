"""The models an app serves, and the one policy for keeping them loaded.

- A model loads only when an answer needs it; showing a status never loads or unloads anything.
- Models stay loaded while they fit: before one loads, idle models are unloaded, least recently
  used first, until its weights fit in the device's free memory (or under `max_loaded` models).
- A model answering a request is never unloaded: a load that needs its memory waits until it is idle.
- Several models may load at the same time (loading builds on the meta device, per thread).

No torch at import (the engine module, and torch with it, load with the first model).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .backend import Progress
from .errors import UserError

# Room a model needs beyond its weights: the KV cache, activations, the vision tower's work.
HEADROOM = 1.3

# ZeroGPU's sizes of an answer's GPU time (`GpuTime`). Its worker decodes eagerly (no GPU exists
# when the models load, so no CUDA graph is captured).
MAX_GPU_SECONDS = 120  # ZeroGPU refuses a longer duration ("ZeroGPU illegal duration") to most visitors
WORKER_START_S = 5.0  # a forked worker's CUDA start before it moves the tensors
MOVE_BYTES_PER_S = 2e9  # spaces' move of the start-up tensors, from its disk packs to the GPU
ANSWER_START_S = 5.0  # the prompt's prefill and the first kernels' set-up
SECONDS_PER_TILE = 0.3  # an image tile or video frame: decoded, tiled, through the vision tower, prefilled
EAGER_STEP_S = 0.025  # an eager decode step launches ~1,100 kernels: their launch cost, the floor
EAGER_BYTES_PER_S = 1.5e12  # and it reads every weight once


def short_name(model: str) -> str:
    """The name users see: a hub id's model name, a local checkpoint's folder name."""
    return Path(model.rstrip("/")).name or model


def _hide_path(text: str, path: str, name: str) -> str:
    """`text` with the model's path, and any other absolute path, down to a name."""
    return re.sub(r"(?:/[\w.~-]+)+/([\w.-]+)", r"\1", text.replace(path, name))


class LoadError(UserError):
    """A model that cannot load as configured (not found, offline, a missing package)."""

    status = 503


def load_hint(model: str) -> str:
    """What to do when a hub checkpoint cannot be had (no network, say)."""
    if Path(model).exists():
        return ""
    return ("\n\nNo network? Make a tiny test checkpoint and serve it instead: "
            "`python -m eagle_demo tiny --out ./tiny-eagle2 && python app.py --model ./tiny-eagle2`, "
            "or pass `--model` a folder that holds a downloaded Eagle2 checkpoint.")


def public_names(models: list[str]) -> dict[str, str]:
    """{name clients see: hub id or checkpoint folder}; folders are never shown, only their names."""
    names: dict[str, str] = {}
    for model in models:
        name, n = short_name(model), 1
        while name in names:
            n += 1
            name = f"{short_name(model)} ({n})"
        names[name] = model
    return names


@dataclass(frozen=True)
class GpuTime:
    """The GPU time an answer may take on ZeroGPU, in its parts (seconds). The call cannot know
    whether spaces hands it a warm worker or forks a new one, so each answer counts a new worker's
    start: moving every loaded model's weights and KV cache to the GPU."""

    worker_start: float
    media: float
    prefill: float
    decode: float

    @classmethod
    def of(cls, menu: ModelMenu, name: str, max_new_tokens: int, tiles: int) -> GpuTime:
        per_token = EAGER_STEP_S + menu.model(name).weight_bytes() / EAGER_BYTES_PER_S
        return cls(worker_start=WORKER_START_S + menu.device_bytes() / MOVE_BYTES_PER_S,
                   media=tiles * SECONDS_PER_TILE, prefill=ANSWER_START_S, decode=max_new_tokens * per_token)

    @property
    def seconds(self) -> int:
        """Whole seconds to ask for, at most what ZeroGPU accepts."""
        return min(MAX_GPU_SECONDS, math.ceil(self.worker_start + self.media + self.prefill + self.decode))


class ModelMenu:
    """The native Backend: one Engine per model, made on first use; loads, unloads and counts them.
    Models go by the names clients see (`public_names`): a checkpoint's path stays on the server."""

    def __init__(self, models: list[str], max_loaded: int = 0, **engine_options):
        self._paths = public_names(models)
        self.names = list(self._paths)
        self.max_loaded = max_loaded  # 0: as many as fit in memory
        self.engine_options = engine_options
        self.loads: Counter = Counter()  # model name -> times loaded
        self.unloads: Counter = Counter()
        self._engines: dict = {}
        self._busy: Counter = Counter()  # model name -> answers using it now
        self._loading: set[str] = set()
        self._last_used: dict[str, float] = {}
        self._changed = threading.Condition()

    def checkpoint(self, name: str) -> str:
        """The hub id or folder a served model comes from (for the server's own use, never shown)."""
        return self._paths[name]

    def model(self, name: str):
        """The Engine of a served model (made, not loaded)."""
        if name not in self.names:
            raise KeyError(name)
        with self._changed:
            if name not in self._engines:
                from .engine import Engine

                self._engines[name] = Engine(self._paths[name], **self.engine_options)
            return self._engines[name]

    def loaded(self) -> list[str]:
        return [name for name, engine in self._engines.items() if engine.loaded]

    def status(self, name: str) -> str:
        """The model's state in words; never loads anything."""
        engine = self._engines.get(name)
        if engine is None or engine.status == "not loaded":
            return "not loaded (it loads with the first message)"
        return _hide_path(engine.status, self._paths[name], name)

    def gpu_seconds(self, name: str, max_new_tokens: int, tiles: int) -> int:
        """Seconds of GPU to ask ZeroGPU for an answer of `name` with up to `tiles` image tiles and
        video frames (it queues shorter requests first, checks them against the user's quota and
        aborts a task that overruns): see `GpuTime`."""
        return GpuTime.of(self, name, max_new_tokens, tiles).seconds

    def device_bytes(self) -> int:
        """Bytes of the loaded models' weights and KV caches: what a new ZeroGPU worker moves to the GPU."""
        return sum(self._engines[n].weight_bytes() + self._engines[n].kv_cache_bytes() for n in self.loaded())

    def preload(self) -> None:
        """Load every model now, with no memory check (ZeroGPU: models must be on CUDA at start-up,
        before any GPU memory can be measured)."""
        for name in self.names:
            if self.model(name).load():
                self.loads[name] += 1

    @contextmanager
    def use(self, name: str, progress: Progress | None = None) -> Iterator:
        """The loaded Engine of `name`, kept loaded until the block ends."""
        engine = self.model(name)
        with self._changed:
            self._busy[name] += 1
        try:
            if not engine.loaded:
                path = self._paths[name]  # its texts name the model by the name clients see, never its path
                told = progress and (lambda fraction, text: progress(fraction, _hide_path(text, path, name)))
                try:
                    self._make_room(name, engine, told)  # reads the checkpoint's size (downloading it if needed)
                    loaded = engine.load(told)
                except ValueError as e:  # CheckpointError and the loader's other checks
                    raise LoadError(f"Could not load {name}: {_hide_path(str(e), path, name)}"
                                    f"{load_hint(path)}") from e
                finally:
                    with self._changed:
                        self._loading.discard(name)
                if loaded:
                    self.loads[name] += 1
            yield engine
        finally:
            with self._changed:
                self._busy[name] -= 1
                self._last_used[name] = time.monotonic()
                self._changed.notify_all()

    def _make_room(self, name: str, engine, progress: Progress | None) -> None:
        """Unload idle models until `name` fits, then count it as loading (it takes its room now)."""
        need = None
        with self._changed:
            while True:
                others = [n for n in {*self.loaded(), *self._loading} if n != name]
                if not others:
                    break
                if need is None and not self.max_loaded:
                    self._changed.release()  # reading the size may download the checkpoint
                    try:
                        need = engine.weight_bytes(progress) * HEADROOM
                    finally:
                        self._changed.acquire()
                    continue
                if self._fits(len(others), need, engine):
                    break
                idle = [n for n in others if not self._busy[n] and n not in self._loading]
                if not idle:  # everything else is answering or loading: wait for one to finish
                    self._changed.wait(timeout=1.0)
                    continue
                oldest = min(idle, key=lambda n: self._last_used.get(n, 0.0))
                self._engines[oldest].unload()
                self.unloads[oldest] += 1
            self._loading.add(name)

    def _fits(self, loaded: int, need: float, engine) -> bool:
        if self.max_loaded:
            return loaded < self.max_loaded
        free = engine.free_memory()
        return free is not None and need <= free  # unknown free memory: keep one model
