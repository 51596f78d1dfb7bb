"""An OpenAI chat completion request, read into the app's own terms: `conversation.Message`s with
their images and videos written to files, the system prompt, `config.GenerationSettings`, and how the
answer is to be sent. Every check runs here, before the request waits for the model: the page's
conversation checks (`conversation.checked_turns`) and image checks (media.py), with the same limits
and messages; a refusal is a `RequestError` naming the request's field.

Media come only as base64 `data:` URLs: the server fetches nothing on a client's behalf. A video is a
data URL of a video file, or a list of frames as vLLM takes it (`data:video/jpeg;base64,<frame>,<frame>`,
each frame an image) with their times in `mm_processor_kwargs.video_timestamps`: what this app's own
`--server` client sends.

Fields this server does not use are ignored and logged, as vLLM does, unless they ask for an answer it
cannot give (several choices, log probabilities, tool calls, JSON output, other penalties): those are
refused, saying what to send instead. No gradio and no model code here.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import mimetypes
from dataclasses import dataclass, field
from pathlib import Path

from . import media
from .config import (
    DEFAULT_SYSTEM_PROMPT,
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    SETTING_RANGES,
    GenerationSettings,
    Limits,
    SettingsError,
)
from .conversation import Message, checked_turns
from .errors import UserError

log = logging.getLogger(__name__)

REMOTE = ("{param} is a web address; this server fetches nothing on a client's behalf. Send the file itself "
          "as a base64 data URL (data:image/png;base64,...).")
NOT_DATA = "{param} must be a base64 data URL (data:image/png;base64,...)."
# the request's field -> the setting it sets (max_completion_tokens, when given, wins over max_tokens)
SETTINGS = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens", "temperature": "temperature",
            "top_p": "top_p", "top_k": "top_k", "repetition_penalty": "repetition_penalty", "seed": "seed"}
# Fields taken as they are sent but only where they ask for nothing this server cannot give: the value
# that asks for nothing, and what to do instead.
NEUTRAL = {
    "n": (1, "n must be 1: this server writes one answer per request."),
    "logprobs": (False, "logprobs must be false: this server does not return log probabilities."),
    "top_logprobs": (0, "top_logprobs must be 0: this server does not return log probabilities."),
    "presence_penalty": (0, "presence_penalty must be 0: use repetition_penalty (1.0 to 2.0) instead."),
    "frequency_penalty": (0, "frequency_penalty must be 0: use repetition_penalty (1.0 to 2.0) instead."),
    "logit_bias": ({}, "logit_bias is not supported by this server; leave it out."),
    "tools": ([], "This server does not call tools; leave tools out, or set tool_choice to \"none\"."),
    "response_format": ({"type": "text"}, "response_format must be {\"type\": \"text\"}: this server writes "
                                          "plain text."),
}
KNOWN = {"model", "messages", "stream", "stream_options", "stop", "mm_processor_kwargs", "media_io_kwargs",
         "return_token_ids", "tool_choice", *SETTINGS, *NEUTRAL}
# other fields of OpenAI's chat completion request and vLLM's, named in the log when ignored
DEFINED = {"audio", "function_call", "functions", "metadata", "modalities", "parallel_tool_calls", "prediction",
           "prompt_cache_key", "reasoning_effort", "safety_identifier", "service_tier", "store", "user", "verbosity",
           "web_search_options", "add_generation_prompt", "add_special_tokens", "allowed_token_ids", "bad_words",
           "chat_template", "chat_template_kwargs", "continue_final_message", "documents", "echo", "ignore_eos",
           "include_stop_str_in_output", "min_p", "min_tokens", "priority", "request_id", "skip_special_tokens",
           "stop_token_ids", "structured_outputs", "truncate_prompt_tokens"}
FRAME_LIST = "video/jpeg"  # vLLM's type for a list of frames, each an image


class RequestError(UserError):
    """A request to change, with the field (`param`, as OpenAI names it) and OpenAI's `code`, if any."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message, status)
        self.param, self.code = param, code


@dataclass
class ChatRequest:
    """What a chat completion asks for, checked, with its media written under `folder`."""

    model: str
    messages: list[Message]
    system: str
    settings: GenerationSettings
    stream: bool = False
    include_usage: bool = False
    stop: list[str] = field(default_factory=list)
    return_token_ids: bool = False  # vLLM's: the prompt's and the answer's token ids too


@dataclass
class _Visual:
    """An image or video part of a message: its data URL's media type and base64 payload, to be
    written to `path`."""

    kind: str
    payload: str
    param: str
    path: Path
    video: bool = False


def parse_request(body: object, models: list[str], limits: Limits, folder: Path) -> ChatRequest:
    """The request `body` (parsed JSON), checked, its media decoded and checked into `folder`.
    Raises RequestError (or the conversation's and media's own UserErrors, with their statuses)."""
    if not isinstance(body, dict):
        raise RequestError("The request must be a JSON object in OpenAI's chat completion format.")
    _check_fields(body)
    model = body.get("model")
    if model is None:
        model = models[0]
    if model not in models:  # never load whatever a client names
        raise RequestError(f"Unknown model; this app serves {', '.join(models)}.", 404, "model", "model_not_found")
    stream = _flag(body, "stream")
    options = body.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict)):
        raise RequestError("stream_options is taken only with stream: true, as an object.", param="stream_options")
    messages, system, visuals = _conversation(body.get("messages"), folder)
    checked_turns(messages, system, limits)  # before any file is decoded: counts, sizes, roles
    frames = _write_visuals(visuals, _timestamps(body), limits)
    return ChatRequest(model=model, messages=messages, system=system, settings=_settings(body, frames),
                       stream=stream, include_usage=_flag(options or {}, "include_usage", "stream_options."),
                       stop=_stop(body.get("stop")), return_token_ids=_flag(body, "return_token_ids"))


def _check_fields(body: dict) -> None:
    ignored = set(body) - KNOWN
    if ignored:  # as vLLM logs them; other names are a client's text, which stays out of the log
        named = sorted(ignored & DEFINED)
        log.warning("The following fields were present in the request but ignored: %s%s", named,
                    f" and {len(ignored) - len(named)} others" if len(named) < len(ignored) else "")
    for name, (neutral, message) in NEUTRAL.items():
        value = body.get(name)
        if name == "tools" and body.get("tool_choice") == "none":
            continue
        if value is not None and value != neutral and not (name == "response_format" and value == {}):
            raise RequestError(message, param=name)


def _flag(body: dict, name: str, prefix: str = "") -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise RequestError(f"{prefix}{name} must be true or false.", param=prefix + name)
    return bool(value)


def _settings(body: dict, frames: int | None) -> GenerationSettings:
    """The settings a request asks for, each checked on its own so that a refusal names its field.
    Missing values: the page API's defaults, but a repetition penalty of 1.0 (what OpenAI clients
    expect). Tiles and frames: vLLM's mm_processor_kwargs.max_dynamic_patch and
    media_io_kwargs.video.num_frames (-1: every frame sent, or as many as the app takes)."""
    values = {"repetition_penalty": 1.0}
    for name, setting in SETTINGS.items():
        if body.get(name) is not None:
            values[setting] = body[name]
    if values.get("top_k") == -1:  # vLLM's "off"
        values["top_k"] = 0
    processing, io_options = _object(body, "mm_processor_kwargs"), _object(body, "media_io_kwargs")
    if processing.get("max_dynamic_patch") is not None:
        values["max_tiles"] = processing["max_dynamic_patch"]
    asked = _object(io_options, "video", "media_io_kwargs.").get("num_frames")
    if asked == -1 or (asked is None and frames):
        asked = frames or SETTING_RANGES["num_frames"].high
    if asked is not None:
        values["num_frames"] = asked
    params = {setting: name for name, setting in SETTINGS.items() if name in body}
    params.update(max_tiles="mm_processor_kwargs.max_dynamic_patch", num_frames="media_io_kwargs.video.num_frames")
    for setting, value in values.items():
        try:
            GenerationSettings.checked(**{setting: value})
        except SettingsError as e:
            raise RequestError(str(e), param=params.get(setting, setting)) from None
    return GenerationSettings.checked(**values)


def _object(body: dict, name: str, prefix: str = "") -> dict:
    value = body.get(name)
    if value is not None and not isinstance(value, dict):
        raise RequestError(f"{prefix}{name} must be an object.", param=prefix + name)
    return value or {}


def _stop(stop: object) -> list[str]:
    stops = [stop] if isinstance(stop, str) else [] if stop is None else stop
    if not (isinstance(stops, list) and len(stops) <= MAX_STOP_STRINGS
            and all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops)):
        raise RequestError(f"stop must be a string or a list of up to {MAX_STOP_STRINGS} strings, each of 1 to "
                           f"{MAX_STOP_CHARS} characters.", param="stop")
    return stops


# --------------------------------------------------------------------------- messages
def _conversation(messages: object, folder: Path) -> tuple[list[Message], str, list[_Visual]]:
    """(the user's and assistant's messages, the system prompt, the images and videos to write)."""
    if not isinstance(messages, list):
        raise RequestError("messages must be a list of {\"role\", \"content\"} messages.", param="messages")
    out, system, visuals = [], [], []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "developer", "user", "assistant"):
            raise RequestError(f"{where}.role must be \"system\", \"user\" or \"assistant\".", param=f"{where}.role")
        text, found = _content(message.get("content"), where, folder, len(visuals), role == "user")
        visuals += found
        if role in ("system", "developer"):
            system.append(text)
            continue
        videos = [v.path for v in found if v.video]
        if len(videos) > 1:
            raise RequestError("Send one video per message.", param=f"{where}.content")
        out.append(Message(role, text, [str(v.path) for v in found if not v.video], str(videos[0]) if videos else None))
    return out, "\n".join(system) if system else DEFAULT_SYSTEM_PROMPT, visuals


def _content(content: object, where: str, folder: Path, seen: int, media_allowed: bool) -> tuple[str, list[_Visual]]:
    """A message's text (its text parts joined by new lines) and its images and videos."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise RequestError(f"{where}.content must be a string or a list of parts.", param=f"{where}.content")
    texts, visuals = [], []
    for j, part in enumerate(content):
        param = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(part.get("text"))
        elif kind in ("image_url", "video_url") and media_allowed:
            url = part.get(kind)
            url = url.get("url") if isinstance(url, dict) else url
            visuals.append(_visual(url, f"{param}.{kind}.url", folder, seen + len(visuals) + 1, kind == "video_url"))
        elif kind in ("image_url", "video_url"):
            raise RequestError(f"Only user messages may hold images or videos ({param}).", param=param)
        else:
            raise RequestError(f"{param} must be a text, image_url or video_url part.", param=param)
    if not all(isinstance(t, str) for t in texts):
        raise RequestError(f"The text parts of {where} must be text.", param=f"{where}.content")
    return "\n".join(texts), visuals


# --------------------------------------------------------------------------- media
def _timestamps(body: dict) -> list:
    """mm_processor_kwargs.video_timestamps: one list of seconds per video, in the request's order."""
    times = _object(body, "mm_processor_kwargs").get("video_timestamps")
    if times is None:
        return []
    if not (isinstance(times, list) and all(isinstance(ts, list) and all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t >= 0 for t in ts)
            for ts in times)):
        raise RequestError("mm_processor_kwargs.video_timestamps must hold one list of seconds per video.",
                           param="mm_processor_kwargs.video_timestamps")
    return times


def _visual(url: object, param: str, folder: Path, number: int, video: bool) -> _Visual:
    """The part's file: image<number> or video<number>, with its media type's extension (a frame
    list: media.FRAMES_SUFFIX)."""
    kind, payload = _data(url, param)
    stem = f"{'video' if video else 'image'}{number}"
    if video and kind == FRAME_LIST:
        return _Visual(kind, payload, param, folder / (stem + media.FRAMES_SUFFIX), video)
    extension = mimetypes.guess_extension(kind) or (".video" if video else ".image")
    return _Visual(kind, payload, param, folder / (stem + extension), video)


def _write_visuals(visuals: list[_Visual], timestamps: list, limits: Limits) -> int | None:
    """Each image and video written to its path, checked as the page checks uploads; the most frames
    a frame list holds (None without one)."""
    frames, videos = None, 0
    for visual in visuals:
        if visual.video and visual.kind == FRAME_LIST:
            times = timestamps[videos] if videos < len(timestamps) else None
            frames = max(frames or 0, _write_frame_list(visual, times, limits))
        else:
            visual.path.write_bytes(_decoded(visual.payload, visual.param))
            if not visual.video:  # a video is checked as the answer reads it
                _checked_image(visual.path, visual.param, limits)
        videos += visual.video
    return frames


def _write_frame_list(visual: _Visual, times: list | None, limits: Limits) -> int:
    """vLLM's frame list as one video file (media.write_frames); frames at one a second where the
    request gives no times for it (as this project's vLLM plugin does)."""
    encoded = visual.payload.split(",")
    if len(encoded) > limits.max_video_frames:
        raise RequestError(f"{visual.param} holds {len(encoded)} frames; the limit is {limits.max_video_frames}.",
                           413, visual.param)
    if times is None or len(times) != len(encoded):
        times = [float(i) for i in range(len(encoded))]
    frames = []
    for k, frame in enumerate(encoded, 1):
        path = visual.path.with_name(f"{visual.path.name.removesuffix(media.FRAMES_SUFFIX)}-frame{k}")
        path.write_bytes(_decoded(frame, visual.param))
        _checked_image(path, visual.param, limits)
        frames.append(path)
    media.write_frames(frames, times, visual.path)
    for path in frames:
        path.unlink()
    return len(frames)


def _data(url: object, param: str) -> tuple[str, str]:
    """(media type, base64 payload) of a data URL."""
    if isinstance(url, str) and url.lower().startswith(("http://", "https://")):
        raise RequestError(REMOTE.format(param=param), param=param, code="invalid_image_url")
    head, comma, payload = url.partition(",") if isinstance(url, str) else ("", "", "")
    if not (comma and head.lower().startswith("data:") and head.lower().endswith(";base64")):
        raise RequestError(NOT_DATA.format(param=param), param=param, code="invalid_image_url")
    return head[5:].split(";")[0].strip().lower(), payload


def _decoded(payload: str, param: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{param} is not valid base64.", param=param, code="invalid_image_url") from None


def _checked_image(path: Path, param: str, limits: Limits) -> None:
    try:
        media.image_size(path, limits)
    except media.MediaError as e:
        raise RequestError(str(e), e.status, param, "invalid_image_format") from None
