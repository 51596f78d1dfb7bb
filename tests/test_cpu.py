"""What the engine reads from the host CPU (native bfloat16 matmul, its physical cores), and how it
sizes a CPU turn: the tile default and the wait estimate, from the probe and then from each turn."""

from __future__ import annotations

import os

import torch

from eagle_demo.config import GenerationSettings
from eagle_demo.engine import Engine, Message
from eagle_demo.model.config import Eagle2Config
from eagle_demo.model.loading import default_dtype, native_bf16, physical_cores
from eagle_demo.preprocessing import count_tiles
from eagle_demo.wait import TARGET_FIRST_WORD_S, TEXT_TOKENS, TYPICAL_PHOTO, WaitRates
from tests.conftest import ASSETS


def cpuinfo(cores: list[tuple[int, int]], flags: str) -> str:
    """/proc/cpuinfo's text for logical CPUs at (physical id, core id)."""
    return "\n".join(f"processor\t: {i}\nphysical id\t: {socket}\ncore id\t\t: {core}\nflags\t\t: {flags}\n"
                     for i, (socket, core) in enumerate(cores))


AVX2 = "fpu sse sse2 avx avx2 fma"
SAPPHIRE_RAPIDS = AVX2 + " avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
ZEN4 = AVX2 + " avx512f avx512_bf16"


def test_bfloat16_is_the_cpu_default_only_where_the_cpu_multiplies_it_natively():
    assert not native_bf16(cpuinfo([(0, 0)], AVX2)) and native_bf16(cpuinfo([(0, 0)], ZEN4))
    assert default_dtype("cpu", cpuinfo([(0, 0)], SAPPHIRE_RAPIDS)) == torch.bfloat16
    assert default_dtype("cpu", cpuinfo([(0, 0)], AVX2)) == torch.float32
    assert default_dtype("cuda", cpuinfo([(0, 0)], AVX2)) == torch.bfloat16


def test_one_thread_per_physical_core_within_this_process_s_cpus():
    allowed = len(os.sched_getaffinity(0))
    assert physical_cores(cpuinfo([(0, 0), (0, 0)], AVX2)) == 1  # one core, two SMT siblings
    assert physical_cores(cpuinfo([(0, c) for c in range(64)], AVX2)) == allowed
    assert physical_cores("processor\t: 0\nprocessor\t: 1\n") == allowed  # no core ids (e.g. some ARM)


def test_the_cpu_tile_default_keeps_a_photo_s_first_word_near_the_target(tiny_checkpoint):
    engine = Engine(str(tiny_checkpoint), device="cpu")
    assert engine.cpu_default_tiles() == GenerationSettings().max_tiles  # tiny: all the tiles in no time
    engine.cpu_wait.probe_rates = WaitRates(tile_s=6.0, token_s=0.004)  # 1B on this machine's 2 cores
    assert engine.cpu_default_tiles() == 1
    cfg = Eagle2Config.from_dir(tiny_checkpoint)
    tiles = count_tiles(*TYPICAL_PHOTO, 2, cfg.tile_size, cfg.use_thumbnail)  # a 2x1 grid and the thumbnail
    prompt_s = (tiles * cfg.tokens_per_tile + TEXT_TOKENS) * 0.004
    rates = engine.cpu_wait.probe_rates = WaitRates(tile_s=(TARGET_FIRST_WORD_S - prompt_s) / tiles - 0.01,
                                                    token_s=0.004)

    def photo_s(max_tiles: int) -> float:
        tiles = count_tiles(*TYPICAL_PHOTO, max_tiles, cfg.tile_size, cfg.use_thumbnail)
        return rates.seconds(tiles, tiles * cfg.tokens_per_tile + TEXT_TOKENS)

    chosen = engine.cpu_default_tiles()
    assert chosen >= 2 and photo_s(chosen) <= TARGET_FIRST_WORD_S < photo_s(chosen + 1)  # the most that fit
    assert Engine(str(tiny_checkpoint), device="cuda").cpu_default_tiles() is None  # nothing loads


def test_each_turn_replaces_the_probe_s_rates_with_what_it_measured(tiny_checkpoint):
    engine = Engine(str(tiny_checkpoint), device="cpu")
    image = str(ASSETS / "scene.jpg")
    settings = GenerationSettings(temperature=0.0, max_new_tokens=2, max_tiles=4)
    before = engine.first_word_estimate([image], None, settings)
    probe = engine.cpu_wait.probe_rates
    assert before.seconds == probe.seconds(before.tiles, before.prompt_tokens)
    generation = engine.chat([Message("user", "What is this?", images=[image])], "", settings)
    list(generation)
    timings = generation.timings
    measured = WaitRates(tile_s=timings["vision_s"] / timings["encoded_tiles"],
                         token_s=timings["prefill_s"] / timings["prefill_tokens"])
    after = engine.first_word_estimate([image], None, settings)
    assert after.seconds == measured.seconds(after.tiles, after.prompt_tokens) != before.seconds
    assert (after.tiles, after.prompt_tokens) == (before.tiles, before.prompt_tokens) == (
        sum(generation.num_tiles), sum(generation.num_tiles) * engine.model.config.tokens_per_tile + TEXT_TOKENS)


def test_a_cpu_engine_stores_wide_weights_input_major_and_keeps_the_tie(tiny_checkpoint):
    engine = Engine(str(tiny_checkpoint), device="cpu")
    engine.load()
    lm = engine.model.language_model
    mlp = lm.model.layers[0].mlp
    assert lm.lm_head.weight.stride() == (1, lm.config.vocab_size)  # seen [vocab, hidden], stored [hidden, vocab]
    assert lm.lm_head.weight is lm.model.embed_tokens.weight  # still one tied matrix
    assert mlp.gate_up_proj.weight.stride()[0] == 1 and mlp.down_proj.weight.is_contiguous()  # down: fewer outputs


def test_a_turn_runs_no_probe_on_its_way_to_the_answer(tiny_checkpoint):
    engine = Engine(str(tiny_checkpoint), device="cpu")
    list(engine.chat([Message("user", "Hi")], "", GenerationSettings(temperature=0.0, max_new_tokens=4)))
    assert engine.cpu_wait.probe_rates is None  # the probe waits until an estimate is asked for


def test_compile_asked_for_on_a_cpu_keeps_its_eager_step(tiny_checkpoint):
    """A CPU's step attends over the filled positions only; a compiled one would attend over fixed spans."""
    engine = Engine(str(tiny_checkpoint), device="cpu", compile_decode=True)
    engine.load()
    assert engine.decoder.compiled is None and not engine.decoder.bucketed
