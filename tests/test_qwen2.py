"""The native Qwen2 matches transformers' Qwen2ForCausalLM, whole-prompt and step by step."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import Qwen2Config, Qwen2ForCausalLM

from eagle_demo.model.attention import FilledLength
from eagle_demo.model.config import TextConfig
from eagle_demo.model.qwen2 import Qwen2LM

DIMS = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=512)


@pytest.fixture(scope="module", params=["as the checkpoint", "fused"])
def pair(request):
    """transformers' model and ours with its weights: its layers as the checkpoint has them, or with
    q, k and v (and gate and up) fused, as they load; its state_dict is the checkpoint's either way."""
    torch.manual_seed(0)
    reference = Qwen2ForCausalLM(Qwen2Config(**DIMS, tie_word_embeddings=False)).eval()
    ours = Qwen2LM(TextConfig(**DIMS, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None)).eval()
    missing, unexpected = ours.load_state_dict(reference.state_dict(), strict=False)
    assert not missing and not unexpected
    if request.param == "fused":
        ours.fuse_projections()
        assert ours.model.layers[0].self_attn.fused and ours.model.layers[0].mlp.fused
        expected = {key: value for key, value in reference.state_dict().items() if "rotary" not in key}
        assert ours.state_dict().keys() == expected.keys()
        assert all(torch.equal(ours.state_dict()[key], value) for key, value in expected.items())
    return reference, ours


pytestmark = pytest.mark.usefixtures("sdpa_layout")


@torch.inference_mode()
def test_prefill_logits_match_transformers(pair):
    reference, ours = pair
    ids = torch.randint(0, DIMS["vocab_size"], (1, 23))
    expected = reference(input_ids=ids).logits[0]
    hidden = ours(ours.embed(ids), torch.arange(23), ours.new_cache(64))
    torch.testing.assert_close(ours.logits(hidden[0]), expected, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_cached_steps_and_resumed_prefill_match_one_pass(pair):
    reference, ours = pair
    ids = torch.randint(0, DIMS["vocab_size"], (1, 20))
    expected = reference(input_ids=ids).logits[0]
    cache = ours.new_cache(64)
    first = ours(ours.embed(ids[:, :8]), torch.arange(8), cache)
    middle = ours(ours.embed(ids[:, 8:15]), torch.arange(8, 15), cache)  # resumes after a cached prefix
    steps = []  # one-token steps over a fixed span of 64, the filled length read on the device
    for p in range(15, 20):
        filled = FilledLength("masked", 64, torch.device("cpu"))
        filled.filled.fill_(p + 1)
        steps.append(ours(ours.embed(ids[:, p:p + 1]), torch.tensor([p]), cache, filled))
    got = ours.logits(torch.cat([first, middle, *steps], dim=1)[0])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


class LargestTensor(TorchDispatchMode):
    """The most elements any op's new output holds (not views, nor tensors written in place)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view or func._schema.is_mutable:
            return out
        self.numel = max([self.numel] + [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)])
        return out


@torch.inference_mode()
def test_a_follow_up_at_16k_context_makes_no_mask(pair):
    """A follow-up turn's prefill (a CPU's step of 512 new tokens after 15,872 cached ones) attends
    causally from its offset: nothing of [new tokens x context] size (a mask, or scores) is made."""
    _, ours = pair
    context, new = 16384, 512
    cache = ours.new_cache(context)
    largest = LargestTensor()
    with largest:
        ours(torch.randn(1, new, DIMS["hidden_size"]), torch.arange(context - new, context), cache)
    assert largest.numel <= new * 2 * DIMS["intermediate_size"]  # the MLP's gate and up activations
