"""`python -m eagle_demo generate|tiny|quantize|eval`: scripted inference, tiny test checkpoints, 4-bit
checkpoints, benchmarks."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from .config import DEFAULT_MODEL, DEFAULT_SYSTEM_PROMPT, GenerationSettings
from .evaluation import cli as evaluation

_DEFAULTS = GenerationSettings()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eagle_demo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="answer one question about images or a video")
    gen.add_argument("--model", default=DEFAULT_MODEL, help="hub id or local checkpoint folder")
    gen.add_argument("--image", action="append", default=[], help="an image file; repeat for several")
    gen.add_argument("--video", help="a video file")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--system", default=DEFAULT_SYSTEM_PROMPT)
    gen.add_argument("--max-tiles", type=int, default=None,
                     help=f"default: {_DEFAULTS.max_tiles}; on a CPU, as many as keep the first word near 10 s")
    gen.add_argument("--frames", type=int, default=_DEFAULTS.num_frames)
    gen.add_argument("--temperature", type=float, default=_DEFAULTS.temperature, help="0 for greedy")
    gen.add_argument("--top-p", type=float, default=_DEFAULTS.top_p)
    gen.add_argument("--top-k", type=int, default=_DEFAULTS.top_k)
    gen.add_argument("--repetition-penalty", type=float, default=_DEFAULTS.repetition_penalty)
    gen.add_argument("--max-new-tokens", type=int, default=_DEFAULTS.max_new_tokens)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--device", choices=["cpu", "cuda"], default=None)
    gen.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    gen.add_argument("--load-8bit", action="store_true")
    gen.add_argument("--cpu-int8", action="store_true", help="dynamic int8 Linear layers on a CPU: faster, not exact")
    gen.add_argument("--quantize", choices=["int4", "int8"], default=None,
                     help="quantise the language model's weights at load (weight-only): less memory, not exact")
    gen.add_argument("--compile", action="store_true",
                     help="run the decode step under torch.compile, captured as a CUDA graph (CUDA only)")
    gen.add_argument("--json", action="store_true",
                     help="print only one JSON object at the end: text, prompt_token_ids, token_ids, num_tiles")

    tiny = commands.add_parser("tiny", help="write a tiny random-weight checkpoint in an official layout")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--layout", choices=["eagle_chat", "eagle_2_5_vl"], default="eagle_2_5_vl")
    tiny.add_argument("--mob", action="store_true", help="Eagle2-9B's SigLIP + ConvNeXt vision tower")
    tiny.add_argument("--tokenizer", help="copy this tokenizer folder instead of writing a small one")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--size", default="tiny", help="tiny, small, or the true 1B, 2B, 9B dims (random weights)")
    tiny.add_argument("--shards", type=int, default=None,
                      help="safetensors files to split the weights into (default: one per 4 GB, as the hub does)")

    from .quantize import add_command

    add_command(commands)
    evaluation.add_parser(commands)
    return parser


def _generate(args) -> int:
    from .conversation import Message
    from .engine import Engine
    from .wait import describe

    settings = GenerationSettings.checked(
        max_tiles=args.max_tiles, num_frames=args.frames, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty,
        seed=args.seed)
    engine = Engine(args.model, device=args.device, dtype=args.dtype, load_8bit=args.load_8bit,
                    cpu_int8=args.cpu_int8, quantize=args.quantize, compile_decode=args.compile)
    engine.load()
    if args.max_tiles is None:
        settings = replace(settings, max_tiles=engine.cpu_default_tiles() or settings.max_tiles)
    estimate = engine.first_word_estimate(args.image, args.video, settings)
    if estimate is not None:
        print(describe(estimate, loaded=True), file=sys.stderr, flush=True)
    message = Message("user", args.prompt, images=args.image, video=args.video)
    generation = engine.chat([message], args.system, settings)
    for delta in generation:
        if not args.json:
            print(delta, end="", flush=True)
    if args.json:
        print(json.dumps({"text": generation.text, "prompt_token_ids": generation.prompt_token_ids,
                          "token_ids": generation.token_ids, "num_tiles": generation.num_tiles}))
    else:
        print()
    return 0


def _tiny(args) -> int:
    from .tiny import write_tiny_checkpoint

    path = write_tiny_checkpoint(args.out, layout=args.layout, mob=args.mob,
                                 tokenizer_dir=args.tokenizer, seed=args.seed, size=args.size, shards=args.shards)
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "quantize":
            from .quantize import run

            return run(args)
        if args.command == "eval":
            return evaluation.main(args)
        return _generate(args) if args.command == "generate" else _tiny(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one clear line, not a traceback: every expected failure has a message
        print(f"error: {e}", file=sys.stderr)
        return 1
