"""The engine's CUDA paths, run on CPU through the stand-ins in tests/cuda_emulation.py: the memory
layout CUDA's fused attention kernels return, graph capture and replay, and host syncs per token."""

import pytest
import torch
from PIL import Image

from eagle_demo import decoding
from eagle_demo.config import GenerationSettings
from eagle_demo.decoding import Decoder
from eagle_demo.engine import Engine, Message
from eagle_demo.model.qwen2 import MLP, Qwen2LM
from tests.cuda_emulation import HostReadCounter, fused_attention_layout, install_cuda_graphs

GREEDY = GenerationSettings(temperature=0.0, max_tiles=1, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "stripes.png"
    img = Image.new("RGB", (448, 448), (30, 120, 200))
    for x in range(0, 448, 29):
        img.paste((250, 200, 0), (x, 0, x + 7, 448))
    img.save(path)
    return str(path)


def three_turns(engine: Engine, image: str, lengths=(40, 60, 200)) -> list[list[int]]:
    """Greedy answers of a three-turn image conversation, each turn reusing the KV cache."""
    messages, answers = [Message("user", "Describe this picture.", images=[image])], []
    for turn, length in enumerate(lengths):
        gen = engine.chat(messages, "You are a helpful assistant.", GenerationSettings(
            **{**GREEDY.__dict__, "max_new_tokens": length}))
        list(gen)
        assert turn == 0 or gen.timings["reused_tokens"] > 0
        answers.append(gen.token_ids)
        messages += [Message("assistant", gen.text), Message("user", f"Tell me more ({turn}).")]
    return answers


def no_stop_tokens(engine: Engine) -> Engine:
    engine.load()
    engine.stop_ids = set()  # random weights may pick <|im_end|> early: decode the full lengths
    return engine


def test_fused_attention_layout_gives_the_same_tokens_as_contiguous(tiny_checkpoint, image, monkeypatch):
    contiguous = three_turns(no_stop_tokens(Engine(str(tiny_checkpoint), device="cpu")), image, (12, 12, 12))
    fused_attention_layout(monkeypatch)
    assert three_turns(no_stop_tokens(Engine(str(tiny_checkpoint), device="cpu")), image, (12, 12, 12)) == contiguous


@pytest.fixture(scope="module")
def eager_answers(tiny_checkpoint, image):
    """CPU decoding (no spans, no graphs), contiguous layout, q, k, v and gate, up left as the checkpoint
    has them: what every other variant must equal."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Qwen2LM, "fuse_projections", lambda lm: None)
        engine = no_stop_tokens(Engine(str(tiny_checkpoint), device="cpu"))
    assert not engine.model.language_model.model.layers[0].self_attn.fused
    return three_turns(engine, image)


def compiled(engine: Engine, backend, use_cuda_graphs: bool) -> Engine:
    """The engine's decoder rebuilt with its step under torch.compile (aot_eager: its graph, traced as
    inductor's is, run by PyTorch's own kernels, in seconds on a CPU)."""
    runner = engine.runner
    runner.decoder = Decoder(engine.model.language_model, runner.decoder.cache, use_cuda_graphs, backend)
    return engine


@pytest.mark.usefixtures("sdpa_layout")
@pytest.mark.parametrize("variant", ["fused", "captured", "bucketed eager", "compiled", "compiled and captured"])
def test_each_decode_variant_equals_eager_across_bucket_boundaries(tiny_checkpoint, image, eager_answers,
                                                                    monkeypatch, variant):
    """Greedy, three turns reusing the KV cache; every variant with its projections fused, as they load.
    "fused" is the CPU's own step; "bucketed eager" is a CUDA step where no graph could be captured (here:
    no CUDA at all, so every capture fails and is retried until it gives up); "compiled" is ZeroGPU's
    (no graphs there), "compiled and captured" `--compile` on a GPU."""
    fake = install_cuda_graphs(monkeypatch) if "captured" in variant else None
    # An image turn is ~290 tokens: these spans are crossed while decoding turns 1, 2 and 3.
    monkeypatch.setattr(decoding, "ATTEND_BUCKETS", (300, 400, 600))
    engine = no_stop_tokens(Engine(str(tiny_checkpoint), device="cpu", use_cuda_graphs=variant != "fused"))
    if variant.startswith("compiled"):
        compiled(engine, "aot_eager", use_cuda_graphs=fake is not None)
    assert engine.model.language_model.model.layers[0].mlp.fused
    assert three_turns(engine, image) == eager_answers
    decoder = engine.decoder
    assert (decoder.compiled is not None) == variant.startswith("compiled")
    if variant in ("fused", "compiled"):
        assert decoder.graphs == {}
        return
    if fake is None:
        assert decoder.graphs == {} and decoder.capture_failures == decoding.CAPTURE_TRIES
        return
    assert sorted(decoder.graphs) == [300, 400, 600, engine.context]
    replayed = {span for span, (graph, _) in decoder.graphs.items() if graph.replays}
    assert replayed >= {300, 400, 600}  # each boundary crossed mid-answer
    assert fake.current_stream() is fake.default_stream


def test_a_step_that_cannot_compile_decodes_eagerly(tiny_checkpoint, image, eager_answers, caplog):
    """A compiler that fails (a missing toolchain, an op it cannot take): the answer is the eager one,
    and the log says why."""
    def failing_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    torch.compiler.reset()  # the step compiled by earlier tests would be reused: torch.compile keeps it per function
    engine = compiled(no_stop_tokens(Engine(str(tiny_checkpoint), device="cpu")), failing_backend, False)
    with caplog.at_level("WARNING", logger="eagle_demo.decoding"):
        assert three_turns(engine, image, (40, 5, 5))[0] == eager_answers[0]
    assert engine.decoder.compiled is None
    assert "compiling the decode step failed" in caplog.text and "decoding eagerly" in caplog.text


def test_a_capture_beside_another_threads_device_work_succeeds(tiny_checkpoint, monkeypatch):
    """Another model loading (its allocations) while this one captures: in CUDA's default global
    capture mode that fails the load and the capture, and the model would decode eagerly for good."""
    engine = Engine(str(tiny_checkpoint), device="cpu")
    engine.load()
    lm = engine.model.language_model
    fake = install_cuda_graphs(monkeypatch)
    monkeypatch.setattr(decoding, "ATTEND_BUCKETS", (16, 32))
    loaded = []
    fake.during_capture = lambda: loaded.append(torch.zeros(1024) + 1)
    decoder = Decoder(lm, lm.new_cache(64), use_cuda_graphs=True)
    assert fake.other_thread_errors == [] and len(loaded) == 3
    assert sorted(decoder.graphs) == [16, 32, 64] and decoder.capture_failures == 0


def test_a_failed_capture_is_retried_and_then_replayed(tiny_checkpoint, image, eager_answers, monkeypatch):
    """A capture that fails once, for a passing reason (here a host read in one capture), is captured
    again at the next step that needs its span: the model does not decode eagerly for the rest of its life."""
    fake = install_cuda_graphs(monkeypatch)
    monkeypatch.setattr(decoding, "ATTEND_BUCKETS", (300, 400, 600))
    plain, flaky = MLP.forward, [True]
    monkeypatch.setattr(MLP, "forward", lambda mlp, x: plain(mlp, x) * (1.0 + 0.0 * float(x.max()))
                        if flaky[0] else plain(mlp, x))
    engine = no_stop_tokens(Engine(str(tiny_checkpoint), device="cpu", use_cuda_graphs=True))
    assert engine.decoder.graphs == {} and engine.decoder.capture_failures == 1
    flaky[0] = False
    assert three_turns(engine, image) == eager_answers
    assert sorted(engine.decoder.graphs) == [300, 400, 600, engine.context]
    assert engine.decoder.graphs[300][0].replays and fake.current_stream() is fake.default_stream


def test_a_capture_that_reads_the_host_falls_back_to_eager_on_the_callers_stream(tiny_checkpoint, monkeypatch):
    """A layer that reads a value on the host inside the step invalidates the capture, and
    torch.cuda.graph's exit then leaves the thread on the capture stream unless the caller restores it."""
    engine = Engine(str(tiny_checkpoint), device="cpu")
    engine.load()
    lm = engine.model.language_model
    mlp = lm.model.layers[0].mlp
    plain = mlp.forward
    monkeypatch.setattr(mlp, "forward", lambda x: plain(x) * (1.0 + 0.0 * float(x.abs().max())))
    fake = install_cuda_graphs(monkeypatch)
    decoder = Decoder(lm, lm.new_cache(64), use_cuda_graphs=True)
    assert decoder.graphs == {}
    assert fake.current_stream() is fake.default_stream
    with torch.inference_mode():
        logits = decoder.step(torch.tensor(5), 0)
    assert torch.isfinite(logits).all()


def test_one_host_read_per_token_and_after_the_next_step_is_queued(tiny_checkpoint, image, monkeypatch):
    monkeypatch.setattr(decoding.HostToken, "overlaps", True)  # as on CUDA, where the device runs ahead
    engine = no_stop_tokens(Engine(str(tiny_checkpoint), device="cpu"))
    settings = GenerationSettings(temperature=0.8, top_k=20, top_p=0.9, max_new_tokens=10, max_tiles=1, seed=1)
    gen = engine.chat([Message("user", "Describe.", images=[image])], "", settings)
    deltas = iter(gen)
    next(deltas)  # prefill and the first token
    counter = HostReadCounter()
    with counter:
        list(deltas)
    ops = counter.ops
    reads = [i for i, op in enumerate(ops) if op == "HOST_READ"]
    assert len(reads) == len(gen.token_ids) - 1  # one read per token: its id, nothing in sampling
    for previous, read in zip([-1, *reads], reads[:-1]):  # the last token has no next step
        sampled = max(i for i in range(previous + 1, read) if ops[i] == "multinomial")
        assert ops[sampled:read].count("linear") >= 8, "the next step is queued before the host reads the token"
