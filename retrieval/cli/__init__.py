"""`retrieve`: thin typer adapters. Each parses, calls the engine, prints; `app.py` holds the app,
its group and the one error boundary; the commands live in modules by what they work on.

    options     the options several commands share, and the plain metavars of help
    output      one-line errors, literal text, tables and progress
    collection  index, query, info, remove, check, backup
    dedupe      dedupe
    listing     list
    evaluation  eval
    research    extract, pca, match, models
    serving     serve
"""

from . import collection, dedupe, evaluation, listing, research, serving  # noqa: F401 (registers the commands)
from .app import app, verbose_first
from .output import rate

__all__ = ["app", "rate", "verbose_first"]
