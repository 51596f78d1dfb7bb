"""Eagle2 for vLLM, with this project's semantics (a `vllm.general_plugins` entry point).

vLLM calls `register` in every process it starts. After it, `vllm serve <Eagle2 folder or hub name>`
reads the checkpoint's config without the hub's remote code, and tiles, normalises and lays out
images with `eagle_demo.preprocessing`, as the app's own engine does.
"""

from __future__ import annotations

ARCHITECTURE = "Eagle2_5_VLForConditionalGeneration"  # the current 1B/2B hub layout


def register() -> None:
    from vllm import ModelRegistry

    from .config import register_configs

    register_configs()
    # replaces vLLM's own entry for this architecture (InternVL's tiling and normalisation)
    ModelRegistry.register_model(ARCHITECTURE, "eagle_demo.vllm_plugin.model:Eagle2ForVllm")
