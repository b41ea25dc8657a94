"""One error hierarchy, with messages written for the marketer.

Every error that reaches the command line is an `OrchestratorError`: the CLI prints `str(error)`
(never a traceback) and exits with `exit_code`.  Errors about a file carry the file, the line and
the field so that the marketer can go straight to the mistake.
"""

from __future__ import annotations

from pathlib import Path


class OrchestratorError(Exception):
    """Anything the user should read as one sentence, not as a traceback."""

    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field

    def where(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file if self.line is None else f"{self.file}:{self.line}")
        elif self.line is not None:
            parts.append(f"line {self.line}")
        if self.field:
            parts.append(self.field)
        return ": ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        return f"{where}: {self.message}" if where else self.message


class InputError(OrchestratorError):
    """Bad input from the user: a file, an option, a value.  Exit code 2, nothing changed."""

    exit_code = 2


class ConfigError(InputError):
    """settings.toml (or an environment override) is wrong."""


class SegmentError(InputError):
    """A segment definition cannot be compiled."""


class CampaignError(InputError):
    """A campaign definition is wrong."""


class TemplateError(InputError):
    """A template does not compile or does not render for a recipient."""


class ImportFileError(InputError):
    """A CSV file cannot be imported at all (unreadable, no id column, ...)."""


class NotFound(InputError):
    """A named campaign, segment, customer or template does not exist."""


class StorageError(OrchestratorError):
    """The database is unreachable or its schema is newer than this program."""
