"""The one exception type that carries a user-facing, one-line message."""

from __future__ import annotations

from collections.abc import Mapping


class MedcoreError(Exception):
    """A problem with the user's input (a file, a parameter, a checkpoint).

    The message is a single line that names the offending file or parameter. When it is about a
    parameter, ``param`` holds the parameter's Python name and the message starts with it
    (``"heads_ratio 1.5: must be in [0, 1)"``); the CLI swaps that name for its own flag
    (:meth:`with_flags`), prints ``Error: <message>`` and exits with status 2, without a traceback.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def with_flags(self, flags: Mapping[str, str]) -> str:
        """The message with its leading parameter name replaced by the command-line flag for it."""
        message = str(self)
        flag = flags.get(self.param or "")
        if flag and message.startswith(self.param):
            return flag + message[len(self.param):]
        return message
