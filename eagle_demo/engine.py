"""The native backend's model: loads one checkpoint on first use, prepares each chat (files read and
tiled, prompt built) and hands it to a `generation.Generation`, which runs it on the loaded model.

One conversation turn goes: files -> media.py (safe decode) -> preprocessing.py (tiles, prompt ids)
-> generation.py (vision tower for images not seen before, prefill of what the KV cache lacks, one
token per step until `<|im_end|>`, the token limit or a cancel).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from . import media, preprocessing
from .backend import Progress, no_progress
from .config import LIMITS, GenerationSettings, Limits
from .conversation import Message, Turn, checked_turns
from .decoding import Decoder
from .errors import GenerationError, PromptError
from .generation import Generation, ModelRunner, Request, empty_device_cache
from .media_cache import TiledMedia
from .model.attention import pin_attention_backends
from .wait import CpuWait, WaitEstimate

__all__ = ["Engine", "GenerationError", "Message"]
log = logging.getLogger(__name__)


def _step(report: Progress, start: float, end: float, label: str) -> Progress:
    """A long step's progress (part of it done, what it does now) as a part of the load's."""
    return lambda part, detail: report(start + (end - start) * part, f"{label}: {detail}")


class Engine:
    """Loads one Eagle2 checkpoint on first use and answers chat requests, one at a time
    (a `backend.ChatModel`)."""

    def __init__(self, model: str, device: str | None = None, dtype: str | None = None,
                 load_8bit: bool = False, limits: Limits = LIMITS, use_cuda_graphs: bool | None = None,
                 attn: str = "sdpa", cpu_int8: bool = False, quantize: str | None = None,
                 compile_decode: bool = False):
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
        self.compile_decode = compile_decode  # the decode step under torch.compile, on CUDA (opt-in)
        self.status = "not loaded"
        self.model = None
        self.tokenizer = None
        self.runner: ModelRunner | None = None  # the loaded model's request work
        self.media = TiledMedia(limits)
        self.cpu_wait = CpuWait(torch.float32 if cpu_int8 else self.dtype)
        self._path: Path | None = None  # the checkpoint folder, once resolved
        self._weight_bytes: int | None = None
        self._load_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.model is not None

    @property
    def decoder(self) -> Decoder | None:
        return self.runner and self.runner.decoder

    @property
    def vision_calls(self) -> int:
        """Visuals sent through the vision tower since the model loaded."""
        return self.runner.vision_calls if self.runner else 0

    # ------------------------------------------------------------------ loading
    def load(self, progress: Progress | None = None) -> bool:
        """Load the checkpoint once; later calls return at once. Safe to call from many threads.

        True when this call loaded it."""
        if self.model is not None:
            return False
        report = progress or no_progress
        with self._load_lock:
            if self.model is not None:
                return False
            try:
                if self.cpu_int8 and (self.device != "cpu" or self.dtype not in (None, torch.float32)):
                    raise ValueError("--cpu-int8 works on a CPU in float32 only")  # before any download
                model, tokenizer, tokens = self._load_model(report)
                report(0.8, "preparing the decoder…")
                self.context = min(self.limits.context_tokens, model.config.text.max_position_embeddings)
                if self.device.startswith("cuda"):
                    pin_attention_backends()
                cache = model.language_model.new_cache(self.context)
                decoder = Decoder(model.language_model, cache, use_cuda_graphs=self.use_cuda_graphs,
                                  compile_backend=self._compile_backend())
            except Exception:
                self.status = "not loaded (the last attempt failed)"
                raise
            self.runner = ModelRunner(model, tokenizer, tokens, decoder)
            self.tokenizer, self.tokens, self.model = tokenizer, tokens, model
            self.stop_ids = {i for i in (tokens.im_end, tokens.im_start,
                                         tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
            from .model.quantized import describe_weights

            self.weights = describe_weights(model)
            self.status = f"ready: {self.model_name} on {self.device}" + (f", {self.weights}" if self.weights else "")
            report(1.0, self.status)
            return True

    def _compile_backend(self) -> str | None:
        """torch.compile's backend for the decode step: inductor on CUDA when asked for. A CPU's step
        stays eager: it attends over the filled positions only, which a compiled step could not."""
        if not self.compile_decode:
            return None
        if not self.device.startswith("cuda"):
            log.info("--compile applies to CUDA decoding; on %s the decode step runs eagerly", self.device)
            return None
        return "inductor"

    def _load_model(self, report: Progress):
        """The checkpoint fetched and loaded in this engine's layout, its tokenizer and special tokens."""
        from .model import load_eagle2, resolve_checkpoint
        from .model.loading import physical_cores, to_cpu_decode_layout, to_dynamic_int8

        self.status = f"fetching {self.model_name}…"
        path = self._path = resolve_checkpoint(self.model_name, self._fetching(report))
        loading = f"loading {self.model_name} on {self.device}"
        self.status = f"{loading}…"
        report(0.3, self.status)
        if self.device == "cpu":
            torch.set_num_threads(physical_cores())
        dtype = torch.float32 if self.cpu_int8 else self.dtype  # bfloat16 may be a CPU's default
        model = load_eagle2(path, device=self.device, dtype=dtype, load_in_8bit=self.load_8bit,
                            attn=self.attn, progress=_step(report, 0.3, 0.8, loading), quantize=self.quantize)
        if self.cpu_int8:
            to_dynamic_int8(model)
        elif self.device == "cpu":
            to_cpu_decode_layout(model.language_model)
        tokenizer = preprocessing.load_tokenizer(path)
        tokens = preprocessing.PromptTokens.from_tokenizer(tokenizer)
        expected = model.config.image_token_index
        if expected is not None and expected != tokens.img_context:
            raise ValueError(f"config.json says the image token is {expected}, "
                             f"but the tokenizer has <IMG_CONTEXT> = {tokens.img_context}")
        return model, tokenizer, tokens

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

    def kv_cache_bytes(self) -> int:
        """Bytes of the loaded model's KV cache (none before its first answer)."""
        return self.decoder.cache.nbytes if self.decoder else 0

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

    def unload(self) -> None:
        """Free the model (e.g. before another one loads); the next request loads it again."""
        with self._load_lock, (self.runner.lock if self.runner else nullcontext()):
            self.model = self.tokenizer = self.runner = None
            self.media.clear()
            self.status = "not loaded"
            empty_device_cache(torch.device(self.device))

    def clear_caches(self) -> None:
        """Forget tiled images, image features and the KV cache's contents (the next turn starts cold)."""
        with (self.runner.lock if self.runner else nullcontext()):
            self.media.clear()
            if self.runner:
                self.runner.forget()

    # ------------------------------------------------------------------ the wait on a CPU
    def first_word_estimate(self, images: list[str], video: str | None,
                            settings: GenerationSettings) -> WaitEstimate | None:
        """How long a CPU would work before the first word of a message with these images (files
        already checked) and video. None on a GPU, or before a hub checkpoint is fetched."""
        checkpoint = self._checkpoint_on_disk()
        if self.device != "cpu" or checkpoint is None:
            return None
        cfg = self._config()
        sizes = [media.image_size(p, self.limits) for p in images]
        frames = min(settings.num_frames, self.limits.max_video_frames) if video else 0
        context = min(self.limits.context_tokens, cfg.text.max_position_embeddings)
        return self.cpu_wait.estimate(checkpoint, cfg, sizes, frames, _max_tiles(cfg, sizes, frames, settings, context))

    def cpu_default_tiles(self) -> int | None:
        """On a CPU, the most tiles a typical photo may take for its first word within the target
        wait (at least 1); None on a GPU, where the settings' default stands."""
        checkpoint = self._checkpoint_on_disk()
        if self.device != "cpu" or checkpoint is None:
            return None
        return self.cpu_wait.default_tiles(checkpoint, self._config(), GenerationSettings().max_tiles)

    def _checkpoint_on_disk(self) -> Path | None:
        """The checkpoint folder where it is on disk already (an estimate never fetches one)."""
        local = os.path.expanduser(self.model_name)
        self._path = self._path or (Path(local) if os.path.isdir(local) else None)
        return self._path

    def _config(self):
        from .model.config import Eagle2Config

        return self.model.config if self.model is not None else Eagle2Config.from_dir(self._path)

    # ------------------------------------------------------------------ requests
    def chat(self, messages: list[Message], system: str, settings: GenerationSettings | None = None,
             cancel: threading.Event | None = None, progress: Progress | None = None) -> Generation:
        """Prepare a request (media, prompt) and return its Generation, which streams the answer.

        Raises MediaError or PromptError for requests the user must change; nothing is decoded
        until the Generation is iterated. `progress` hears the stages before the first token:
        the tiles read by the vision tower so far, then the prompt being read.
        """
        return self.answer(self.prepare(messages, system, settings), cancel, progress)

    def prepare(self, messages: list[Message], system: str, settings: GenerationSettings | None = None) -> Request:
        """The conversation checked, its files read and tiled and its prompt built: everything before
        the model runs. Raises MediaError or PromptError for what the user must change."""
        settings = settings or GenerationSettings()
        checked = checked_turns(messages, system, self.limits)
        self.load()
        t0 = time.perf_counter()
        visuals = self._tiled(checked, settings)
        prompt = preprocessing.build_prompt(checked, visuals, system, self.tokenizer, self.model.config.tokens_per_tile)
        room = self.context - len(prompt.input_ids)
        if room < 1:
            raise PromptError(f"This conversation needs {len(prompt.input_ids):,} tokens, more than the "
                              f"model's {self.context:,}. Clear the chat or send fewer images.", 413)
        video = checked[-1].question.video
        return Request(prompt, settings, min(settings.max_new_tokens, room),
                       num_frames=len(visuals[video].frames) if video else 0, media_s=time.perf_counter() - t0)

    def _tiled(self, turns: list[Turn], settings: GenerationSettings) -> dict:
        """Each file of the conversation, tiled: path -> Visual (an image) or TiledVideo."""
        cfg = self.model.config
        paths = [p for t in turns for p in t.question.images]
        sizes = [media.image_size(p, self.limits) for p in paths]
        frames = sum(min(settings.num_frames, self.limits.max_video_frames) for t in turns if t.question.video)
        max_tiles = _max_tiles(cfg, sizes, frames, settings, self.context)
        size_of, visuals = dict(zip(paths, sizes)), {}
        for turn in turns:
            for path in turn.question.images:
                visuals[path] = self.media.image(path, size_of[path], max_tiles, cfg.tile_size, cfg.use_thumbnail)
            if turn.question.video:
                visuals[turn.question.video] = self.media.video(turn.question.video, settings.num_frames,
                                                                cfg.tile_size)
        return visuals

    def answer(self, request: Request, cancel: threading.Event | None = None,
               progress: Progress | None = None) -> Generation:
        """The Generation of a prepared request (nothing runs until it is iterated)."""
        self.load()
        calibrate = self.cpu_wait.calibrate if self.device == "cpu" else None
        return Generation(self.runner, request, self.stop_ids, cancel, progress or no_progress, calibrate)


def _max_tiles(cfg, sizes: list[tuple[int, int]], frames: int, settings: GenerationSettings, context: int) -> int:
    """The tiles per image of a conversation with images of `sizes` and `frames` video frames."""
    return preprocessing.fit_tiles_to_context(sizes, frames, settings.max_tiles, context, cfg.tile_size,
                                              cfg.tokens_per_tile, cfg.use_thumbnail, cfg.dynamic_image_size)
