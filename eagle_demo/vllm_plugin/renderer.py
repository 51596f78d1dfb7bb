"""vLLM's chat renderer, with Eagle2's chats rendered to token ids by this project's layout.

vLLM renders a chat with the model's Jinja template into one string and tokenizes it whole, so a
user's typed `<|im_end|>` becomes the turn marker and a typed `<image>` takes an image's place. Here
an Eagle2 chat becomes token ids directly (chat.py): structure as ids, text as text, whoever sends it.
vLLM chooses a renderer by tokenizer mode, never by model, so the plugin registers this one for the
`hf` mode (the one `auto` resolves to); every model that is not Eagle2 renders as vLLM's own HfRenderer.
"""

from __future__ import annotations

from vllm.renderers.chat_utils import parse_chat_messages, parse_chat_messages_async
from vllm.renderers.hf import HfRenderer
from vllm.renderers.inputs.preprocess import parse_dec_only_prompt
from vllm.utils.async_utils import make_async

from . import MODELS
from .chat import ChatError, chat_token_ids, placeholder_ids

# chat_template_kwargs the Eagle2 layout follows with their default values only
DEFAULTS_ONLY = {"add_generation_prompt": True, "continue_final_message": False, "tools": None, "documents": None}


class Eagle2Renderer(HfRenderer):
    def __init__(self, config, tokenizer) -> None:
        super().__init__(config, tokenizer)
        self.eagle2 = config.model_config.architecture in MODELS
        if self.eagle2:
            self.placeholders = placeholder_ids(self.get_tokenizer())
            self._token_ids_async = make_async(self._token_ids, executor=self._executor)

    def render_messages(self, messages, params):
        if not self.eagle2:
            return super().render_messages(messages, params)
        conversation, mm_data, mm_uuids = parse_chat_messages(
            messages, self.model_config, content_format="openai", media_io_kwargs=params.media_io_kwargs,
            mm_processor_kwargs=params.mm_processor_kwargs)
        return conversation, _prompt(self._token_ids(conversation, params), mm_data, mm_uuids)

    async def render_messages_async(self, messages, params):
        if not self.eagle2:
            return await super().render_messages_async(messages, params)
        conversation, mm_data, mm_uuids = await parse_chat_messages_async(
            messages, self.model_config, content_format="openai", media_io_kwargs=params.media_io_kwargs,
            mm_processor_kwargs=params.mm_processor_kwargs)
        return conversation, _prompt(await self._token_ids_async(conversation, params), mm_data, mm_uuids)

    def _token_ids(self, conversation, params) -> list[int]:
        if params.chat_template is not None:
            raise ChatError("Eagle2's prompt layout is the plugin's own: this server takes no chat template.")
        options = params.chat_template_kwargs or {}
        for name, default in DEFAULTS_ONLY.items():
            if options.get(name, default) != default:
                raise ChatError(f"The Eagle2 layout takes {name}={default} only.")
        return chat_token_ids(conversation, self.get_tokenizer(), self.placeholders)


def _prompt(token_ids: list[int], mm_data, mm_uuids) -> dict:
    prompt = parse_dec_only_prompt(token_ids)
    if mm_data is not None:
        prompt["multi_modal_data"] = mm_data
    if mm_uuids is not None:
        prompt["multi_modal_uuids"] = mm_uuids
    return prompt
