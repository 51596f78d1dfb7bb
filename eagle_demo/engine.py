"""The only owner of the loaded model: lazy loading, prompt assembly, streaming decode, KV reuse.

One conversation turn goes: files -> media.py (safe decode) -> preprocessing.py (tiles, prompt ids)
-> vision tower for images not seen before -> prefill of the part of the prompt that is not
already in the KV cache -> one token per step until `<|im_end|>`, the token limit or a cancel.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from . import media, preprocessing, wait
from .backend import Progress, no_progress
from .config import LIMITS, GenerationSettings, Limits
from .conversation import Message, checked_turns
from .decoding import Decoder, HostToken, TextStream, sample_next
from .errors import GenerationError, PromptError

log = logging.getLogger(__name__)

# What the caches of tiled images (host memory) and of image features (the model's device) may hold.
PIXEL_CACHE_BYTES = 512 << 20  # 16 images of 13 tiles
FEATURE_CACHE_BYTES = 512 << 20
# Tiles through the vision tower at once on a CPU: a 12-tile photo takes a minute there, so it goes
# in steps the user can watch, with a bounded peak of activations. A GPU takes them all at once.
CPU_VISION_CHUNK = 2
# Prompt tokens per prefill step on a CPU, for the same reasons: 8-12 % slower than one step at 1B
# (bench_decode's prefill_steps_ratio), the price of the progress and of the bounded peak.
CPU_PREFILL_CHUNK = 512


def _step(report: Progress, start: float, end: float, label: str) -> Progress:
    """A long step's progress (part of it done, what it does now) as a part of the load's."""
    return lambda part, detail: report(start + (end - start) * part, f"{label}: {detail}")


class _LRU:
    """A small thread-safe least-recently-used map: requests prepare media while another decodes.

    capacity is counted in `weigh(value)` units: entries by default, bytes for the tensor caches
    (a count alone would let a few big videos fill the memory). The newest entry always stays.
    """

    def __init__(self, capacity: int, weigh: Callable[[Any], int] = lambda value: 1):
        self.capacity, self.weigh = capacity, weigh
        self.used = 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key) -> bool:
        return key in self._items

    def get(self, key, default=None):
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key, value) -> None:
        with self._lock:
            if key in self._items:
                self.used -= self.weigh(self._items.pop(key))
            self._items[key] = value
            self.used += self.weigh(value)
            while self.used > self.capacity and len(self._items) > 1:
                self.used -= self.weigh(self._items.popitem(last=False)[1])

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.used = 0


def _pixel_bytes(value) -> int:
    """Bytes of a pixel-cache entry: an image's Visual, or a video's (frame Visuals, timestamps)."""
    visuals = value[0] if isinstance(value, tuple) else [value]
    return sum(v.pixel_values.nbytes for v in visuals)


class Engine:
    """Loads one Eagle2 checkpoint on first use and answers chat requests, one at a time."""

    def __init__(self, model: str, device: str | None = None, dtype: str | None = None,
                 load_8bit: bool = False, limits: Limits = LIMITS, use_cuda_graphs: bool | None = None,
                 attn: str = "sdpa", cpu_int8: bool = False, quantize: str | None = None):
        self.model_name = model
        self.attn = attn
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        self.load_8bit = load_8bit
        self.cpu_int8 = cpu_int8  # dynamic int8 Linear layers on a CPU (opt-in: not exact)
        self.quantize = quantize  # "int4" or "int8": weight-only language model layers made at load
        self.weights: str | None = None  # "4-bit weights" once a model with such layers is loaded
        self.limits = limits
        self.use_cuda_graphs = self.device.startswith("cuda") if use_cuda_graphs is None else use_cuda_graphs
        self.status = "not loaded"
        self.model = None
        self.tokenizer = None
        self.vision_calls = 0  # visuals sent through the vision tower since load
        self.tiles_encoded = 0
        self._path = None  # the checkpoint folder, once resolved
        # a CPU's cost per tile and per prompt token: the probe's (made when an estimate is first asked),
        # and what the latest turns measured, which takes its place
        self._probe_rates: wait.WaitRates | None = None
        self._measured_rates: dict[str, float] = {}
        self._weight_bytes: int | None = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()  # one decode at a time: the model and KV cache are shared
        self._pixels = _LRU(PIXEL_CACHE_BYTES, _pixel_bytes)  # visual key -> Visual (tiles)
        # visual key -> image features [tiles * tokens_per_tile, H], on the model's device
        self._features = _LRU(FEATURE_CACHE_BYTES, lambda features: features.nbytes)
        self._cached_sig: list = []  # what the KV cache holds, position by position
        self._digests = _LRU(1024)  # (path, size, mtime) -> content digest

    @property
    def loaded(self) -> bool:
        return self.model is not None

    # ------------------------------------------------------------------ loading
    def load(self, progress: Progress | None = None) -> bool:
        """Load the checkpoint once; later calls return at once. Safe to call from many threads.

        True when this call loaded it."""
        if self.model is not None:
            return False
        report = progress or (lambda fraction, text: None)
        step = partial(_step, report)

        with self._load_lock:
            if self.model is not None:
                return False
            from .model import load_eagle2, resolve_checkpoint
            from .model.loading import physical_cores, to_cpu_decode_layout, to_dynamic_int8
            from .model.quantized import describe_weights

            try:
                if self.cpu_int8 and (self.device != "cpu" or self.dtype not in (None, torch.float32)):
                    raise ValueError("--cpu-int8 works on a CPU in float32 only")  # before any download
                self.status = f"fetching {self.model_name}…"
                path = self._path = resolve_checkpoint(self.model_name, self._fetching(report))
                loading = f"loading {self.model_name} on {self.device}"
                self.status = f"{loading}…"
                report(0.3, self.status)
                if self.device == "cpu":
                    torch.set_num_threads(physical_cores())
                dtype = torch.float32 if self.cpu_int8 else self.dtype  # bfloat16 may be a CPU's default
                model = load_eagle2(path, device=self.device, dtype=dtype, load_in_8bit=self.load_8bit,
                                    attn=self.attn, progress=step(0.3, 0.8, loading), quantize=self.quantize)
                if self.cpu_int8:
                    to_dynamic_int8(model)
                elif self.device == "cpu":
                    to_cpu_decode_layout(model.language_model)
                tokenizer = preprocessing.load_tokenizer(path)
                self.tokens = preprocessing.PromptTokens.from_tokenizer(tokenizer)
                self._check_image_token(model)
                report(0.8, "preparing the decoder…")
                self.context = min(self.limits.context_tokens, model.config.text.max_position_embeddings)
                cache = model.language_model.new_cache(self.context)
                self.decoder = Decoder(model.language_model, cache, use_cuda_graphs=self.use_cuda_graphs)
            except Exception:
                self.status = "not loaded (the last attempt failed)"
                raise
            self.tokenizer, self.model = tokenizer, model
            self.stop_ids = {i for i in (self.tokens.im_end, self.tokens.im_start,
                                         tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
            self.weights = describe_weights(model)
            self.status = f"ready: {self.model_name} on {self.device}" + (f", {self.weights}" if self.weights else "")
            report(1.0, self.status)
            return True

    def _fetching(self, report: Progress) -> Progress:
        return _step(report, 0.05, 0.3, f"fetching {self.model_name}")

    def weight_bytes(self, progress: Progress | None = None) -> int:
        """Bytes the checkpoint's weights take once loaded in this engine's dtype (read once: on
        ZeroGPU it sizes every answer's GPU time, and resolving a hub id asks the Hub). `progress`
        hears the download, as in `load`, where this is what fetches a hub id."""
        if self._weight_bytes is None:
            from .model import resolve_checkpoint
            from .model.loading import default_dtype, weight_bytes

            path = resolve_checkpoint(self.model_name, progress and self._fetching(progress))
            self._weight_bytes = weight_bytes(path, self.dtype or default_dtype(self.device))
        return self._weight_bytes

    def free_memory(self) -> int | None:
        """Bytes free on this engine's device (None where that cannot be told)."""
        if self.device.startswith("cuda"):
            free, _ = torch.cuda.mem_get_info(self.device)
            return free + torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        try:
            with open("/proc/meminfo") as meminfo:
                return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
        except (OSError, StopIteration, ValueError):
            return None

    def _check_image_token(self, model) -> None:
        expected = model.config.image_token_index
        if expected is not None and expected != self.tokens.img_context:
            raise ValueError(f"config.json says the image token is {expected}, "
                             f"but the tokenizer has <IMG_CONTEXT> = {self.tokens.img_context}")

    def unload(self) -> None:
        """Free the model (e.g. before another one loads); the next request loads it again."""
        with self._load_lock, self._run_lock:
            self.model = self.tokenizer = self.decoder = None
            self._pixels.clear()
            self._features.clear()
            self._cached_sig = []
            self.status = "not loaded"
            _empty_cache(self.device)

    def _after_oom(self) -> None:
        """Free what a failed request held, so that the next one starts clean."""
        self._cached_sig = []
        self._features.clear()
        _empty_cache(self.device)

    def clear_caches(self) -> None:
        """Forget tiled images, image features and the KV cache's contents (the next turn starts cold)."""
        with self._run_lock:
            self._pixels.clear()
            self._features.clear()
            self._cached_sig = []

    # ------------------------------------------------------------------ the wait on a CPU
    def first_word_estimate(self, images: list[str], video: str | None,
                            settings: GenerationSettings) -> wait.WaitEstimate | None:
        """How long a CPU would work before the first word of a message with these images (files
        already checked) and video. None on a GPU, or before a hub checkpoint is fetched."""
        rates = self._rates()
        if rates is None:
            return None
        cfg = self._config()
        sizes = [media.image_size(p, self.limits) for p in images]
        frames = min(settings.num_frames, self.limits.max_video_frames) if video else 0
        max_tiles = _max_tiles(cfg, sizes, frames, settings,
                               min(self.limits.context_tokens, cfg.text.max_position_embeddings))
        tiles = frames + sum(preprocessing.count_tiles(w, h, max_tiles, cfg.tile_size, cfg.use_thumbnail)
                             for w, h in sizes)
        tokens = tiles * cfg.tokens_per_tile + wait.TEXT_TOKENS
        return wait.WaitEstimate(rates.seconds(tiles, tokens), tiles, tokens)

    def cpu_default_tiles(self) -> int | None:
        """On a CPU, the most tiles a typical photo may take for its first word within the target
        wait (at least 1); None on a GPU, where the settings' default stands."""
        rates = self._rates()
        if rates is None:
            return None
        cfg = self._config()
        for max_tiles in range(GenerationSettings().max_tiles, 1, -1):
            tiles = preprocessing.count_tiles(*wait.TYPICAL_PHOTO, max_tiles, cfg.tile_size, cfg.use_thumbnail)
            if rates.seconds(tiles, tiles * cfg.tokens_per_tile + wait.TEXT_TOKENS) <= wait.TARGET_FIRST_WORD_S:
                return max_tiles
        return 1

    def _config(self):
        from .model.config import Eagle2Config

        return self.model.config if self.model is not None else Eagle2Config.from_dir(self._path)

    def _rates(self) -> wait.WaitRates | None:
        """The matmul probe's rates (once per process), with what the turns measured in their place."""
        if self.device != "cpu":
            return None
        local = os.path.expanduser(self.model_name)
        self._path = self._path or (Path(local) if os.path.isdir(local) else None)  # never fetch for an estimate
        if self._probe_rates is None and self._path is not None:
            from .model.loading import default_dtype, parameter_counts

            cfg = self._config()
            vision, language = parameter_counts(self._path)
            dtype = torch.float32 if self.cpu_int8 else self.dtype or default_dtype("cpu")
            self._probe_rates = wait.probe_rates(
                vision, language, patches=(cfg.tile_size // cfg.siglip.patch_size) ** 2,
                vision_layers=cfg.siglip.num_hidden_layers, vision_width=cfg.siglip.hidden_size,
                flops_per_s=wait.matmul_flops_per_s(cfg.siglip.hidden_size, dtype))
        if self._probe_rates is None:
            return None
        return replace(self._probe_rates, **self._measured_rates, measured=bool(self._measured_rates))

    def _calibrate(self, timings: dict) -> None:
        """Keep what a turn measured (no probe here: this runs on the way to an answer's second token)."""
        if self.device == "cpu":
            self._measured_rates = {**self._measured_rates, **wait.measured_rates(timings)}

    # ------------------------------------------------------------------ requests
    def chat(self, messages: list[Message], system: str, settings: GenerationSettings | None = None,
             cancel: threading.Event | None = None, progress: Progress | None = None) -> "Generation":
        """Prepare a request (media, prompt) and return its Generation, which streams the answer.

        Raises MediaError or PromptError for requests the user must change; nothing is decoded
        until the Generation is iterated. `progress` hears the stages before the first token:
        the tiles read by the vision tower so far, then the prompt being read.
        """
        settings = settings or GenerationSettings()
        checked = checked_turns(messages, system, self.limits)
        self.load()
        t0 = time.perf_counter()
        sizes = [media.image_size(p, self.limits) for t in checked for p in t.question.images]
        frames = sum(min(settings.num_frames, self.limits.max_video_frames) for t in checked if t.question.video)
        max_tiles = _max_tiles(self.model.config, sizes, frames, settings, self.context)
        turns, size_of = [], iter(sizes)
        for user, answer in ((t.question, t.answer) for t in checked):
            images = [self._tiled_image(p, next(size_of), max_tiles) for p in user.images]
            frames, stamps = self._tiled_video(user.video, settings.num_frames) if user.video else ([], [])
            turns.append(preprocessing.Turn(user=user.text, images=images, frames=frames,
                                            timestamps=stamps, answer=answer))
        prompt = preprocessing.build_prompt(turns, system, self.tokenizer, self.model.config.tokens_per_tile)
        room = self.context - len(prompt.input_ids)
        if room < 1:
            raise PromptError(f"This conversation needs {len(prompt.input_ids):,} tokens, more than the "
                              f"model's {self.context:,}. Clear the chat or send fewer images.", 413)
        return Generation(self, prompt, settings, min(settings.max_new_tokens, room), cancel,
                          {"media_s": time.perf_counter() - t0}, progress or no_progress,
                          num_frames=len(turns[-1].frames))

    def _digest(self, path: str) -> str:
        stat = os.stat(path)
        memo_key = (path, stat.st_size, stat.st_mtime_ns)
        digest = self._digests.get(memo_key)
        if digest is None:
            digest = media.file_digest(path)
            self._digests.put(memo_key, digest)
        return digest

    def _tiled_image(self, path: str, size: tuple[int, int], max_tiles: int) -> preprocessing.Visual:
        cfg = self.model.config
        key = f"{self._digest(path)}:tiles{max_tiles}"
        visual = self._pixels.get(key)
        if visual is None:
            cols, rows = preprocessing.choose_grid(*size, 1, max_tiles, cfg.tile_size)
            # a big JPEG may decode at reduced scale, as long as it stays larger than the tiles
            img = media.open_image(path, self.limits, min_size=(cols * cfg.tile_size, rows * cfg.tile_size))
            pixels = preprocessing.tile_image(img, max_tiles, cfg.tile_size, cfg.use_thumbnail, source_size=size)
            visual = preprocessing.Visual(pixel_values=pixels, key=key)
            self._pixels.put(key, visual)
        return visual

    def _tiled_video(self, path: str, num_frames: int) -> tuple[list[preprocessing.Visual], list[float]]:
        """Sampled frames, one tile each (as upstream: no tiling, no thumbnail), and their times."""
        tile_size = self.model.config.tile_size
        num_frames = min(num_frames, self.limits.max_video_frames)
        key = f"{self._digest(path)}:frames{num_frames}"
        cached = self._pixels.get(key)
        if cached is None:
            clip = media.sample_video(path, num_frames, self.limits, frame_size=(tile_size, tile_size))
            frames = [preprocessing.Visual(preprocessing.tile_image(f, 1, tile_size, False), f"{key}:{i}")
                      for i, f in enumerate(clip.frames)]
            cached = (frames, clip.timestamps)
            self._pixels.put(key, cached)
        return cached

    # ------------------------------------------------------------------ model work (under _run_lock)
    def _embed_prompt(self, prompt: preprocessing.Prompt, progress: Progress = no_progress) -> torch.Tensor:
        lm = self.model.language_model
        ids = torch.tensor(prompt.input_ids, device=self.device)
        embeds = lm.embed(ids[None])
        if prompt.visuals:
            found = {v.key: self._features.get(v.key) for v in prompt.visuals}
            new = list({v.key: v for v in prompt.visuals if found[v.key] is None}.values())
            if new:
                encoded = self._encode(torch.cat([v.pixel_values for v in new]), progress)
                self.vision_calls += len(new)
                for v, feats in zip(new, encoded.split([v.pixel_values.shape[0] for v in new])):
                    found[v.key] = feats.flatten(0, 1)
                    self._features.put(v.key, found[v.key])
            feats = torch.cat([found[v.key] for v in prompt.visuals])
            positions = (ids == self.tokens.img_context).nonzero().squeeze(1)
            if positions.numel() != feats.shape[0]:
                raise RuntimeError(f"{positions.numel()} image tokens in the prompt for {feats.shape[0]} features")
            embeds[0, positions] = feats.to(embeds.dtype)
        return embeds

    def _encode(self, pixels: torch.Tensor, progress: Progress) -> torch.Tensor:
        """Image features of `pixels` [N, 3, H, W], in chunks on a CPU, reported as they are done."""
        chunk = CPU_VISION_CHUNK if self.device == "cpu" else len(pixels)
        parts = []
        for start in range(0, len(pixels), chunk):
            progress(start / len(pixels), f"reading the images: {start} of {len(pixels)} tiles")
            parts.append(self.model.encode_images(pixels[start:start + chunk].to(self.device)))
        self.tiles_encoded += len(pixels)
        return torch.cat(parts)

    def _prefill(self, prompt: preprocessing.Prompt, embeds: torch.Tensor,
                 progress: Progress = no_progress) -> tuple[torch.Tensor, int]:
        """Run the part of the prompt the KV cache does not hold yet; return last logits and reuse."""
        sig = _signature(prompt, self.tokens.img_context)
        reuse = _common_prefix(self._cached_sig, sig, limit=len(sig) - 1)
        self._cached_sig = []  # invalid until this prefill completes
        chunk = CPU_PREFILL_CHUNK if self.device == "cpu" else len(sig)
        for start in range(reuse, len(sig), chunk):
            progress((start - reuse) / (len(sig) - reuse),
                     f"reading the prompt: {start - reuse:,} of {len(sig) - reuse:,} tokens")
            positions = torch.arange(start, min(start + chunk, len(sig)), device=self.device)
            hidden = self.model.language_model(embeds[:, start:start + chunk], positions, self.decoder.cache)
        self._cached_sig = sig
        return self.model.language_model.logits(hidden[0, -1]), reuse


class Generation:
    """Iterate for the answer's text deltas. Afterwards: text, token ids, tile counts and timings."""

    def __init__(self, engine: Engine, prompt, settings: GenerationSettings, max_new_tokens: int,
                 cancel: threading.Event | None, timings: dict, progress: Progress, num_frames: int = 0):
        self.engine, self.prompt, self.settings, self.progress = engine, prompt, settings, progress
        self.max_new_tokens = max_new_tokens
        self.cancel = cancel or threading.Event()
        self.timings = timings
        self.prompt_token_ids = prompt.input_ids
        self.num_tiles = prompt.num_tiles  # per visual, video frames included
        self.num_frames = num_frames  # of the video asked about now
        self.token_ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None  # "stop", "length" or "cancelled"

    def __iter__(self) -> Iterator[str]:
        # Each step runs in its own inference_mode block: a generator may be resumed on another
        # thread (Gradio's workers), where a mode entered before a `yield` would not hold.
        with self.engine._run_lock:
            # perf_counter() stamps of the run lock taken and released: runs never overlap
            self.timings["run_start"] = time.perf_counter()
            try:
                if self.cancel.is_set():  # cancelled while it waited for the engine: no prefill
                    self.finish_reason = "cancelled"
                    return
                self._begin()
                while (delta := self._advance()) is not None:
                    if delta:
                        self.text += delta
                        yield delta
            except GeneratorExit:  # the consumer stopped listening
                self.finish_reason = "cancelled"
                raise
            except torch.OutOfMemoryError:
                self.engine._after_oom()
                raise GenerationError("The GPU ran out of memory for this request. Try fewer image tiles or "
                                      "video frames, or a shorter conversation.") from None
            finally:
                self.timings["run_end"] = time.perf_counter()
        if self._t_first is not None and len(self.token_ids) > 1:
            self.timings["decode_tokens_per_s"] = (len(self.token_ids) - 1) / (time.perf_counter() - self._t_first)

    @torch.inference_mode()
    def _begin(self) -> None:
        engine = self.engine
        self._t_start, tiles_before = time.perf_counter(), engine.tiles_encoded
        embeds = engine._embed_prompt(self.prompt, self.progress)
        _sync(engine.device)
        self._t_prefill = time.perf_counter()
        self._logits, reuse = engine._prefill(self.prompt, embeds, self.progress)
        self.timings.update(vision_s=self._t_prefill - self._t_start, reused_tokens=reuse,
                            prefill_tokens=len(self.prompt_token_ids) - reuse,
                            encoded_tiles=engine.tiles_encoded - tiles_before)
        device = self._logits.device
        self._generated = torch.empty(self.max_new_tokens, dtype=torch.long, device=device)
        self._random = None if self.settings.seed is None else torch.Generator(device).manual_seed(self.settings.seed)
        self._stream = TextStream(engine.tokenizer)
        self._host_token = HostToken(device)
        self._pos = len(self.prompt_token_ids)
        self._t_first = None
        self._done = False

    @torch.inference_mode()
    def _advance(self) -> str | None:
        """Pick one token and feed it to the model; return its text delta, None when finished."""
        engine = self.engine
        if self._done:
            return None
        if self.cancel.is_set():
            return self._finish("cancelled")
        n = len(self.token_ids)
        token = sample_next(self._logits, self._generated[:n], self.settings, self._random)
        self._generated[n] = token
        self._host_token.start(token)
        last = n + 1 >= self.max_new_tokens or self._pos >= engine.context
        ahead = not last and self._host_token.overlaps
        if ahead:  # queued before the host reads the token: the GPU works while the host checks it
            self._logits = engine.decoder.step(token, self._pos)
        token_id = self._host_token.read()
        if self._t_first is None:
            self._t_first = time.perf_counter()
            self.timings["prefill_s"] = self._t_first - self._t_prefill
            self.timings["ttft_s"] = self.timings["media_s"] + self._t_first - self._t_start
            engine._calibrate(self.timings)
        if token_id in engine.stop_ids:  # a step run ahead for it wrote past what the cache is known to hold
            return self._finish("stop")
        self.token_ids.append(token_id)
        delta = self._stream.push(token_id)
        if last:
            return delta + self._finish("length")
        if not ahead:
            self._logits = engine.decoder.step(token, self._pos)
        engine._cached_sig.append(token_id)
        self._pos += 1
        return delta

    def _finish(self, reason: str) -> str:
        self.finish_reason, self._done = reason, True
        return self._stream.flush()


def _max_tiles(cfg, sizes: list[tuple[int, int]], frames: int, settings: GenerationSettings, context: int) -> int:
    """The tiles per image of a conversation with images of `sizes` and `frames` video frames."""
    return preprocessing.fit_tiles_to_context(sizes, frames, settings.max_tiles, context, cfg.tile_size,
                                              cfg.tokens_per_tile, cfg.use_thumbnail, cfg.dynamic_image_size)


def _signature(prompt: preprocessing.Prompt, img_context: int) -> list:
    """The prompt position by position, each image token named by the image it carries."""
    sig: list = list(prompt.input_ids)
    visuals = iter(prompt.visuals)
    i = 0
    while i < len(sig):
        if sig[i] != img_context:
            i += 1
            continue
        end = i
        while end < len(sig) and sig[end] == img_context:
            end += 1
        sig[i:end] = [next(visuals).key] * (end - i)
        i = end
    return sig


def _common_prefix(a: list, b: list, limit: int) -> int:
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _empty_cache(device: str) -> None:
    if device.startswith("cuda"):
        with torch.cuda.device(device):
            torch.cuda.empty_cache()
