"""vLLM's Eagle2 model, fed by this project's image processing (eagle_demo.preprocessing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import BatchFeature
from vllm.model_executor.models.eagle2_5_vl import Eagle2_5_VLForConditionalGeneration
from vllm.model_executor.models.internvl import BaseInternVLDummyInputsBuilder, BaseInternVLMultiModalProcessor
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.parse import ImageProcessorItems, ImageSize
from vllm.multimodal.processing import BaseProcessingInfo, PromptReplacement, PromptUpdateDetails

from .. import preprocessing


class Eagle2ImageProcessor:
    """Images into tiles exactly as the app's engine tiles them: Eagle2's grid rule, SigLIP's
    normalisation, the thumbnail (an HF-processor-like callable, as vLLM calls one)."""

    def __init__(self, tokenizer, config):
        self.tokens = preprocessing.PromptTokens.from_tokenizer(tokenizer)
        self.ctx_image_token_id = self.tokens.img_context  # read by InternVL's processor base
        self.tile_size, self.max_tiles = config.force_image_size, config.max_dynamic_patch
        self.use_thumbnail, self.tokens_per_tile = config.use_thumbnail, config.tokens_per_tile

    def num_tiles(self, width: int, height: int, max_tiles: int | None = None) -> int:
        return preprocessing.count_tiles(width, height, max_tiles or self.max_tiles, self.tile_size,
                                         self.use_thumbnail)

    def __call__(self, text=None, images=None, max_dynamic_patch: int | None = None, return_tensors=None,
                 **kwargs) -> BatchFeature:
        tiles = [preprocessing.tile_image(image, max_dynamic_patch or self.max_tiles, self.tile_size,
                                          self.use_thumbnail) for image in images or []]
        return BatchFeature({"pixel_values_flat": torch.cat(tiles),
                             "image_num_patches": torch.tensor([len(t) for t in tiles])})


class Eagle2ProcessingInfo(BaseProcessingInfo):
    def get_hf_processor(self, **kwargs) -> Eagle2ImageProcessor:
        return Eagle2ImageProcessor(self.get_tokenizer(), self.get_hf_config())

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    def get_image_size_with_most_features(self) -> ImageSize:
        """The image that makes the most tiles: the grid of max_tiles tiles that exists (n x 1)."""
        processor = self.get_hf_processor()
        return ImageSize(width=processor.tile_size * processor.max_tiles, height=processor.tile_size)


class Eagle2MultiModalProcessor(BaseInternVLMultiModalProcessor[Eagle2ProcessingInfo]):
    def _cached_apply_hf_processor(self, inputs, timing_ctx):
        """Uncached: an image's replacement depends on the other images of its prompt (the label), and
        vLLM's cache keeps one replacement per image (tiling again costs little beside the model)."""
        return self._apply_hf_processor(inputs, timing_ctx)

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence[PromptReplacement]:
        """Each `<image>` becomes its <img> run of tiles; with several images, after its
        `<image k>` label, as Eagle2's chat() writes them."""
        processor = self.info.get_hf_processor()
        tokenizer = self.info.get_tokenizer()
        labelled = mm_items.get_count("image", strict=False) > 1
        max_tiles = hf_processor_mm_kwargs.get("max_dynamic_patch")

        def replacement(index: int) -> PromptUpdateDetails:
            size = mm_items.get_items("image", ImageProcessorItems).get_image_size(index)
            tiles = processor.num_tiles(size.width, size.height, max_tiles)
            label = tokenizer.encode(preprocessing.image_label(index + 1), add_special_tokens=False) if labelled else []
            run = preprocessing.visual_run(processor.tokens, tiles, processor.tokens_per_tile)
            return PromptUpdateDetails.select_token_id(label + run, processor.tokens.img_context)

        placeholder = tokenizer.encode("<image>", add_special_tokens=False)  # the model's get_placeholder_str
        return [PromptReplacement(modality="image", target=placeholder, replacement=replacement)]


@MULTIMODAL_REGISTRY.register_processor(Eagle2MultiModalProcessor, info=Eagle2ProcessingInfo,
                                        dummy_inputs=BaseInternVLDummyInputsBuilder)
class Eagle2ForVllm(Eagle2_5_VLForConditionalGeneration):
    """vLLM's Eagle2 (SigLIP, pixel shuffle, mlp1, Qwen2), with this project's processor."""
