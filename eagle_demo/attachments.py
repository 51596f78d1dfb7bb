"""What waits to be sent: the gallery's images and the video slot, and the files dropped, pasted or
attached in the message box. Each file, image or video, is checked as it arrives (it opens, it is
within the limits, it fits in the chat); the gallery counts what the chat holds against the chat's
limit and numbers its images over the chat. Also the notes about them: the wait before the first
word on a CPU, and the frames a video answer read.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from . import media, wait
from .backend import Backend
from .chat_history import answer_text, conversation, is_error, is_video
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

    def gallery_update(self, history: list[dict], video: str | None, items, **changes) -> dict:
        """The gallery's label (what the chat holds and what waits, the video slot's included, against
        the chat's limit) and, with `items`, its images numbered over the chat's images ("Image k";
        a video's frames are frames, not images)."""
        label = self.label(history, len(items or []) + bool(video))
        if items is None:
            return gr.update(label=label, **changes)
        seen = sum(len(t.images) for t in conversation(history or []))
        numbered = [(item[0], f"Image {seen + k}") for k, item in enumerate(items, 1)]
        return gr.update(label=label, value=numbered or None, **changes)

    def label(self, history: list[dict], waiting: int) -> str:
        """The gallery's label: the images and videos the chat holds and those waiting, of its limit."""
        return f"Images · {self.in_chat(history) + waiting} of {self.limits.max_images_per_conversation} in this chat"

    def _room(self, history: list[dict], waiting: int) -> int:
        return self.limits.max_images_per_conversation - self.in_chat(history) - waiting

    def _problem(self, path: str) -> media.MediaError | None:
        """Why the image at `path` cannot be taken (it does not open, or is over the limits), if so."""
        try:
            media.image_size(path, self.limits)
        except media.MediaError as e:
            return e
        return None

    def readable(self, paths: list[str]) -> list[str]:
        """Of `paths`, the images this app can open. A refused upload can cross its refusal and come
        back to the gallery under load; sent, it would end the turn as "Could not answer"."""
        return [path for path in paths if self._problem(path) is None]

    def _full(self, names: list[str]) -> str:
        listed = ", ".join(names)
        return (f"{listed} {'was' if len(names) == 1 else 'were'} not added: a chat holds "
                f"{self.limits.max_images_per_conversation} images and videos. Remove one, or Clear the chat for more.")

    def _checked_images(self, paths: list[str], history: list[dict], waiting: int, warned: set[str]) -> list[str]:
        """Of `paths` (added to `waiting` images and videos), those that open, are within the limits and
        fit in the chat; one toast for what is refused, saying why and what to do (never twice for a
        file in `warned`, which gains what is refused now)."""
        kept, unreadable, no_room = [], [], []
        room = self._room(history, waiting)
        for path in paths:
            if (problem := self._problem(path)) is not None:
                unreadable.append((path, problem))
            else:
                (kept if len(kept) < room else no_room).append(path)
        for path, problem in unreadable:
            if path not in warned:
                gr.Warning(f"{problem} It was not added.")
        if fresh := [Path(p).name for p in no_room if p not in warned]:
            gr.Warning(self._full(fresh))
        warned.update(p for p, _ in unreadable)
        warned.update(no_room)
        return kept

    def check_gallery(self, images, video, history: list[dict], warned: list[str] | None):
        """The gallery after any change (an upload, a removal): each new image checked, a refused one out
        at once, the rest numbered. Unchanged when all is in order (its own update changes it again).
        Numbered images were taken already and keep their room: a video added later that finds none is
        the one refused (by check_video), never an image that waits. Each is still checked: under load
        an upload's events can cross, and a refused file was once seen numbered."""
        items = list(images or [])
        seen = set(warned or []) & {item[0] for item in items}  # a file removed, then added again, is told again
        taken = self._checked_images([item[0] for item in items if item[1]], history, 0, seen)
        new = [item[0] for item in items if not item[1]]
        kept = set(taken) | set(self._checked_images(new, history, len(taken) + bool(video), seen))
        update = self.gallery_update(history, video, [item for item in items if item[0] in kept])
        in_order = [tuple(item) for item in items] == list(update.get("value") or [])
        return gr.skip() if in_order else update, sorted(seen)

    def check_video(self, video, images, history: list[dict]):
        """The video slot after a change: a file that is not a video this app can read, or one for
        which the chat has no room, is taken out at once, with a toast that says why."""
        waiting = len(images or [])
        if not video:
            return gr.skip(), gr.update(label=self.label(history, waiting))
        problem = None
        try:
            media.sample_video(video, 1, self.limits, frame_size=(32, 32))
        except media.MediaError as e:
            problem = f"{e} It was not added."
        if problem is None and self._room(history, len(images or [])) < 1:
            problem = self._full([Path(video).name])
        if problem:
            gr.Warning(problem)
            return None, gr.update(label=self.label(history, waiting))
        return gr.skip(), gr.update(label=self.label(history, waiting + 1))

    def refused_uploads(self, names: str):
        """Files the browser held back from one upload (more than a chat holds): one toast naming them."""
        listed = [n for n in (names or "").split("\n") if n.strip()]
        if listed:
            gr.Warning(self._full(listed))
        return ""

    def take_attached(self, box: dict | None, images, video, history: list[dict], taken: list[str] | None,
                      warned: list[str] | None):
        """Files pasted, dropped or attached in the message box move to the gallery (images, checked and
        numbered) or the video slot (checked there); the box keeps its text. `taken`: what the last
        call moved (the box reports a file twice), to be left alone."""
        files = [f for f in (box or {}).get("files") or [] if isinstance(f, str) and f not in (taken or [])]
        if not files:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        items, seen = list(images or []), set(warned or []) & set(files)
        videos = [f for f in files if is_video(f)]
        added = self._checked_images([f for f in files if not is_video(f)], history,
                                     len(items) + bool(video or videos), seen)
        if len(videos) > 1 or (videos and video):
            gr.Info(f"A message holds one video: {Path(videos[-1]).name} takes the video slot.")
        # the gallery untouched when nothing joins it: a removal meanwhile must stand
        gallery = self.gallery_update(history, video or (videos[-1] if videos else None),
                                      items + [(p, None) for p in added]) if added else gr.skip()
        return ({"text": (box or {}).get("text") or "", "files": []}, gallery, videos[-1] if videos else gr.skip(),
                files, sorted(seen))

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
