"""Every `retrieve ...` command shown in a code block of README.md and docs/*.md parses: each
subcommand and option it names exists and takes the values given (a user copies these lines)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from retrieval.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) for each `retrieve` command in a fenced code block: continuation
    lines joined, comments, pipes, redirections and `&&` chains cut off, `$ ` prompts dropped."""
    out, fenced, pending, start = [], False, "", 0
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced, pending = not fenced, ""
            continue
        if not fenced:
            continue
        line = line.strip().removeprefix("$ ")
        if pending:
            line = pending + " " + line
        elif not line.startswith("retrieve "):
            continue
        else:
            start = n
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        pending = ""
        out.append((start, line))
    return out


def _cases() -> list:
    cases = []
    for doc in DOCS:
        for n, line in _commands(doc.read_text()):
            cases.append(pytest.param(line, id=f"{doc.relative_to(ROOT)}:{n}"))
    return cases


def _argv(line: str) -> list[str]:
    words = shlex.split(re.sub(r"\$\([^)]*\)", "X", line), comments=True)  # $(date +%F) is one word
    for i, w in enumerate(words):
        if w in {"|", "&&", ";", ">", "2>", ">>", "&"} or w.startswith((">", "2>")):
            words = words[:i]
            break
    return words[1:]


def test_the_docs_show_commands():
    assert len(_cases()) >= 30  # the walk finds them (36 when this test was written)


@pytest.mark.parametrize("line", _cases())
def test_a_documented_command_parses(line):
    group = typer.main.get_command(app)
    argv = _argv(line)
    try:
        ctx = group.make_context("retrieve", list(argv))
        name, cmd, rest = group.resolve_command(ctx, [*getattr(ctx, "_protected_args", []), *ctx.args])
        assert cmd is not None, line
        cmd.make_context(name, rest, parent=ctx)
    except click.exceptions.Exit:  # --help, --version
        pass
    except click.BadParameter as e:  # a value this machine lacks (a file named in the example)
        assert isinstance(e, click.BadParameter) and not isinstance(e, click.MissingParameter), e.format_message()
    except click.UsageError as e:
        pytest.fail(f"{line!r}: {e.format_message()}")
