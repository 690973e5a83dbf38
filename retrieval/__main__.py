"""`python -m retrieval` and the `retrieve` command. A Ctrl-C while the libraries still import
(the first half second) ends as quietly as one later does: one line and exit 130, no traceback."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .cli import app
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    app()


if __name__ == "__main__":  # never on import: spawned worker processes import the main module
    main()
