"""Help as a user reads it (issue 25 items 2 and 9): every command's help, the group's too, looped
over what the app registers so a new command is covered as it lands: no text lost to markup,
plain metavars (`DEST`, `FOLDER...`, `N`) instead of a type's template, readable at 80 columns."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from retrieval.cli import app

runner = CliRunner()
NARROW = {"COLUMNS": "80"}


def _commands() -> dict[str, Any]:
    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def _help(*args: str) -> str:
    r = runner.invoke(app, [*args, "-h"], env=NARROW, prog_name="retrieve")
    assert r.exit_code == 0, r.output
    return r.output


def _flat(text: str) -> str:
    return " ".join(text.split())


def _texts(command: Any) -> list[str]:
    """What the help must show whole: the command's text and each parameter's help."""
    doc = [command.help] if command.help else []
    return doc + [p.help for p in command.params if getattr(p, "help", None)]


@pytest.mark.parametrize("name", [None, *_commands()])
def test_help_shows_every_text_whole_brackets_included(name):
    """`--ray ... pip install "retrieval[ray]"` lost `[ray]` to rich's markup; no help text may lose
    a bracket, a backtick or a word, at 80 columns (nothing cut to `~/.local/share/r…`)."""
    command = typer.main.get_command(app) if name is None else _commands()[name]
    shown = _flat(_help(*([name] if name else [])))
    for text in _texts(command):
        paragraphs = [_flat(p) for p in text.split("\n\n")]
        for para in paragraphs:
            assert para in shown, (name, para)
    assert "…" not in shown
    if name == "index":
        assert '"retrieval[ray]"' in shown and "~/.local/share/retrieval/index" in shown


@pytest.mark.parametrize("name", [None, *_commands()])
def test_help_names_values_plainly_and_fits_80_columns(name):
    """Usage `retrieve backup [OPTIONS] DEST`, `FOLDER...`, `--batch N`: not `{dest}`,
    `<list[Path]>`, `<int range> [x>=0]`; lines fit 80 columns with room for the descriptions."""
    text = _help(*([name] if name else []))
    usage = text.splitlines()[0]
    assert re.fullmatch(r"Usage: retrieve( [a-z]+)? \[OPTIONS\]( \[?[A-Z][A-Z0-9_]*(\.\.\.)?\]?)*"
                        r"( COMMAND \[ARGS\]\.\.\.)?", usage), usage
    options = text.split("\nOptions:\n")[1].split("\n\n")[0]
    names = [line.strip().split("  ")[0] for line in options.splitlines() if line.startswith("  -")]
    for column in names:  # `-m, --model NAME`, `--multiscale / --single-scale`, `-h, --help`
        assert re.fullmatch(r"(-\w, )?--[a-z-]+(, --[a-z-]+)?( / --[a-z-]+)?( [A-Z][A-Z0-9_,]*)?", column), column
    for bad in ("[x>=", "range", "<int", "<str", "<path", "<list", "list[", "INTEGER", "TEXT"):
        assert bad not in text, (name, bad)
    assert all(len(line) <= 80 for line in text.splitlines()), name
    command = typer.main.get_command(app) if name is None else _commands()[name]
    for p in command.params:
        if p.param_type_name == "argument":
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*(\.\.\.)?", p.metavar) and p.metavar in usage, (name, p.name)
        elif not (getattr(p, "is_flag", False) or getattr(p, "count", False)):  # -v, -vv take no value
            assert re.fullmatch(r"[A-Z][A-Z0-9_,]*", p.metavar), (name, p.opts, p.metavar)
            long = max(p.opts, key=len)
            assert f"{long} {p.metavar}" in text, (name, p.opts)
    # descriptions start by column 34: at least 46 columns of text per line, not ~17
    starts = [len(line) - len(line.lstrip()) for line in text.splitlines()
              if line.startswith("    ") and line.strip()]
    assert all(s <= 34 for s in starts), (name, max(starts))


def test_usage_errors_name_arguments_plainly():
    r = runner.invoke(app, ["index"], prog_name="retrieve")
    assert r.exit_code == 2 and "Usage: retrieve index [OPTIONS] FOLDER..." in r.output
    assert "Missing argument 'FOLDER...'" in r.output
    r = runner.invoke(app, ["backup"], prog_name="retrieve")
    assert r.exit_code == 2 and "Usage: retrieve backup [OPTIONS] DEST" in r.output


def test_commands_are_listed_by_their_whole_first_sentence():
    text = _flat(_help())
    for name, command in _commands().items():
        first = _flat(command.help.split("\n\n")[0])
        sentence = first[:first.index(". ") + 1] if ". " in first else first
        assert f"{name} {sentence}" in text, name
