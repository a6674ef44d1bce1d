"""Errors that name what is wrong and where, raised before any compute is spent."""

from __future__ import annotations


class HebatronError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(HebatronError):
    """A configuration value is invalid; the message names the field."""


class DataError(HebatronError):
    """An input file is unusable; the message names the file and, where known, the line and field."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.path, self.line, self.field = path, line, field
        where = ""
        if path is not None:
            where = str(path) + (f":{line}" if line is not None else "")
            where += f" [field {field!r}]" if field is not None else ""
            where += ": "
        super().__init__(where + message)
