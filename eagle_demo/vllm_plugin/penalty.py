"""The engine's repetition penalty in vLLM: over the answer's tokens alone.

vLLM's own `repetition_penalty` also covers the prompt's tokens (an image's context tokens, the system
prompt); upstream Eagle2 generates from embeddings, so its penalty covers only the tokens generated so
far, as the app's engine does (decoding.sample_next). A request asks for this one with
`vllm_xargs: {"answer_repetition_penalty": p}`, vLLM's own left at 1. It runs before vLLM's penalties,
temperature, top-k and top-p: the engine's order.
"""

from __future__ import annotations

import math

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

ARGUMENT = "answer_repetition_penalty"


class AnswerRepetitionPenalty(AdapterLogitsProcessor):
    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params):
        try:
            penalty = float((params.extra_args or {}).get(ARGUMENT, 1.0))
        except (TypeError, ValueError):  # not a number: vLLM's own penalty is the one that applies
            return None
        if penalty == 1.0 or not math.isfinite(penalty) or penalty <= 0:
            return None

        def penalise(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            if output_ids:
                ids = torch.tensor(output_ids, device=logits.device).unique()
                picked = logits[ids]
                logits[ids] = torch.where(picked > 0, picked / penalty, picked * penalty)
            return logits

        return penalise


def register() -> None:
    """Among vLLM's built-in logits processors, so that every server with the plugin has it, with no
    option to pass (it acts only on the requests that ask for it)."""
    from vllm.v1.sample import logits_processor

    if AnswerRepetitionPenalty not in logits_processor.BUILTIN_LOGITS_PROCESSORS:
        logits_processor.BUILTIN_LOGITS_PROCESSORS.append(AnswerRepetitionPenalty)
