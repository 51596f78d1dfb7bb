"""Eagle2 Demo: `python app.py [--model nvidia/Eagle2-1B] [--share] ...`

Every flag can also be set by an environment variable (shown in `--help`), which is how a
Hugging Face Space configures it. Models load on the first request that needs them, except on
ZeroGPU, where Spaces wants them on CUDA at import time (all of the menu's, then).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

from starlette.middleware import Middleware

from eagle_demo import page_style, ui
from eagle_demo.config import DEFAULT_MODEL, LIMITS, QUEUED_PER_ANSWER_SLOT
from eagle_demo.models import ModelMenu, load_hint
from eagle_demo.openai_api import OpenAIApi
from eagle_demo.records import process_folder
from eagle_demo.request_guard import RequestGuard
from eagle_demo.server_client import ServerError, ServerMenu

try:  # Hugging Face Spaces provides `spaces`; elsewhere generation runs undecorated
    import spaces
except ImportError:
    spaces = None

ZERO_GPU = spaces is not None and bool(os.environ.get("SPACES_ZERO_GPU"))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description="Chat with Eagle2 about images and videos in your browser.")
    p.add_argument("--model", default=env("EAGLE_MODEL", DEFAULT_MODEL),
                   help="hub id or local checkpoint folder; a comma list adds a model menu [EAGLE_MODEL]")
    p.add_argument("--server", default=env("EAGLE_SERVER"),
                   help="answer through this OpenAI-compatible server (vLLM with this project's plugin, see "
                        "README) instead of loading a model; its models make the menu [EAGLE_SERVER]")
    p.add_argument("--load-8bit", action="store_true", default=_env_flag("EAGLE_LOAD_8BIT"),
                   help="8-bit weights, as --quantize int8 [EAGLE_LOAD_8BIT]")
    p.add_argument("--cpu-int8", action="store_true", default=_env_flag("EAGLE_CPU_INT8"),
                   help="dynamic int8 Linear layers on a CPU: faster, not exact (see README) [EAGLE_CPU_INT8]")
    p.add_argument("--quantize", default=env("EAGLE_QUANTIZE") or None, choices=["int4", "int8"],
                   help="weight-only int4 or int8 language model layers made at load, on CUDA or a CPU: less memory, "
                        "not exact (a checkpoint made by `python -m eagle_demo quantize` loads 4-bit without it) "
                        "[EAGLE_QUANTIZE]")
    p.add_argument("--compile", action="store_true", default=_env_flag("EAGLE_COMPILE"),
                   help="run the decode step under torch.compile, captured as a CUDA graph (CUDA only; loading a "
                        "model then takes longer) [EAGLE_COMPILE]")
    p.add_argument("--device", default=env("EAGLE_DEVICE"),
                   help="cpu, cuda or cuda:N; default: cuda when available [EAGLE_DEVICE]")
    p.add_argument("--dtype", default=env("EAGLE_DTYPE"), choices=["float32", "bfloat16", "float16"],
                   help="default: bfloat16 on CUDA, float32 on CPU [EAGLE_DTYPE]")
    p.add_argument("--attn", default=env("EAGLE_ATTN", "sdpa"), choices=["sdpa", "flash_attention_2"],
                   help="vision attention kernel; flash_attention_2 needs the flash-attn package [EAGLE_ATTN]")
    p.add_argument("--share", action="store_true", default=_env_flag("EAGLE_SHARE"),
                   help="also serve through a public *.gradio.live link [EAGLE_SHARE]")
    p.add_argument("--mcp", action="store_true", default=_env_flag("EAGLE_MCP") or _env_flag("GRADIO_MCP_SERVER"),
                   help="also serve the chat endpoint as an MCP tool at /gradio_api/mcp/ (needs the mcp package) "
                        "[EAGLE_MCP, GRADIO_MCP_SERVER]")
    p.add_argument("--host", default=env("EAGLE_HOST") or env("GRADIO_SERVER_NAME") or "127.0.0.1",
                   help="address to bind; 0.0.0.0 serves your network [EAGLE_HOST, GRADIO_SERVER_NAME]")
    p.add_argument("--port", type=int, default=int(env("EAGLE_PORT") or env("GRADIO_SERVER_PORT") or 7860),
                   help="[EAGLE_PORT, GRADIO_SERVER_PORT]")
    p.add_argument("--max-upload-mb", type=int, default=int(env("EAGLE_MAX_UPLOAD_MB") or LIMITS.max_upload_mb),
                   help="largest file a user may upload [EAGLE_MAX_UPLOAD_MB]")
    p.add_argument("--concurrency", type=int, default=int(env("EAGLE_CONCURRENCY") or 1),
                   help="answers generated at once; more wait in the queue [EAGLE_CONCURRENCY]")
    p.add_argument("--max-models", type=int, default=int(env("EAGLE_MAX_MODELS") or 0),
                   help="most models of the menu kept loaded at once; 0: as many as fit in memory [EAGLE_MAX_MODELS]")
    p.add_argument("--no-openai-api", action="store_true", default=_env_flag("EAGLE_NO_OPENAI_API"),
                   help="do not serve the OpenAI-compatible /v1/models and /v1/chat/completions [EAGLE_NO_OPENAI_API]")
    p.add_argument("--api-key", default=env("EAGLE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 (a comma list: any of these keys); without "
                        "one, /v1 is as open as the page's own API [EAGLE_API_KEY]")
    p.add_argument("--delete-uploads-after", type=float, default=float(env("EAGLE_DELETE_UPLOADS_AFTER") or 24),
                   help="hours after which uploaded and generated files are deleted [EAGLE_DELETE_UPLOADS_AFTER]")
    return p.parse_args(argv)


def check_models(models: list[str]) -> str | None:
    """A message for a model that cannot work (a missing folder); a note for hub ids not downloaded."""
    for name in models:
        path = Path(name).expanduser()
        looks_local = name.startswith((".", "/", "~")) or path.exists() or name.count("/") != 1
        if looks_local and not (path / "config.json").is_file():
            return (f"error: {name!r} is not a checkpoint folder (no config.json there) nor a hub id like "
                    f"nvidia/Eagle2-1B.\nMake a tiny test checkpoint with `python -m eagle_demo tiny --out "
                    f"./tiny-eagle2` and run `python app.py --model ./tiny-eagle2`.")
        if not looks_local and not _in_hub_cache(name):
            print(f"note: {name} is not downloaded yet; it is fetched from the Hugging Face Hub on the first "
                  f"message.{load_hint(name).replace('`', '')}", file=sys.stderr)
    return None


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def local_menu(args: argparse.Namespace, limits) -> ModelMenu:
    """The models this process loads itself (--model)."""
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    problem = check_models(models)
    if problem:
        sys.exit(problem)
    menu = ModelMenu(models, max_loaded=args.max_models, device=args.device or ("cuda" if ZERO_GPU else None),
                     dtype=args.dtype, load_8bit=args.load_8bit, limits=limits, attn=args.attn, cpu_int8=args.cpu_int8,
                     quantize=args.quantize, compile_decode=args.compile,
                     # ZeroGPU lends a GPU per call: there is none to capture graphs on at start-up
                     use_cuda_graphs=False if ZERO_GPU else None)
    if ZERO_GPU:  # Spaces moves CUDA tensors made at import time onto the GPU it lends each call
        menu.preload()
    return menu


def server_menu(url: str, limits) -> ServerMenu:
    """The models of the OpenAI-compatible server at `url` (--server): one line and exit if it is not there."""
    try:
        menu = ServerMenu(url, limits)
    except ServerError as e:
        sys.exit(str(e))
    if not menu.names:
        sys.exit(f"The model server at {menu.host} serves no model.")
    return menu


def build(args: argparse.Namespace):
    """(the Blocks app, its model menu, the keyword arguments for launch()) for parsed flags."""
    limits = replace(LIMITS, max_upload_mb=args.max_upload_mb)
    if not os.environ.get("GRADIO_TEMP_DIR"):  # gradio's uploads and cache: this process's own (see process_folder)
        os.environ["GRADIO_TEMP_DIR"] = str(process_folder() / "gradio")
    menu = server_menu(args.server, limits) if args.server else local_menu(args, limits)
    keep = int(args.delete_uploads_after * 3600)
    demo = ui.build_app(menu, limits=limits, gpu=spaces.GPU if ZERO_GPU else None, concurrency=args.concurrency,
                        delete_cache=(min(keep, 3600), keep) if keep > 0 else None)
    routes = [] if args.no_openai_api else OpenAIApi(
        menu, limits, demo.answers, api_keys=[k.strip() for k in (args.api_key or "").split(",") if k.strip()],
    ).attach(demo, args.concurrency)
    # one answer queued or running per client (RequestGuard), and a bounded queue: a full one is refused
    demo.queue(default_concurrency_limit=args.concurrency, max_size=QUEUED_PER_ANSWER_SLOT * args.concurrency)
    # No server-side rendering, no run history: through the SSR server, gradio 6.27-6.31's run-history
    # endpoints let a forged Host header use the host's Hugging Face token (CVE-2026-134825).
    launch = dict(server_name=args.host, server_port=args.port, share=args.share, theme=page_style.theme(),
                  css=page_style.CSS, head=page_style.head(args.mcp, limits.max_images_per_conversation),
                  i18n=ui.ANNOUNCED, max_file_size=f"{args.max_upload_mb}mb",
                  footer_links=["api", "gradio", "settings"],
                  ssr_mode=False, run_history=False, mcp_server=args.mcp,  # always a bool: the flag alone decides
                  app_kwargs={"routes": routes, "middleware": [Middleware(
                      RequestGuard, concurrency_id=ui.ANSWERS, max_files=limits.max_images_per_conversation,
                      max_file_bytes=limits.max_upload_mb * 2**20)]})
    return demo, menu, launch


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    demo, _, launch = build(parse_args(argv))
    demo.launch(**launch)


if __name__ == "__main__":
    main()
