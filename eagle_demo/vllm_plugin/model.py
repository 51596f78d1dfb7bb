"""vLLM's Eagle2 model, fed by this project's image and video processing (eagle_demo.preprocessing)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature
from vllm.model_executor.models.eagle2_5_vl import Eagle2_5_VLForConditionalGeneration
from vllm.model_executor.models.internvl import BaseInternVLDummyInputsBuilder, BaseInternVLMultiModalProcessor
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageProcessorItems, ImageSize, VideoProcessorItems
from vllm.multimodal.processing import BaseProcessingInfo, PromptReplacement, PromptUpdateDetails

from .. import preprocessing
from ..model import loading
from ..model.config import vision_from_dict
from ..model.convnext import MobTower
from ..model.eagle2 import projector, tower_features, vision_tower

PLACEHOLDERS = {"image": "<image>", "video": "<video>"}  # what vLLM's chat template writes per item


class Eagle2ImageProcessor:
    """Images and videos into tiles exactly as the app's engine tiles them: Eagle2's grid rule,
    SigLIP's normalisation, the thumbnail; a video's frames one tile each (an HF-processor-like
    callable, as vLLM calls one)."""

    def __init__(self, tokenizer, config, context_tokens: int):
        self.tokens = preprocessing.PromptTokens.from_tokenizer(tokenizer)
        self.ctx_image_token_id = self.tokens.img_context  # read by InternVL's processor base
        self.tile_size, self.max_tiles = config.force_image_size, config.max_dynamic_patch
        self.use_thumbnail, self.tokens_per_tile = config.use_thumbnail, config.tokens_per_tile
        self.dynamic, self.context_tokens = config.dynamic_image_size, context_tokens

    def fitted_max_tiles(self, sizes: list[tuple[int, int]], num_frames: int, requested: int | None) -> int:
        """The engine's rule for a prompt's images of `sizes` beside `num_frames` frames, against the
        server's context (its --max-model-len); the request's Max tiles, else the config's."""
        return preprocessing.fit_tiles_to_context(sizes, num_frames, requested or self.max_tiles, self.context_tokens,
                                                  self.tile_size, self.tokens_per_tile, self.use_thumbnail,
                                                  self.dynamic)

    def num_tiles(self, width: int, height: int, max_tiles: int) -> int:
        return preprocessing.count_tiles(width, height, max_tiles, self.tile_size, self.use_thumbnail)

    def __call__(self, text=None, images=None, videos=None, max_dynamic_patch: int | None = None,
                 return_tensors=None, **kwargs) -> BatchFeature:
        out = {}
        if images:
            max_tiles = self.fitted_max_tiles([image.size for image in images],
                                              sum(len(video) for video in videos or []), max_dynamic_patch)
            tiles = [preprocessing.tile_image(image, max_tiles, self.tile_size, self.use_thumbnail)
                     for image in images]
            out |= {"pixel_values_flat": torch.cat(tiles), "image_num_patches": torch.tensor([len(t) for t in tiles])}
        if videos:
            frames = [[_as_image(frame) for frame in video] for video in videos]
            out |= {"pixel_values_flat_video": torch.cat([preprocessing.tile_image(frame, 1, self.tile_size, False)
                                                          for video in frames for frame in video]),
                    "video_num_patches": torch.tensor([len(video) for video in frames])}
        return BatchFeature(out)


def _as_image(frame) -> Image.Image:
    return frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame)).convert("RGB")


class Eagle2ProcessingInfo(BaseProcessingInfo):
    def get_hf_processor(self, **kwargs) -> Eagle2ImageProcessor:
        return Eagle2ImageProcessor(self.get_tokenizer(), self.get_hf_config(), self.ctx.model_config.max_model_len)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None, "video": None}

    def get_image_size_with_most_features(self) -> ImageSize:
        """The image that makes the most tiles: the grid of max_tiles tiles that exists (n x 1)."""
        processor = self.get_hf_processor()
        return ImageSize(width=processor.tile_size * processor.max_tiles, height=processor.tile_size)

    def get_num_frames_with_most_features(self, seq_len: int, mm_counts: Mapping[str, int]) -> int:
        """As many one-tile frames per video as the context holds beside the largest images."""
        processor = self.get_hf_processor()
        image_tokens = mm_counts.get("image", 0) * (processor.max_tiles + 1) * processor.tokens_per_tile
        frames = (seq_len - image_tokens) // processor.tokens_per_tile // max(mm_counts.get("video", 0), 1)
        return max(frames, 1)


class Eagle2DummyInputsBuilder(BaseInternVLDummyInputsBuilder[Eagle2ProcessingInfo]):
    """The largest images and videos a prompt can hold, for vLLM's memory profiling."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return super().get_dummy_text(mm_counts) + PLACEHOLDERS["video"] * mm_counts.get("video", 0)

    def get_dummy_mm_data(self, seq_len, mm_counts, mm_options):
        size = self.info.get_hf_processor().tile_size
        frames = self.info.get_num_frames_with_most_features(seq_len, mm_counts)
        videos = self._get_dummy_videos(width=size, height=size, num_frames=frames,
                                        num_videos=mm_counts.get("video", 0), overrides=mm_options.get("video"))
        return {**super().get_dummy_mm_data(seq_len, mm_counts, mm_options), "video": videos}


class Eagle2MultiModalProcessor(BaseInternVLMultiModalProcessor[Eagle2ProcessingInfo]):
    def _cached_apply_hf_processor(self, inputs, timing_ctx):
        """Uncached: an image's replacement depends on the other visuals of its prompt (the label), and
        vLLM's cache keeps one replacement per item (tiling again costs little beside the model)."""
        return self._apply_hf_processor(inputs, timing_ctx)

    def _postprocess_hf_mm_data(self, mm_data, hf_processor_mm_kwargs, processed_data) -> BatchFeature:
        processed_data = super()._postprocess_hf_mm_data(mm_data, hf_processor_mm_kwargs, processed_data)
        processed_data["video_token_id"] = processed_data["image_token_id"]  # frames fill <IMG_CONTEXT> runs too
        return processed_data

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        num_frames = hf_inputs.get("video_num_patches", torch.empty(0))
        return {**self._get_image_fields_config(hf_inputs),
                "pixel_values_flat_video": MultiModalFieldConfig.flat_from_sizes("video", num_frames),
                "video_num_patches": MultiModalFieldConfig.batched("video", keep_on_cpu=True),
                "video_token_id": MultiModalFieldConfig.shared("video", len(num_frames), keep_on_cpu=True)}

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence[PromptReplacement]:
        """Each `<image>` becomes its <img> run of tiles; each `<video>` "This is a video:" and a
        "Frame i sampled at t seconds:" line per frame, with the frame's run (labels: see
        _apply_prompt_updates)."""
        processor = self.info.get_hf_processor()
        tokenizer = self.info.get_tokenizer()
        images = mm_items.get_items("image", ImageProcessorItems) if mm_items.get_count("image", strict=False) else None
        videos = mm_items.get_items("video", VideoProcessorItems) if mm_items.get_count("video", strict=False) else None
        sizes = [images.get_image_size(i) for i in range(images.get_count())] if images else []
        frames = sum(videos.get_num_frames(i) for i in range(videos.get_count())) if videos else 0
        max_tiles = processor.fitted_max_tiles([(s.width, s.height) for s in sizes], frames,
                                               hf_processor_mm_kwargs.get("max_dynamic_patch"))

        def image(index: int) -> PromptUpdateDetails:
            size = sizes[index]
            run = preprocessing.visual_run(processor.tokens, processor.num_tiles(size.width, size.height, max_tiles),
                                           processor.tokens_per_tile)
            return PromptUpdateDetails.select_token_id(run, processor.tokens.img_context)

        def video(index: int) -> PromptUpdateDetails:
            times = video_timestamps(videos, index, hf_processor_mm_kwargs)
            ids = tokenizer.encode(preprocessing.VIDEO_INTRO, add_special_tokens=False)
            for i, seconds in enumerate(times, 1):
                line = ("\n" if i > 1 else "") + preprocessing.frame_label(i, seconds)
                ids += tokenizer.encode(line, add_special_tokens=False)
                ids += preprocessing.visual_run(processor.tokens, 1, processor.tokens_per_tile)
            return PromptUpdateDetails.select_token_id(ids, processor.tokens.img_context)

        return [PromptReplacement(modality=m, target=tokenizer.encode(PLACEHOLDERS[m], add_special_tokens=False),
                                  replacement=fn) for m, fn in (("image", image), ("video", video))]

    def _apply_prompt_updates(self, token_ids, mm_prompt_updates):
        """Labels every image `<image k>`, k counting images and frames in prompt order, when the
        prompt holds more than one image or any video, as Eagle2's chat() does. Only here is that
        order known: vLLM resolves each modality's items on their own."""
        images, videos = mm_prompt_updates.get("image", []), mm_prompt_updates.get("video", [])
        if not images or (len(images) == 1 and not videos):
            return super()._apply_prompt_updates(token_ids, mm_prompt_updates)
        tokenizer = self.info.get_tokenizer()
        order = re.findall("|".join(map(re.escape, PLACEHOLDERS.values())), tokenizer.decode(token_ids))
        img_start = self.info.get_hf_processor().tokens.img_start
        k, next_image, next_video, labelled = 0, 0, 0, []
        for placeholder in order:
            if placeholder == PLACEHOLDERS["video"] and next_video < len(videos):
                k += videos[next_video][0].content.full.count(img_start)  # its frames
                next_video += 1
            elif placeholder == PLACEHOLDERS["image"] and next_image < len(images):
                k += 1
                label = tokenizer.encode(preprocessing.image_label(k), add_special_tokens=False)
                labelled.append([_prefixed(update, label) for update in images[next_image]])
                next_image += 1
        return super()._apply_prompt_updates(token_ids, {**mm_prompt_updates, "image": labelled + images[next_image:]})


def _prefixed(update, label: list[int]):
    content = update.content
    return replace(update, content=PromptUpdateDetails(full=label + content.full, is_embed=content.is_embed))


def video_timestamps(videos: VideoProcessorItems, index: int, mm_kwargs: Mapping[str, object]) -> list[float]:
    """Each frame's time in seconds: the client's `video_timestamps` (one list per video, in prompt
    order; the app sends the times it sampled), else the loader's frame indices over its fps."""
    given = mm_kwargs.get("video_timestamps")
    num_frames = videos.get_num_frames(index)
    if given is not None and index < len(given) and len(given[index]) == num_frames:
        return [float(t) for t in given[index]]
    metadata = (videos.metadata or [None] * (index + 1))[index] or {}
    fps = float(metadata.get("fps") or 1.0)
    return [i / fps for i in (metadata.get("frames_indices") or range(num_frames))]


@MULTIMODAL_REGISTRY.register_processor(Eagle2MultiModalProcessor, info=Eagle2ProcessingInfo,
                                        dummy_inputs=Eagle2DummyInputsBuilder)
class Eagle2ForVllm(Eagle2_5_VLForConditionalGeneration):
    """vLLM's Eagle2 (SigLIP, pixel shuffle, mlp1, Qwen2), with this project's processor and video."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        return next((text for name, text in PLACEHOLDERS.items() if modality.startswith(name)), None)

    def embed_multimodal(self, **kwargs: object):
        """vLLM embeds one modality per call; a video's frames take the images' path (one tile each)."""
        if "pixel_values_flat_video" in kwargs:
            kwargs = {"pixel_values_flat": kwargs["pixel_values_flat_video"],
                      "image_num_patches": kwargs["video_num_patches"], "image_token_id": kwargs["video_token_id"]}
        return super().embed_multimodal(**kwargs)


@MULTIMODAL_REGISTRY.register_processor(Eagle2MultiModalProcessor, info=Eagle2ProcessingInfo,
                                        dummy_inputs=Eagle2DummyInputsBuilder)
class Eagle2ChatForVllm(Eagle2ForVllm):
    """The `eagle_chat` layout. Its 1B/2B are Eagle2ForVllm under another name; the 9B's SigLIP +
    ConvNeXt mixture is this project's tower and projector (eagle_demo.model), with vLLM's Qwen2."""

    def _mob(self, config) -> tuple | None:
        mixture = getattr(config, "mob_vision_config", None)
        return vision_from_dict(mixture) if mixture else None

    def _init_vision_model(self, config, quant_config, prefix: str):
        mob = self._mob(config)
        return vision_tower(*mob) if mob else super()._init_vision_model(config, quant_config, prefix)

    def _init_mlp1(self, config):
        mob = self._mob(config)
        if mob is None:
            return super()._init_mlp1(config)
        return projector(*mob, self.downsample_ratio, config.text_config.hidden_size)

    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.vision_model, MobTower):
            return super().extract_feature(pixel_values)
        return self.mlp1(tower_features(self.vision_model, pixel_values, self.downsample_ratio))

    def load_weights(self, weights):
        """The 9B's tower keys named as eagle_demo.model.loading names them (their order in the
        checkpoint tells which tower is which), the towers' heads skipped. Only the towers' tensors
        wait for that; the language model's load as they come."""
        if not isinstance(self.vision_model, MobTower):
            return super().load_weights(weights)
        towers = []

        def all_but_towers():
            for key, tensor in weights:
                if key.startswith(loading.MOB_TOWERS + "."):
                    towers.append((key, tensor))
                else:
                    yield key, tensor

        loaded = super().load_weights(all_but_towers())
        prefixes = loading.mob_key_prefixes(loading.detect_mob_order(key for key, _ in towers))
        renamed = ((loading.to_model_key(key, prefixes), tensor) for key, tensor in towers)
        return loaded | super().load_weights((key, tensor) for key, tensor in renamed if key is not None)
