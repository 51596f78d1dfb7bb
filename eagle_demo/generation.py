"""One request's run on a loaded model: the vision tower for the images it has not seen, the prefill
of the part of the prompt the KV cache does not hold yet, then one token per step until `<|im_end|>`,
the token limit or a cancel.

`ModelRunner` holds what outlives a request (image features, what the KV cache holds) and runs one
request at a time; a `Generation` is one request, streamed by iterating it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .backend import Progress, no_progress
from .config import GenerationSettings
from .decoding import Decoder, HostToken, TextStream, sample_next
from .errors import GenerationError
from .media_cache import LRU
from .model.attention import CausalFrom
from .preprocessing import Prompt, PromptTokens, normalise

# What the cache of image features (on the model's device) may hold.
FEATURE_CACHE_BYTES = 512 << 20
# Tiles through the vision tower at once on a CPU: a 12-tile photo takes a minute there, so it goes
# in steps the user can watch, with a bounded peak of activations. A GPU takes them all at once.
CPU_VISION_CHUNK = 2
# Prompt tokens per prefill step on a CPU, for the same reasons: a little slower than one step
# (bench_decode's prefill_steps_ratio), the price of the progress and of the bounded peak.
CPU_PREFILL_CHUNK = 512


@dataclass
class Request:
    """A conversation ready for the model: its prompt (the tiles included), settings and limit."""

    prompt: Prompt
    settings: GenerationSettings
    max_new_tokens: int
    num_frames: int = 0  # of the video asked about now
    media_s: float = 0.0  # spent reading and tiling the files


class KVContents:
    """What the KV cache holds, position by position: a token id, or for each image token the key of
    the image it carries. Only what a finished prefill or decode step wrote counts."""

    def __init__(self):
        self._held: list = []

    def __len__(self) -> int:
        return len(self._held)

    def start_prefill(self, signature: list) -> int:
        """How many leading positions of `signature` the cache holds already (never the last: its
        logits pick the first token). What it holds is unknown until `filled`."""
        reuse = _common_prefix(self._held, signature, limit=len(signature) - 1)
        self._held = []
        return reuse

    def filled(self, signature: list) -> None:
        self._held = signature

    def append(self, token_id: int) -> None:
        self._held.append(token_id)

    def forget(self) -> None:
        self._held = []


class ModelRunner:
    """A loaded model's work for one request at a time (hold `lock` around it): image features
    (cached per visual), the prefill of what the KV cache lacks, one-token decode steps."""

    def __init__(self, model, tokenizer, tokens: PromptTokens, decoder: Decoder):
        self.model, self.tokenizer, self.tokens, self.decoder = model, tokenizer, tokens, decoder
        self.device = decoder.device
        self.context = decoder.cache.max_len  # positions the KV cache holds
        on_cpu = self.device.type == "cpu"
        self.vision_chunk = CPU_VISION_CHUNK if on_cpu else None  # tiles per vision tower call; None: all
        self.prefill_chunk = CPU_PREFILL_CHUNK if on_cpu else None  # prompt tokens per prefill step
        self.lock = threading.Lock()  # the model and its KV cache serve one request at a time
        # visual key -> image features [tiles * tokens_per_tile, H], on the model's device
        self.features = LRU(FEATURE_CACHE_BYTES, lambda features: features.nbytes)
        self.kv = KVContents()
        self.vision_calls = 0  # visuals sent through the vision tower
        self.tiles_encoded = 0

    def embed_prompt(self, prompt: Prompt, progress: Progress = no_progress) -> torch.Tensor:
        """The prompt's embeddings [1, L, H], image features in place of the image tokens."""
        ids = torch.tensor(prompt.input_ids, device=self.device)
        embeds = self.model.language_model.embed(ids[None])
        if prompt.visuals:
            found = {v.key: self.features.get(v.key) for v in prompt.visuals}
            new = list({v.key: v for v in prompt.visuals if found[v.key] is None}.values())
            if new:
                encoded = self._encode(self._upload([v.pixel_values for v in new]), progress)
                self.vision_calls += len(new)
                for v, feats in zip(new, encoded.split([v.pixel_values.shape[0] for v in new])):
                    found[v.key] = feats.flatten(0, 1)
                    self.features.put(v.key, found[v.key])
            feats = torch.cat([found[v.key] for v in prompt.visuals])
            positions = (ids == self.tokens.img_context).nonzero().squeeze(1)
            if positions.numel() != feats.shape[0]:
                raise RuntimeError(f"{positions.numel()} image tokens in the prompt for {feats.shape[0]} features")
            embeds[0, positions] = feats.to(embeds.dtype)
        return embeds

    def _upload(self, tiles: list[torch.Tensor]) -> torch.Tensor:
        """The tiles as one uint8 batch on the model's device; on CUDA through pinned memory, without
        blocking the host."""
        if self.device.type != "cuda":
            return torch.cat(tiles)
        staged = torch.empty((sum(len(t) for t in tiles), *tiles[0].shape[1:]), dtype=torch.uint8, pin_memory=True)
        return torch.cat(tiles, out=staged).to(self.device, non_blocking=True)

    def _encode(self, pixels: torch.Tensor, progress: Progress) -> torch.Tensor:
        """Image features of uint8 `pixels` [N, 3, H, W], normalised on the model's device, in chunks on
        a CPU, reported as they are done."""
        chunk = self.vision_chunk or len(pixels)
        parts = []
        for start in range(0, len(pixels), chunk):
            progress(start / len(pixels), f"reading the images: {start} of {len(pixels)} tiles")
            parts.append(self.model.encode_images(normalise(pixels[start:start + chunk])))
        self.tiles_encoded += len(pixels)
        return torch.cat(parts)

    def prefill(self, prompt: Prompt, embeds: torch.Tensor,
                progress: Progress = no_progress) -> tuple[torch.Tensor, int]:
        """Run the part of the prompt the KV cache does not hold yet; its last logits, and the
        positions reused."""
        signature = _signature(prompt, self.tokens.img_context)
        reuse = self.kv.start_prefill(signature)
        lm = self.model.language_model
        chunk = self.prefill_chunk or len(signature)
        for start in range(reuse, len(signature), chunk):
            progress((start - reuse) / (len(signature) - reuse),
                     f"reading the prompt: {start - reuse:,} of {len(signature) - reuse:,} tokens")
            positions = torch.arange(start, min(start + chunk, len(signature)), device=self.device)
            hidden = lm(embeds[:, start:start + chunk], positions, self.decoder.cache, CausalFrom(start))
        self.kv.filled(signature)
        return lm.logits(hidden[0, -1]), reuse

    def step(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        """Feed `token` at position `pos`; the logits for the next (see Decoder.step)."""
        return self.decoder.step(token, pos)

    def forget(self) -> None:
        """Forget the image features and what the KV cache holds: the next request starts cold."""
        self.kv.forget()
        self.features.clear()

    def after_out_of_memory(self) -> None:
        """Free what a failed request held, so that the next one starts clean."""
        self.forget()
        empty_device_cache(self.device)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class Generation:
    """Iterate for the answer's text deltas. Afterwards: text, token ids, tile counts and timings.

    on_first_token(timings): told the turn's timings once its first token is out."""

    def __init__(self, runner: ModelRunner, request: Request, stop_ids: set[int],
                 cancel: threading.Event | None = None, progress: Progress = no_progress,
                 on_first_token: Callable[[dict], None] | None = None):
        self.runner, self.request, self.stop_ids = runner, request, stop_ids
        self.prompt, self.settings, self.max_new_tokens = request.prompt, request.settings, request.max_new_tokens
        self.cancel = cancel or threading.Event()
        self.progress = progress
        self.on_first_token = on_first_token or (lambda timings: None)
        self.timings: dict = {"media_s": request.media_s}
        self.prompt_token_ids = self.prompt.input_ids
        self.num_tiles = self.prompt.num_tiles  # per visual, video frames included
        self.num_frames = request.num_frames
        self.token_ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None  # "stop", "length" or "cancelled"

    def __iter__(self) -> Iterator[str]:
        # Each step runs in its own inference_mode block: a generator may be resumed on another
        # thread (Gradio's workers), where a mode entered before a `yield` would not hold.
        with self.runner.lock:
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
                self.runner.after_out_of_memory()
                raise GenerationError("The GPU ran out of memory for this request. Try fewer image tiles or "
                                      "video frames, or a shorter conversation.") from None
            finally:
                self.timings["run_end"] = time.perf_counter()
        if self._t_first is not None and len(self.token_ids) > 1:
            self.timings["decode_tokens_per_s"] = (len(self.token_ids) - 1) / (time.perf_counter() - self._t_first)

    @torch.inference_mode()
    def _begin(self) -> None:
        runner = self.runner
        self._t_start, tiles_before = time.perf_counter(), runner.tiles_encoded
        embeds = runner.embed_prompt(self.prompt, self.progress)
        runner.sync()
        self._t_prefill = time.perf_counter()
        self._logits, reuse = runner.prefill(self.prompt, embeds, self.progress)
        self.timings.update(vision_s=self._t_prefill - self._t_start, reused_tokens=reuse,
                            prefill_tokens=len(self.prompt_token_ids) - reuse,
                            encoded_tiles=runner.tiles_encoded - tiles_before)
        device = self._logits.device
        self._generated = torch.empty(self.max_new_tokens, dtype=torch.long, device=device)
        self._random = None if self.settings.seed is None else torch.Generator(device).manual_seed(self.settings.seed)
        self._stream = TextStream(runner.tokenizer)
        self._host_token = HostToken(device)
        self._pos = len(self.prompt_token_ids)
        self._t_first = None
        self._done = False

    @torch.inference_mode()
    def _advance(self) -> str | None:
        """Pick one token and feed it to the model; return its text delta, None when finished."""
        runner = self.runner
        if self._done:
            return None
        if self.cancel.is_set():
            return self._finish("cancelled")
        n = len(self.token_ids)
        token = sample_next(self._logits, self._generated[:n], self.settings, self._random)
        self._generated[n] = token
        self._host_token.start(token)
        last = n + 1 >= self.max_new_tokens or self._pos >= runner.context
        ahead = not last and self._host_token.overlaps
        if ahead:  # queued before the host reads the token: the GPU works while the host checks it
            self._logits = runner.step(token, self._pos)
        token_id = self._host_token.read()
        if self._t_first is None:
            self._first_token()
        if token_id in self.stop_ids:  # a step run ahead for it wrote past what the cache is known to hold
            return self._finish("stop")
        self.token_ids.append(token_id)
        delta = self._stream.push(token_id)
        if last:
            return delta + self._finish("length")
        if not ahead:
            self._logits = runner.step(token, self._pos)
        runner.kv.append(token_id)
        self._pos += 1
        return delta

    def _first_token(self) -> None:
        self._t_first = time.perf_counter()
        self.timings["prefill_s"] = self._t_first - self._t_prefill
        self.timings["ttft_s"] = self.timings["media_s"] + self._t_first - self._t_start
        self.on_first_token(self.timings)

    def _finish(self, reason: str) -> str:
        self.finish_reason, self._done = reason, True
        return self._stream.flush()


def _signature(prompt: Prompt, img_context: int) -> list:
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


def empty_device_cache(device: torch.device) -> None:
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.empty_cache()
