"""Eagle2 for vLLM, with this project's semantics (a `vllm.general_plugins` entry point).

vLLM calls `register` in every process it starts. After it, `vllm serve <Eagle2 folder or hub name>`
reads the checkpoint's config without the hub's remote code, renders chats to token ids (typed text
stays text), and tiles, normalises and lays out images with `eagle_demo.preprocessing`, as the app's
own engine does.
"""

from __future__ import annotations

# architecture (config.json) -> the model class here: the current 1B/2B hub layout, and the older one
# of the 9B and early 1B/2B revisions
MODELS = {"Eagle2_5_VLForConditionalGeneration": "Eagle2ForVllm", "Eagle2ChatModel": "Eagle2ChatForVllm"}


def register() -> None:
    from vllm import ModelRegistry
    from vllm.renderers.registry import RENDERER_REGISTRY

    from . import penalty
    from .config import register_configs

    register_configs()
    penalty.register()
    RENDERER_REGISTRY.register("hf", f"{__name__}.renderer", "Eagle2Renderer")  # see renderer.py
    for architecture, name in MODELS.items():  # the first replaces vLLM's own (InternVL's tiling and normalisation)
        ModelRegistry.register_model(architecture, f"eagle_demo.vllm_plugin.model:{name}")
