"""Errors in two kinds. A `UserError` is meant for the person or client who sent the request: its
text says what to change, and every face (the page, /chat, the OpenAI-compatible API, the CLI)
shows it as it is. Anything else is a fault of the server: its details go to the log under a
reference, and the user is shown only that reference.
"""

from __future__ import annotations


class UserError(Exception):
    """A request that must change, or a state the user must know of; `str(error)` is the message.

    `status` is the HTTP status an API answers with: 400 a bad request, 404 an unknown model, 413 too
    large, 429 busy, 502 a model server's failure, 503 the model could not serve it now.
    """

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class PromptError(UserError):
    """A conversation the model cannot take as it is (its messages, their order, their size)."""


class GenerationError(UserError):
    """The model failed on a request it could take with less (e.g. out of GPU memory)."""

    status = 503
