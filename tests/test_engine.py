"""The engine on tiny random checkpoints: layouts agree, KV reuse is exact, stop/cancel/limits work."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from PIL import Image

from eagle_demo import engine as engine_module
from eagle_demo.config import GenerationSettings, Limits
from eagle_demo.conversation import Message
from eagle_demo.decoding import TextStream, sample_next
from eagle_demo.engine import Engine
from eagle_demo.errors import PromptError
from eagle_demo.media import MediaError
from eagle_demo.preprocessing import Turn, build_prompt, load_tokenizer
from eagle_demo.tiny import write_tiny_checkpoint
from tests.support import transformers_twin

GREEDY = GenerationSettings(temperature=0.0, max_new_tokens=12, max_tiles=4, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {layout: write_tiny_checkpoint(root / layout, layout=layout, seed=0)
            for layout in ("eagle_chat", "eagle_2_5_vl")}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("img")
    paths = []
    for i, size in enumerate([(900, 500), (300, 640)]):
        img = Image.new("RGB", size, (40 * i, 120, 200))
        for x in range(0, size[0], 37):
            img.paste((255, 30 * i, 0), (x, 0, x + 9, size[1]))
        img.save(root / f"{i}.png")
        paths.append(str(root / f"{i}.png"))
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    return paths + [str(root / "corrupt.png")]


@pytest.fixture(scope="module")
def engine(checkpoints):
    return Engine(str(checkpoints["eagle_2_5_vl"]), device="cpu")


def run(engine, messages, settings=GREEDY, **kw):
    gen = engine.chat(messages, "You are a helpful assistant.", settings, **kw)
    deltas = list(gen)
    assert "".join(deltas) == gen.text
    return gen


@pytest.mark.usefixtures("sdpa_layout")
def test_both_layouts_give_identical_greedy_ids(checkpoints, images):
    question = [Message("user", "What is in this image?", images=images[:1])]
    old, new = (run(Engine(str(checkpoints[k]), device="cpu"), question) for k in ("eagle_chat", "eagle_2_5_vl"))
    assert old.prompt_token_ids == new.prompt_token_ids
    assert old.token_ids == new.token_ids and len(new.token_ids) == GREEDY.max_new_tokens
    assert new.num_tiles == [3]  # 900x500 at 4 tiles max: a 2x1 grid plus the thumbnail


@pytest.mark.usefixtures("sdpa_layout")
def test_follow_up_reuses_cache_and_images_exactly(checkpoints, engine, images):
    first = [Message("user", "Compare these.", images=images[:2])]
    answer = run(engine, first)
    calls = engine.vision_calls
    follow = first + [Message("assistant", answer.text), Message("user", "And the colours?")]
    reused = run(engine, follow)
    assert engine.vision_calls == calls  # no image went through the vision tower again
    assert reused.timings["reused_tokens"] > 0.9 * len(answer.prompt_token_ids)
    fresh = run(Engine(str(checkpoints["eagle_2_5_vl"]), device="cpu"), follow)
    assert reused.prompt_token_ids == fresh.prompt_token_ids
    assert reused.token_ids == fresh.token_ids


def test_after_an_out_of_memory_error_the_next_request_starts_clean(checkpoints, images):
    """What the engine does after CUDA runs out of memory (which needs a GPU to happen for real):
    the KV cache's contents and the image features are forgotten, so the next request encodes and
    prefills everything again and answers exactly as a fresh engine does."""
    engine = Engine(str(checkpoints["eagle_2_5_vl"]), device="cpu")
    first = [Message("user", "Compare these.", images=images[:2])]
    follow = first + [Message("assistant", run(engine, first).text), Message("user", "And the colours?")]
    calls = engine.vision_calls
    engine._after_oom()
    again = run(engine, follow)
    assert again.timings["reused_tokens"] == 0 and engine.vision_calls == calls + 2
    assert again.token_ids == run(Engine(str(checkpoints["eagle_2_5_vl"]), device="cpu"), follow).token_ids


def test_seeded_sampling_is_reproducible(engine, images):
    settings = GenerationSettings(temperature=1.0, top_p=0.9, top_k=40, max_new_tokens=10, seed=7)
    question = [Message("user", "Describe.", images=images[1:2])]
    assert run(engine, question, settings).token_ids == run(engine, question, settings).token_ids


def test_cancel_stops_between_tokens(engine):
    cancel = threading.Event()
    gen = engine.chat([Message("user", "Tell me a long story.")], "", GenerationSettings(
        temperature=0.0, max_new_tokens=200), cancel=cancel)
    for _ in gen:
        if len(gen.token_ids) >= 3:
            cancel.set()
    assert gen.finish_reason == "cancelled"
    assert len(gen.token_ids) <= 4


def test_stops_at_a_stop_token(engine):
    question = [Message("user", "Hi")]
    first_token = run(engine, question).token_ids[0]
    stops = engine.stop_ids
    engine.stop_ids = stops | {first_token}  # make the model's own first choice a stop token
    try:
        gen = run(engine, question)
    finally:
        engine.stop_ids = stops
    assert gen.finish_reason == "stop" and gen.token_ids == [] and gen.text == ""


def test_bad_requests_get_clear_errors_and_the_engine_keeps_working(checkpoints, images):
    limits = Limits(max_prompt_chars=50, max_images_per_conversation=2)
    engine = Engine(str(checkpoints["eagle_2_5_vl"]), device="cpu", limits=limits)
    with pytest.raises(MediaError):
        engine.chat([Message("user", "What is this?", images=images[2:3])], "", GREEDY)
    with pytest.raises(PromptError, match="limit is 50"):
        engine.chat([Message("user", "x" * 51)], "", GREEDY)
    with pytest.raises(PromptError, match="limit is 2"):
        engine.chat([Message("user", "x", images=images[:2] + images[:1])], "", GREEDY)
    with pytest.raises(PromptError, match="end with a user message"):
        engine.chat([Message("user", "x"), Message("assistant", "y")], "", GREEDY)
    assert len(run(engine, [Message("user", "Still there?", images=images[:1])]).token_ids) == 12


def test_context_overflow_is_refused(checkpoints):
    engine = Engine(str(checkpoints["eagle_2_5_vl"]), device="cpu", limits=Limits(context_tokens=40))
    with pytest.raises(PromptError, match="more than the model's 40"):
        engine.chat([Message("user", "word " * 45)], "", GREEDY)
    gen = run(engine, [Message("user", "hi")], GenerationSettings(temperature=0.0, max_new_tokens=500))
    assert len(gen.prompt_token_ids) + len(gen.token_ids) <= 40  # generation is clipped to the context


def test_text_stream_keeps_grounding_markup_and_whole_characters(checkpoints):
    tok = load_tokenizer(checkpoints["eagle_2_5_vl"])
    text = "<ref>the eagle 🦅</ref><box>[[12,40,600,980]]</box> é"
    ids = tok("<|im_start|>" + text, add_special_tokens=False).input_ids
    stream = TextStream(tok)
    deltas = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_sampling_rules():
    logits = torch.tensor([1.0, 3.0, 2.0, -1.0])
    generated = torch.tensor([1, 1])
    greedy = GenerationSettings(temperature=0.0, repetition_penalty=1.0)
    assert int(sample_next(logits, generated, greedy)) == 1
    penalised = GenerationSettings(temperature=0.0, repetition_penalty=2.0)
    assert int(sample_next(logits, generated, penalised)) == 2  # 3.0 / 2 falls below 2.0
    assert int(sample_next(torch.tensor([-1.0, -1.5]), torch.tensor([0]), penalised)) == 1  # -1.0 * 2 < -1.5
    top1 = GenerationSettings(temperature=5.0, top_k=1, repetition_penalty=1.0)
    nucleus = GenerationSettings(temperature=1.0, top_k=0, top_p=0.01, repetition_penalty=1.0)
    for s in (top1, nucleus):
        assert {int(sample_next(logits, generated, s)) for _ in range(20)} == {1}
    top2 = GenerationSettings(temperature=100.0, top_k=2, top_p=1.0, repetition_penalty=1.0)
    assert {int(sample_next(logits, generated, top2)) for _ in range(60)} == {1, 2}


def test_sampling_with_nothing_cut_draws_from_the_whole_vocabulary_as_generate_does():
    """top_k off and top_p 1: one draw over the softmax in vocabulary order, as transformers' generate
    draws (no sort of the whole vocabulary first: half the decode time of a 151,674-id vocabulary)."""
    logits = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    s = GenerationSettings(temperature=0.7, top_k=0, top_p=1.0, repetition_penalty=1.0)
    ours, theirs = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for _ in range(20):
        expected = torch.multinomial((logits / 0.7).softmax(-1), 1, generator=theirs)[0]
        assert int(sample_next(logits, torch.tensor([], dtype=torch.long), s, ours)) == int(expected)


def test_generation_resumes_on_other_threads(engine):
    """Gradio may call next() on a streaming generator from a different worker thread each time."""
    gen = iter(engine.chat([Message("user", "Hi")], "", GREEDY))
    deltas = []
    while True:
        worker = ThreadPoolExecutor(1)
        delta = worker.submit(next, gen, None).result()
        worker.shutdown()
        if delta is None:
            break
        deltas.append(delta)
    assert "".join(deltas) == run(engine, [Message("user", "Hi")]).text


def test_grounding_markup_of_an_answer_goes_back_as_special_tokens(checkpoints):
    tok = load_tokenizer(checkpoints["eagle_2_5_vl"])
    markup = "<ref>cat</ref><box>[[1,2,3,4]]</box>"
    turns = [Turn(user=markup, images=[], frames=[], timestamps=[], answer=f"Here: {markup}."),
             Turn(user="Thanks", images=[], frames=[], timestamps=[])]
    ids = build_prompt(turns, "", tok, tokens_per_tile=256).input_ids
    specials = tok.convert_tokens_to_ids(["<ref>", "</ref>", "<box>", "</box>"])
    assert [ids.count(i) for i in specials] == [1, 1, 1, 1]  # the answer's markup only, not the user's
    assert tok.decode(ids).count(markup) == 2


def test_closing_a_generation_cancels_it_and_frees_the_engine(engine):
    gen = engine.chat([Message("user", "Tell me a long story.")], "", GenerationSettings(
        temperature=0.0, max_new_tokens=200))
    stream = iter(gen)
    next(stream)
    stream.close()
    assert gen.finish_reason == "cancelled"
    assert len(run(engine, [Message("user", "Hi")]).token_ids) > 0  # the lock was released


def test_unload_frees_the_model_and_the_next_request_loads_it_again(checkpoints):
    engine = Engine(str(checkpoints["eagle_chat"]), device="cpu")
    first = run(engine, [Message("user", "Hi")]).token_ids
    engine.unload()
    assert engine.model is None and engine.status == "not loaded"
    assert run(engine, [Message("user", "Hi")]).token_ids == first


@pytest.mark.parametrize("penalty", [1.0, 1.3])
@pytest.mark.usefixtures("sdpa_layout")
def test_greedy_answer_equals_transformers_generate(engine, images, penalty):
    """The engine's own decode loop against transformers' generate on the same weights and prompt,
    repetition penalty included (it covers the generated ids, as generate does from embeddings)."""
    from transformers import GenerationConfig

    settings = GenerationSettings(temperature=0.0, max_new_tokens=24, max_tiles=4, repetition_penalty=penalty)
    gen = run(engine, [Message("user", "What is in this image?", images=images[:1])], settings)
    twin = transformers_twin(engine.model.language_model)
    with torch.inference_mode():
        embeds = engine._embed_prompt(gen.prompt)
        out = twin.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                            generation_config=GenerationConfig(
                                max_new_tokens=24, do_sample=False, repetition_penalty=penalty,
                                eos_token_id=sorted(engine.stop_ids), pad_token_id=0))
    assert len(gen.token_ids) == 24 and gen.token_ids == out[0].tolist()


def test_a_request_cancelled_before_it_runs_does_no_work(engine, images):
    cancel = threading.Event()
    gen = engine.chat([Message("user", "Describe.", images=images[1:2])], "", GREEDY, cancel=cancel)
    calls = engine.vision_calls
    engine.clear_caches()
    cancel.set()
    assert list(gen) == [] and gen.finish_reason == "cancelled"
    assert engine.vision_calls == calls and "prefill_tokens" not in gen.timings


def test_a_checkpoint_without_dynamic_tiling_gets_one_tile_per_image(tmp_path, images):
    path = write_tiny_checkpoint(tmp_path / "fixed", layout="eagle_chat")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "dynamic_image_size": False}))
    gen = Engine(str(path), device="cpu").chat([Message("user", "What?", images=images[:2])], "", GREEDY)
    assert gen.num_tiles == [1, 1]


def test_a_cpu_reads_tiles_and_prompt_in_steps_it_reports_and_the_answer_is_the_same(checkpoints, images,
                                                                                   monkeypatch):
    settings = GenerationSettings(temperature=0.0, max_new_tokens=8, max_tiles=6)
    messages = [Message("user", "Describe both.", images=images[:2])]
    stages = []
    monkeypatch.setattr(engine_module, "CPU_PREFILL_CHUNK", 100)
    gen = run(Engine(str(checkpoints["eagle_2_5_vl"]), device="cpu"), messages, settings,
              progress=lambda fraction, text: stages.append(text))
    tiles, tokens = sum(gen.num_tiles), len(gen.prompt_token_ids)
    assert tokens > 300  # several prompt steps, one of them not full
    steps = [f"reading the images: {done} of {tiles} tiles" for done in range(0, tiles, engine_module.CPU_VISION_CHUNK)]
    prompt = [f"reading the prompt: {done:,} of {tokens:,} tokens" for done in range(0, tokens, 100)]
    assert stages == steps + prompt
    engine = gen.engine
    with torch.inference_mode():
        embeds = engine._embed_prompt(gen.prompt)
        engine.clear_caches()
        stepped, _ = engine._prefill(gen.prompt, embeds)
        monkeypatch.setattr(engine_module, "CPU_PREFILL_CHUNK", 10_000)  # all at once, as on a GPU
        engine.clear_caches()
        whole, _ = engine._prefill(gen.prompt, embeds)
    torch.testing.assert_close(stepped, whole, rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(engine_module, "CPU_VISION_CHUNK", 10_000)
    at_once = run(Engine(str(checkpoints["eagle_2_5_vl"]), device="cpu"), messages, settings)
    assert gen.token_ids == at_once.token_ids


def test_cpu_int8_quantizes_every_linear_layer_and_answers(checkpoints, images):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    engine = Engine(str(checkpoints["eagle_2_5_vl"]), device="cpu", cpu_int8=True)
    gen = run(engine, [Message("user", "Describe.", images=images[:1])],
              GenerationSettings(temperature=0.0, max_new_tokens=8, max_tiles=2))
    assert len(gen.token_ids) > 0
    linear = [m for m in engine.model.modules() if isinstance(m, (torch.nn.Linear, DynamicInt8Linear))]
    assert linear and all(isinstance(m, DynamicInt8Linear) for m in linear)
    with pytest.raises(ValueError, match="--cpu-int8 works on a CPU in float32 only"):
        Engine(str(checkpoints["eagle_2_5_vl"]), device="cpu", dtype="bfloat16", cpu_int8=True).load()
