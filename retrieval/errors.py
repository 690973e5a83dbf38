"""One exception tree for the library; the CLI (`retrieval/cli/app.py`) turns these into one-line messages."""

from __future__ import annotations

import shlex
from pathlib import Path


class RetrievalError(Exception):
    """Base class of every error the library raises on purpose.

    `str(e)` is one line that reads the same to a Python caller and at the command line: what is
    wrong and, after `fix:`, what to do, in words that fit both (`fix` holds that part alone).
    `command`, when set, is the fix's command-line form (`retrieve index DIR --index ix`): the CLI's
    error boundary adds it to the line; a Python caller does the same through the API (docs/api.md).
    Both are kept when the error is pickled (Ray workers' errors read the same)."""

    def __init__(self, *args: object, fix: str | None = None, command: str | None = None) -> None:
        self.fix = fix
        self.command = command
        if fix is not None and args:
            args = (f"{args[0]}; fix: {fix}", *args[1:])
        super().__init__(*args)


UNREADABLE = "cannot read the file"  # a refusal for access (permissions, I/O), not content: retried each run


class BadImageError(RetrievalError):
    """An image file that cannot be used: unreadable, truncated, too large, unsupported."""

    def __init__(self, path: str | Path, reason: str, *, fix: str | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}", fix=fix or "re-save it as JPEG or PNG, or leave it out")

    @classmethod
    def unreadable(cls, path: str | Path, e: OSError) -> BadImageError:
        """The refusal of a file the OS would not let us stat or read (reason starts UNREADABLE)."""
        return cls(path, f"{UNREADABLE} ({e.strerror or e})", fix="check the path and permissions")

    def __reduce__(self) -> tuple[object, ...]:  # picklable across decoder processes
        return (_bad_image, (self.path, self.reason, self.fix))


def _bad_image(path: str, reason: str, fix: str | None) -> BadImageError:
    return BadImageError(path, reason, fix=fix)


class UsageError(RetrievalError, ValueError):
    """A value a user gave (a flag, a config key or value, a file's contents) that cannot be used.
    The message names the value and what would work; the CLI exits with 2. Also a ValueError, so
    Python callers that catch ValueError keep working."""


class UnknownBackboneError(UsageError):
    """A backbone name that is not in the registry: a value the user gave, so a UsageError (exit 2)."""

    def __init__(self, name: str, valid: list[str]) -> None:
        self.name = name
        self.valid = valid
        super().__init__(f"unknown backbone {name!r}; valid names: {', '.join(valid)}")


class ConfigError(UsageError):
    """A configuration file that cannot be used: unreadable, not TOML, an unknown key or a bad value."""


class WeightsError(RetrievalError):
    """Weights that are missing, unreadable, or belong to another model."""


class ArtifactMismatchError(RetrievalError):
    """A stored artefact (index, whitening, features) made with a different configuration."""


class SchemaVersionError(RetrievalError):
    """A store written by a newer or unknown schema version."""


class StoreError(RetrievalError):
    """The index's SQLite store cannot be used as it is: damaged, locked, read-only, unopenable."""

    def __init__(self, path: str | Path, message: str, *, fix: str | None = None, command: str | None = None) -> None:
        self.path = str(path)
        super().__init__(message, fix=fix, command=command)


class StoreCorruptError(StoreError):
    """store.sqlite is damaged or not a SQLite database at all (SQLITE_CORRUPT / SQLITE_NOTADB)."""

    def __init__(self, path: str | Path, detail: str) -> None:
        self.detail = detail
        folder = Path(path).parent
        super().__init__(
            path, f"{path} is damaged ({detail})",
            fix="check the index to see what is wrong, then restore a backup of its store, or index the folders "
                "again into a new index folder",
            command=f"retrieve check --index {shlex.quote(str(folder))}",
        )


class DiskFullError(StoreError):
    """The disk holding the index folder filled up (SQLITE_FULL, ENOSPC). What was committed stays."""

    def __init__(self, path: str | Path, detail: str = "database or disk is full") -> None:
        self.detail = detail
        self.folder = str(Path(path).parent)
        super().__init__(
            path,
            f"the disk holding {self.folder} is full ({detail}); nothing committed was lost: free some space and run "
            f"the same command again",
        )
