"""What the tests and the benchmarks both need: the real Eagle2-1B tokenizer and configs (shipped in
tests/data, copied from the hub's nvidia/Eagle2-1B: data, not code) and transformers' twin of the
language model."""

from __future__ import annotations

from pathlib import Path

import torch

REFERENCE = Path(__file__).resolve().parent / "data" / "eagle2-1b"  # eagle_2_5_vl/, eagle_chat/, tokenizer/
REAL_TOKENIZER = REFERENCE / "tokenizer"


def transformers_twin(lm):
    """transformers' own Qwen2ForCausalLM holding the same weights as our Qwen2LM `lm`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    c = lm.config
    config = Qwen2Config(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                         num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                         num_key_value_heads=c.num_key_value_heads, rms_norm_eps=c.rms_norm_eps,
                         rope_theta=c.rope_theta, max_position_embeddings=c.max_position_embeddings,
                         tie_word_embeddings=False)
    weight = lm.lm_head.weight
    default = torch.get_default_dtype()
    torch.set_default_dtype(weight.dtype)
    try:
        with torch.device(weight.device):
            twin = Qwen2ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)
    missing, _ = twin.load_state_dict(lm.state_dict(), strict=False)
    assert not missing, missing
    return twin
