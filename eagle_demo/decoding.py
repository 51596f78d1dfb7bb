"""The per-token machinery: one decode step (eager, compiled, or either replayed as a CUDA graph),
sampling, detokenising."""

from __future__ import annotations

import logging
import threading

import torch

from .config import GenerationSettings
from .model.attention import CausalFrom, FilledLength, filled_length_kernel
from .preprocessing import GROUNDING_TOKENS

log = logging.getLogger(__name__)

# Attention spans of a one-token step on CUDA. A step at position p attends over the smallest span
# above p (its filled length read on the device), so the kernels see a handful of shapes instead of
# one per token, and each span's step is captured once per loaded model as a CUDA graph.
ATTEND_BUCKETS = (1024, 2048, 4096, 8192, 16384, 32768)
# Failed captures a decoder retries (each at the next step that needs its span) before it decodes
# eagerly for good: a capture can fail for a passing reason, such as another thread's device work.
CAPTURE_TRIES = 3
# PyTorch allows one graph capture at a time in a process: models loading or retrying at once queue.
_CAPTURE_LOCK = threading.Lock()


class Decoder:
    """Runs one-token steps of a Qwen2LM over its static KV cache.

    On CUDA (or whenever graphs or compiling are asked for) a step attends over a bucketed span and
    replays the span's captured graph, or runs the same step where the span has none. On CPU a step
    attends over the filled positions only: there are no kernel plans to reuse there.

    compile_backend (torch.compile's, e.g. "inductor"): the step runs under torch.compile, compiled
    once per span (its shapes never change), and a CUDA graph captures the compiled step. If
    compiling fails, the step runs eagerly from then on, with a log line.
    """

    def __init__(self, lm, cache, use_cuda_graphs: bool, compile_backend=None):
        self.lm, self.cache = lm, cache
        self.device = cache.device
        self.bucketed = use_cuda_graphs or compile_backend is not None or self.device.type == "cuda"
        self.spans = [s for s in ATTEND_BUCKETS if s < cache.max_len] + [cache.max_len]
        kernel = filled_length_kernel(self.device, cache.k[0].dtype)
        self.attention = {span: FilledLength(kernel, span, self.device) for span in self.spans}
        # static inputs of every step: a replayed graph reads them where it was captured
        self._token = torch.zeros(1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(1, dtype=torch.long, device=self.device)  # 0: no prompt is cached yet
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.capture_failures = 0
        self.compiled = _compiled_step(compile_backend, len(self.spans)) if compile_backend else None
        self.captures = use_cuda_graphs
        for span in self.spans if self.captures else ():
            if not self._capture(span):
                break

    def _forward_one(self, token: torch.Tensor, pos: torch.Tensor, attention) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(self.lm, self.cache, token, pos, attention)
            except Exception as e:
                from torch._dynamo.exc import TorchDynamoException

                if not isinstance(e, TorchDynamoException):  # the step's own error (a failed capture, memory)
                    raise
                _compile_failed(e)  # a backend or an op that cannot compile: the same step, eagerly
                self.compiled = None
        return _one_token(self.lm, self.cache, token, pos, attention)

    def step(self, token: torch.Tensor, pos: int) -> torch.Tensor:
        """Feed `token` at position `pos`; return the logits for position `pos + 1`.

        A replayed graph returns its static logits: read them before the next step.
        """
        self._pos.fill_(pos)
        if not self.bucketed:
            return self._forward_one(token, self._pos, CausalFrom(pos))
        span = next(s for s in self.spans if s > pos)
        attention = self.attention[span]
        attention.filled.fill_(pos + 1)
        self._token.copy_(token.view(1))
        if span not in self.graphs and not (self.captures and self._capture(span)):
            return self._forward_one(self._token, self._pos, attention)
        graph, logits = self.graphs[span]
        graph.replay()
        return logits

    def _capture(self, span: int) -> bool:
        """Capture the step of `span` over the current static inputs (its warm-up runs write the same
        keys and values the step does); False, retried later, if it failed."""
        try:
            with _CAPTURE_LOCK:
                self._capture_span(span)
            return True
        except Exception as e:  # e.g. a layer that cannot be captured, or other work on the device
            self.capture_failures += 1
            self.captures = self.capture_failures < CAPTURE_TRIES
            log.warning("CUDA graph capture failed (%s); decoding eagerly, %s", e,
                        "retried at a later step" if self.captures else "for good")
            return False

    @torch.inference_mode()
    def _capture_span(self, span: int) -> None:
        device, attention = self.device, self.attention[span]
        # On the model's GPU, whichever is current; the outer stream context puts this thread back on
        # its own stream even when a capture fails half-way (torch.cuda.graph's exit then skips that).
        with torch.cuda.device(device), torch.cuda.stream(torch.cuda.current_stream(device)):
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up: lazy kernel and workspace set-up must not be captured
                for _ in range(2):
                    self._forward_one(self._token, self._pos, attention)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            pool = next(iter(self.graphs.values()))[0].pool() if self.graphs else None
            # thread_local: other threads' device work (another model loading or answering) must not
            # invalidate this capture, as it does in the default global mode
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                logits = self._forward_one(self._token, self._pos, attention)
            self.graphs[span] = (graph, logits)


def _one_token(lm, cache, token: torch.Tensor, pos: torch.Tensor, attention) -> torch.Tensor:
    """The logits after feeding `token` [1] at position `pos` [1]; keys and values go into `cache`."""
    hidden = lm(lm.embed(token.view(1, 1)), pos, cache, attention)
    return lm.logits(hidden[0, -1])


def _compiled_step(backend, spans: int):
    """`_one_token` under torch.compile. Each span's step is compiled once (its own shapes), and so
    are the steps of every other model loaded, now or before (an unloaded model's variants stay):
    torch.compile keeps and counts its compiled variants per function, so its limit is raised at
    each load to hold them all rather than send a reloaded model back to eager decoding."""
    import torch._dynamo.config

    try:
        compiled = torch.compile(_one_token, backend=backend, dynamic=False)
    except Exception as e:  # e.g. a backend this PyTorch lacks
        _compile_failed(e)
        return None
    torch._dynamo.config.recompile_limit += spans
    return compiled


def _compile_failed(e: Exception) -> None:
    log.warning("compiling the decode step failed (%s: %s); decoding eagerly", type(e).__name__, e)


class HostToken:
    """Reads a sampled token id on the host without waiting for the work queued after it.

    On CUDA: a non-blocking copy into pinned memory and an event, so the next decode step runs on
    the GPU while the host checks stop tokens and detokenises. On CPU there is nothing to overlap.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._token: torch.Tensor | None = None
        if device.type == "cuda":
            self._host = torch.empty(1, dtype=torch.long, pin_memory=True)
            self._ready = torch.cuda.Event()

    @property
    def overlaps(self) -> bool:
        """Whether the next step should be queued before the host reads this token."""
        return self.device.type == "cuda"

    def start(self, token: torch.Tensor) -> None:
        self._token = token
        if self.device.type == "cuda":
            self._host.copy_(token.view(1), non_blocking=True)
            self._ready.record(torch.cuda.current_stream(self.device))

    def read(self) -> int:
        if self.device.type != "cuda":
            return int(self._token)
        self._ready.synchronize()
        return int(self._host[0])


def sample_next(logits: torch.Tensor, generated: torch.Tensor, s: GenerationSettings,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token id (a 0-d tensor on the logits' device) from float32 logits [V].

    As transformers' generate does when given only embeddings (which is how upstream calls it):
    the repetition penalty covers the ids `generated` so far, then temperature, top-k and top-p.
    """
    if s.repetition_penalty != 1.0 and generated.numel():
        picked = logits[generated]
        penalised = torch.where(picked > 0, picked / s.repetition_penalty, picked * s.repetition_penalty)
        logits = logits.index_put((generated,), penalised)
    if s.temperature <= 0:
        return logits.argmax()
    k = s.top_k if 0 < s.top_k < logits.shape[-1] else logits.shape[-1]
    if k == logits.shape[-1] and s.top_p >= 1.0:  # nothing cut: no sort of the whole vocabulary (151,674 ids)
        return torch.multinomial((logits / s.temperature).softmax(-1), 1, generator=generator)[0]
    values, ids = torch.topk(logits, k)  # sorted, highest first; dividing by T after keeps the order
    probs = (values / s.temperature).softmax(-1)
    if s.top_p < 1.0:
        outside = (probs.cumsum(-1) - probs) > s.top_p  # keeps the smallest prefix reaching top_p
        probs = probs.masked_fill(outside, 0.0)
    choice = torch.multinomial(probs, 1, generator=generator)
    return ids.gather(0, choice)[0]  # tensor indices only: no host sync


class TextStream:
    """Turns generated ids into text deltas, holding back an unfinished multi-byte character."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        visible = set(tokenizer.convert_tokens_to_ids(list(GROUNDING_TOKENS)))
        self.hidden = set(tokenizer.all_special_ids) - visible
        self.ids: list[int] = []
        self.start = 0  # ids before this are already final text
        self.read = 0  # ids before this have been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        if token_id in self.hidden:
            return ""
        self.ids.append(token_id)
        done = self._decode(self.ids[self.start:self.read])
        text = self._decode(self.ids[self.start:])
        if len(text) <= len(done) or text.endswith("\ufffd"):
            return ""
        self.start, self.read = self.read, len(self.ids)
        return text[len(done):]

    def flush(self) -> str:
        done = self._decode(self.ids[self.start:self.read])
        text = self._decode(self.ids[self.start:])
        self.start = self.read = len(self.ids)
        return text[len(done):]
