"""One exception tree for the library; `cli.py` turns these into one-line messages."""

from __future__ import annotations

from pathlib import Path


class RetrievalError(Exception):
    """Base class of every error the library raises on purpose."""


class BadImageError(RetrievalError):
    """An image file that cannot be used: unreadable, truncated, too large, unsupported."""

    def __init__(self, path: str | Path, reason: str, *, fix: str | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        self.fix = fix or "re-save it as JPEG or PNG, or leave it out"
        super().__init__(f"{self.path}: {reason}; fix: {self.fix}")

    def __reduce__(self) -> tuple[object, ...]:  # picklable across decoder processes
        return (_bad_image, (self.path, self.reason, self.fix))


def _bad_image(path: str, reason: str, fix: str) -> BadImageError:
    return BadImageError(path, reason, fix=fix)


class UnknownBackboneError(RetrievalError, ValueError):
    """A backbone name that is not in the registry."""

    def __init__(self, name: str, valid: list[str]) -> None:
        self.name = name
        self.valid = valid
        super().__init__(f"unknown backbone {name!r}; valid names: {', '.join(valid)}")


class ConfigError(RetrievalError, ValueError):
    """A configuration file that cannot be used: unreadable, not TOML, an unknown key or a bad value."""


class WeightsError(RetrievalError):
    """Weights that are missing, unreadable, or belong to another model."""


class ArtifactMismatchError(RetrievalError):
    """A stored artefact (index, whitening, features) made with a different configuration."""


class SchemaVersionError(RetrievalError):
    """A store written by a newer or unknown schema version."""
