"""The `retrieve` typer app: its group, the one error boundary, logging, and help in plain text
(`retrieve index [OPTIONS] FOLDER...`, `--index DIR`), as git, rg and sqlite-utils print theirs."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import click
import typer
from rich.console import Console
from rich.logging import RichHandler

from ..errors import RetrievalError, UsageError
from .options import plain_metavars
from .output import error_line

F = TypeVar("F", bound=Callable[..., Any])
VERBOSE = ("-v", "-vv", "--verbose")
SIGPIPE_STATUS = 141  # what a shell reports for a process a closed pipe stopped (128 + SIGPIPE)


def verbose_first(args: list[str], commands: dict[str, Any]) -> list[str]:
    """Move -v/--verbose written after the command name in front of it, where the group parses
    it: `retrieve index DIR -v` means `retrieve -v index DIR`. Stops at a literal `--`, and
    leaves the tokens alone if the command has a -v/--verbose of its own. The group's own
    options are all flags, so the first token that is not an option is the command."""
    at = next((i for i, a in enumerate(args) if a == "--" or not a.startswith("-")), None)
    if at is None or args[at] not in commands:
        return args
    own = {o for p in commands[args[at]].params for o in (*p.opts, *p.secondary_opts)}
    end = args.index("--", at) if "--" in args[at:] else len(args)
    moved = [a for a in args[at + 1:end] if a in VERBOSE and a not in own]
    if not moved:
        return args
    rest = [a for a in args[at + 1:end] if a not in VERBOSE or a in own]
    return [*args[:at], *moved, args[at], *rest, *args[end:]]


def _names(p: Any) -> str:
    """`-m, --model NAME`, `--multiscale / --single-scale`: short forms first, then the value."""
    def joined(opts: list[str]) -> str:
        return ", ".join(sorted(opts, key=lambda o: o.startswith("--")))

    names = joined(p.opts) + (f" / {joined(p.secondary_opts)}" if p.secondary_opts else "")
    return f"{names} {p.metavar}" if p.metavar else names


def _option_help(p: Any) -> str:
    """The option's help, then `[default: X]` for a literal default (a computed one is said in the
    help: "(default: ...)") or `[required]`. Ranges are the error message's to say."""
    text, default = p.help or "", p.default
    if p.required:
        return f"{text}  [required]".strip()
    if p.show_default is False or default is None or callable(default) or default in ([], ()) or p.count:
        return text  # a counted flag (-v, -vv) has no default worth a word
    if isinstance(default, bool):
        if not p.secondary_opts:
            return text
        default = (p.opts if default else p.secondary_opts)[-1]
    return f"{text}  [default: {default}]".strip()


def _records(ctx: Any, params: list[Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(arguments, options) as (name, help) rows for the help's two lists."""
    arguments = [(p.metavar, p.help or "") for p in params if p.param_type_name == "argument"]
    options = [(_names(p), _option_help(p)) for p in params
               if p.param_type_name == "option" and not getattr(p, "hidden", False)]
    return arguments, options


def _write_rows(formatter: Any, title: str, rows: list[tuple[str, str]]) -> None:
    """A titled two-column list, as click's write_dl but never breaking a word at a hyphen: a value
    to type (`fast-cpu`, `--rerank-k`) stays whole on one line."""
    if not rows:
        return
    column = min(max(len(first) for first, _ in rows), 30) + 2
    with formatter.section(title):
        indent = " " * formatter.current_indent
        width = max(formatter.width - formatter.current_indent - column, 30)
        for first, second in rows:
            lines = textwrap.wrap(second, width, break_on_hyphens=False, break_long_words=False) or [""]
            if len(first) > column - 2:
                formatter.write(f"{indent}{first}\n")
                first = ""
            formatter.write(f"{indent}{first:<{column}}{lines[0]}".rstrip() + "\n")
            formatter.write("".join(f"{indent}{'':<{column}}{line}\n" for line in lines[1:]))


def _write_records(ctx: Any, params: list[Any], formatter: Any) -> None:
    arguments, options = _records(ctx, params)
    _write_rows(formatter, "Arguments", arguments)
    _write_rows(formatter, "Options", options)


class Command(typer.core.TyperCommand):
    """Every command: plain metavars (options.plain_metavars) in help, usage lines and errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plain_metavars(self.params)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [str(p.metavar) if p.required else f"[{p.metavar}]"
                         for p in self.get_params(ctx) if p.param_type_name == "argument"]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _write_records(ctx, self.get_params(ctx), formatter)


@contextmanager
def _closed_pipe_ends_quietly() -> Iterator[None]:
    """The reader went away (`retrieve query ... | head`, `retrieve models | true`): stop quietly
    with the status shell tools give (141), no error line and no flush error at exit."""
    try:
        yield
    except BrokenPipeError:
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # no real file behind stdout (a test's capture)
            pass
        raise typer.Exit(SIGPIPE_STATUS) from None


class _Group(typer.core.TyperGroup):
    """The app's group: -v/--verbose also after the command, help in plain text (its commands by
    their first sentence, whole), and a closed pipe ending quietly for every command and --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plain_metavars(self.params)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, verbose_first(args, dict(self.commands)))

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _closed_pipe_ends_quietly():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        with _closed_pipe_ends_quietly():
            return super().invoke(ctx)

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _write_records(ctx, self.get_params(ctx), formatter)
        rows = [(name, cmd.get_short_help_str(limit=1_000)) for name, cmd in self.commands.items() if not cmd.hidden]
        _write_rows(formatter, "Commands", rows)


class _Typer(typer.Typer):
    """A Typer whose commands are `Command`s unless one says otherwise."""

    def command(self, *args: Any, cls: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        return super().command(*args, cls=cls or Command, **kwargs)


app = _Typer(
    name="retrieve",
    cls=_Group,
    help="Image instance retrieval on DINOv2 features: `retrieve index DIR`, then `retrieve query IMG`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help is plain text: a bracket in it is a bracket, never markup
    context_settings={"help_option_names": ["-h", "--help"]},
)


def boundary(fn: F) -> F:
    """The one error boundary: a value the user gave that cannot be used (UsageError, an unknown
    backbone) is one line and exit 2; any other RetrievalError one line and exit 1. Anything else is
    a bug, not bad input: one line that says so and exit 1, or with -v the whole traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UsageError as e:  # UnknownBackboneError among them
            error_line(_said(e))
            raise typer.Exit(2) from None
        except RetrievalError as e:
            error_line(_said(e))
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort, click.ClickException, typer.TyperException, KeyboardInterrupt,
                BrokenPipeError):
            raise  # click's usage errors (exit 2) and a closed pipe (_closed_pipe_ends_quietly) are the group's
        except Exception as e:
            if logging.getLogger("retrieval").isEnabledFor(logging.DEBUG):
                raise
            error_line(f"unexpected {type(e).__name__}: {e}. This is a bug, not your input: run the command again "
                       f"with -v for the traceback and report it")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _said(e: RetrievalError) -> str:
    """The error's line, with its fix's command-line form when it has one (errors.RetrievalError):
    `...; fix: give the original weights file (`--weights FILE`)`."""
    return f"{e} (`{e.command}`)" if e.command else str(e)


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"retrieve {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True,
                                         help="Debug logging of retrieval's own steps; twice (-vv) also other "
                                              "libraries' (also accepted after the command).")] = 0,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    # -v: our own debug lines; other libraries (Pillow's chunk tags, the faiss loader) stay at warnings
    # unless asked twice (-vv). On a terminal rich formats the messages, and elsewhere each is one
    # plain line (never wrapped: `grep` must get whole messages)
    handler: logging.Handler = (
        RichHandler(console=Console(stderr=True), show_time=False, show_path=False) if sys.stderr.isatty()
        else logging.StreamHandler(sys.stderr))
    # the message alone for rich (which shows the level itself); basicConfig would otherwise give
    # the handler its default "LEVEL:logger:message" format and the level would show twice
    handler.setFormatter(logging.Formatter("%(message)s") if sys.stderr.isatty() else _PlainFormatter())
    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("retrieval").setLevel(logging.DEBUG if verbose else logging.INFO)


class _PlainFormatter(logging.Formatter):
    """`warning: message` on one line: newlines inside a message become spaces."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}".replace("\n", " ")


class StopAfterBatch:
    """First Ctrl-C: finish the current batch, save, exit. Second Ctrl-C: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: Any = None

    def __enter__(self) -> StopAfterBatch:
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        Console(stderr=True).print("stopping after the current batch (Ctrl-C again to stop now)")

    def __call__(self) -> bool:
        return self.requested


