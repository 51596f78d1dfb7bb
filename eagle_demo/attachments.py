"""What waits to be sent: the gallery's images and the video slot, and the files dropped, pasted or
attached in the message box. Each file is checked as it arrives; the gallery counts what the chat
holds against its limit and numbers its images as the model will see them. Also the notes about
them: the wait before the first word on a CPU, and the frames a video answer read.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from . import media, wait
from .backend import Backend
from .chat_history import answer_text, conversation, is_error, is_video, question
from .config import GenerationSettings, Limits
from .errors import UserError
from .records import OutputFiles, frames_read


class Attachments:
    """The handlers of the gallery, the video slot and the message box's files, for the models of
    `menu` within `limits`. `on_gpu`: no wait note (the first word comes within seconds)."""

    def __init__(self, menu: Backend, limits: Limits, files: OutputFiles, on_gpu: bool = False):
        self.menu, self.limits, self.files, self.on_gpu = menu, limits, files, on_gpu

    def in_chat(self, history: list[dict]) -> int:
        return sum(len(t.files) for t in conversation(history or []))

    def gallery_update(self, history: list[dict], records: dict | None, items, **changes) -> dict:
        """The gallery's label (what the chat holds and what waits, against the chat's limit) and,
        with `items`, its images numbered as the model will see them (`<image k>`: images and
        video frames counted over the chat; a video's frames as its answer read them)."""
        label = (f"Images · {self.in_chat(history) + len(items or [])} of {self.limits.max_images_per_conversation} "
                 "in this chat")
        if items is None:
            return gr.update(label=label, **changes)
        seen = self._visuals_before(history or [], records)
        numbered = [(item[0], f"<image {seen + k}>") for k, item in enumerate(items, 1)]
        return gr.update(label=label, value=numbered or None, **changes)

    def _visuals_before(self, history: list[dict], records: dict | None) -> int:
        """Images and video frames the model sees in the chat (as `conversation` keeps it: a question
        answered by an error drops out)."""
        seen, video_waiting = 0, False
        for index, message in enumerate(history):
            if is_error(message):
                if index and history[index - 1]["role"] == "user":
                    seen, video_waiting = seen - len(question(history[index - 1]).images), False
            elif message["role"] == "user":
                asked = question(message)
                seen, video_waiting = seen + len(asked.images), bool(asked.video)
            elif video_waiting:
                seen, video_waiting = seen + frames_read(records, index, answer_text(message)), False
        return seen

    def _checked_images(self, paths: list[str], history: list[dict], waiting: int) -> list[str]:
        """Of `paths` (added to `waiting` images), those that open, are within the limits and fit in
        the chat; a toast for each one refused, saying why and what to do."""
        kept, room = [], self.limits.max_images_per_conversation - self.in_chat(history) - waiting
        for path in paths:
            try:
                media.image_size(path, self.limits)
            except media.MediaError as e:
                gr.Warning(f"{e} It was not added.")
                continue
            if len(kept) >= room:
                gr.Warning(f"{Path(path).name} was not added: a chat holds {self.limits.max_images_per_conversation} "
                           "images and videos. Remove one from the gallery, or Clear the chat for more.")
                continue
            kept.append(path)
        return kept

    def check_gallery(self, images, history: list[dict], records: dict | None):
        """The gallery after any change (an upload, a removal): each image checked, a refused one out
        at once, the rest numbered. Unchanged when all is in order (its own update changes it again)."""
        items = list(images or [])
        kept = set(self._checked_images([item[0] for item in items], history, 0))
        update = self.gallery_update(history, records, [item for item in items if item[0] in kept])
        in_order = [tuple(item) for item in items] == list(update.get("value") or [])
        return gr.skip() if in_order else update

    def take_attached(self, box: dict | None, images, video, history: list[dict], records: dict | None,
                      taken: list[str] | None):
        """Files pasted, dropped or attached in the message box move to the gallery (images, checked and
        numbered) or the video slot; the box keeps its text. `taken`: what the last call moved (the
        box reports a file twice), to be left alone."""
        files = [f for f in (box or {}).get("files") or [] if isinstance(f, str) and f not in (taken or [])]
        if not files:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        items = list(images or [])
        videos = [f for f in files if is_video(f)]
        added = self._checked_images([f for f in files if not is_video(f)], history, len(items))
        if len(videos) > 1 or (videos and video):
            gr.Info(f"A message holds one video: {Path(videos[-1]).name} takes the video slot.")
        # the gallery untouched when nothing joins it: a removal meanwhile must stand
        gallery = self.gallery_update(history, records, items + [(p, None) for p in added]) if added else gr.skip()
        return ({"text": (box or {}).get("text") or "", "files": []}, gallery, videos[-1] if videos else gr.skip(),
                files)

    def wait_note(self, model: str, images, video, **settings) -> str:
        """On a CPU, before sending: the wait for the images, video and settings chosen."""
        paths = [item[0] for item in images or []]
        if self.on_gpu or not (paths or video) or model not in self.menu.names:
            return ""
        try:
            chat_model = self.menu.model(model)
            estimate = chat_model.first_word_estimate(paths, video, GenerationSettings.checked(**settings))
        except UserError:  # a file or value that the answer itself refuses, saying why
            return ""
        return "" if estimate is None else f"**Wait** {wait.describe(estimate, loaded=chat_model.loaded)}"

    def frames_seen(self, history: list[dict], records: dict | None):
        """The frames the last answer about a video read, with their times, for the expandable row."""
        turns = conversation(history or [])
        video = next((t.video for t in reversed(turns) if t.video), None)
        if video is None:
            return None
        answers = [i for i, m in enumerate(history) if m["role"] == "assistant" and not is_error(m)]
        frames = frames_read(records, answers[-1], answer_text(history[answers[-1]])) if answers \
            else GenerationSettings().num_frames
        try:
            clip = media.sample_video(video, frames, self.limits, frame_size=(224, 224))
        except media.MediaError:
            return None
        return [(self.files.image(frame, f"{video}|{frames}|{i}", "frame"), f"Frame {i} · {t:.2f} s")
                for i, (frame, t) in enumerate(zip(clip.frames, clip.timestamps), 1)]
