"""The `retrieve` typer app: its group, the one error boundary, logging, progress, shared options."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.text import Text

from .. import engine  # engine: names load on first use (torch only for commands that embed)
from ..config import BackboneConfig, EngineConfig, default_index_dir
from ..errors import RetrievalError, UsageError
from ..types import shown

F = TypeVar("F", bound=Callable[..., Any])
VERBOSE = ("-v", "-vv", "--verbose")
PROGRESS_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal


def _verbose_first(args: list[str], commands: dict[str, Any]) -> list[str]:
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


def _no_value_placeholder(params: list[Any]) -> list[Any]:
    """Flags take no value, so help shows no `<bool>` after them (typer shows the type of every
    option unless it has a metavar; an empty one shows nothing)."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class _Group(typer.core.TyperGroup):
    """The app's group: -v/--verbose also after the command, and plain flags in every command's
    help without a value placeholder. One place for both, instead of a change to each command."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _verbose_first(args, dict(self.commands)))

    def get_params(self, ctx: Any) -> list[Any]:
        return _no_value_placeholder(list(super().get_params(ctx)))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            _no_value_placeholder(cmd.get_params(ctx))  # the list holds the command's own objects
        return cmd


app = typer.Typer(
    name="retrieve",
    cls=_Group,
    help="Image instance retrieval on DINOv2 features: `retrieve index DIR`, then `retrieve query IMG`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


Model = Annotated[str, typer.Option("--model", "-m", help="Backbone short name (see `retrieve models`).")]
Weights = Annotated[
    Path | None,
    typer.Option("--weights", help="Local checkpoint, official .pth key layout or safetensors "
                                   "(default: the official file, cached in the torch hub folder)."),
]
DEFAULTS = EngineConfig()  # what help strings name as the defaults: config.py's values, never written here
SIZE_HELP = ("Longer image side in pixels, a multiple of the patch size; others are rounded to the nearest one "
             "(500 -> 504), for DINOv3's patch 16 to 496")
Size = Annotated[int, typer.Option("--size", help=f"{SIZE_HELP}.")]
Batch = Annotated[int, typer.Option("--batch", min=1, help="Images per forward pass.")]
Workers = Annotated[int | None, typer.Option("--workers", min=0, help="Decoder processes (default: cores - 1 up to 8; on 2 "
                                                               "cores or fewer 0: threads decode between forward passes).")]
Device = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present).")]
Dtype = Annotated[str, typer.Option("--dtype", help="fp32, or bf16 / fp16 autocast.")]
MaxPixels = Annotated[int, typer.Option("--max-pixels", help="Refuse images with more pixels than this.")]
Inputs = Annotated[list[Path], typer.Argument(help="Image files or folders.", show_default=False)]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML preset (configs/*.toml): its settings "
                                                                  "replace the defaults; options given here win.")]
Multiscale = Annotated[bool | None, typer.Option("--multiscale/--single-scale",
                                                 help="Average over scales 1, 1/sqrt2, sqrt2, or use 1 only "
                                                      "(default: the index's or the config's, else one scale).")]


def _errors(fn: F) -> F:
    """The one error boundary: a value the user gave that cannot be used (UsageError) is one line
    and exit 2; any other RetrievalError one line and exit 1. Anything else is a bug, not bad
    input: one line that says so and exit 1, or with -v the whole traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            _error_line(_said(e))
            raise typer.Exit(2) from None
        except RetrievalError as e:
            _error_line(_said(e))
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort, click.ClickException, KeyboardInterrupt):
            raise
        except BrokenPipeError:  # the reader went away (`retrieve query ... | head`): stop quietly, as
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # shell tools do; no flush error at exit
            raise typer.Exit(141) from None
        except Exception as e:
            if logging.getLogger("retrieval").isEnabledFor(logging.DEBUG):
                raise
            _error_line(f"unexpected {type(e).__name__}: {e}. This is a bug, not your input: run the command again "
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


def _error_line(message: str) -> None:
    """`error: message` on stderr, one line; the paths in it are text (see _literal)."""
    Console(stderr=True).print(Text.assemble(("error:", "red"), " ", _literal(message)), soft_wrap=True)


def _literal(text: str) -> Text:
    """What rich prints exactly as written: never markup (`a[/b]c.jpg`) nor emoji codes
    (`:smile:.jpg`), with odd bytes and control characters escaped (types.shown). Every path or
    file name the CLI prints through rich goes through here."""
    return Text(shown(text))


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


def _stdout() -> Console:
    """Tables on stdout: folded to the terminal, never cut; one line per row when piped."""
    import sys

    return Console() if sys.stdout.isatty() else Console(width=100_000, soft_wrap=True)


class _Progress(Progress):
    """Rich's bar on a terminal. Elsewhere (a log file, cron, nohup) Rich draws nothing, so every
    `every` seconds, and once when a task ends, one plain line `progress: indexing 1200/300000
    (0.4%), 35.2 img/s, ETA 2:21:31` goes to stderr instead."""

    def __init__(self, *columns: Any, every: float, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self._every = every
        self._said: dict[TaskID, float] = {}
        self._ended: set[TaskID] = set()

    def update(self, task_id: TaskID, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._say(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._say(task_id)

    def _say(self, task_id: TaskID) -> None:
        if self.console.is_terminal or task_id in self._ended:
            return
        task, now = self._tasks[task_id], time.monotonic()
        last = self._said.setdefault(task_id, now)  # the first report starts the clock
        if not task.total or not task.completed or (now - last < self._every and not task.finished):
            return
        self._said[task_id] = now
        if task.finished:
            self._ended.add(task_id)
        parts = [f"progress: {task.description} {task.completed:.0f}/{task.total:.0f} "
                 f"({100 * task.completed / task.total:.1f}%)", _rate(task), _eta(task)]
        self.console.print(", ".join(p for p in parts if p), markup=False, highlight=False, soft_wrap=True)


class _Column(ProgressColumn):
    def __init__(self, text: Callable[[Task], str]) -> None:
        super().__init__()
        self._text = text

    def render(self, task: Task) -> Text:
        return Text(self._text(task))


def _progress() -> Progress:
    stderr = Console(stderr=True)
    return _Progress(  # no live display off a terminal: it would only leave a blank line behind
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Column(_rate), _Column(_eta),
        console=stderr, transient=True, every=PROGRESS_EVERY, disable=not stderr.is_terminal,
    )


def _rate(task: Task) -> str:
    """Images per second since the task began: the average, not the last burst's (a batch that
    lands at once would read as tens of thousands per second); blank for the first second."""
    elapsed = task.elapsed or 0.0
    return f"{task.completed / elapsed:.1f} img/s" if elapsed >= 1.0 and task.completed else ""


def _eta(task: Task) -> str:
    """Time left at the average rate so far (Rich's own estimate follows the last bursts, which
    read far too short while the first batches land together); blank until there is a rate."""
    elapsed = task.elapsed or 0.0
    if elapsed < 1.0 or not task.completed or task.total is None:
        return ""
    left = max(task.total - task.completed, 0) * elapsed / task.completed
    return f"ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}"


def _embed_with_progress(paths: list[str], **kwargs: Any) -> tuple[list[Any], list[Any]]:
    with _progress() as bar:
        task = bar.add_task("embedding", total=len(paths))

        def seen(r: Any) -> None:
            if isinstance(r, engine.Skipped):
                logging.getLogger("retrieval").warning("skipped %s: %s", shown(r.path), r.reason)
            bar.advance(task)

        result: tuple[list[Any], list[Any]] = engine.embed_all(paths, on_result=seen, **kwargs)
        return result


def _backbone(model: str, weights: Path | None, device: str | None, dtype: str) -> Any:
    return engine.open_backbone(BackboneConfig(model, None if weights is None else str(weights), device, dtype))


def _inputs(items: list[Path]) -> list[str]:
    paths = engine.expand_inputs(items)
    if not paths:
        raise RetrievalError(f"no image files in {', '.join(map(str, items))}; pass image files or folders holding them")
    return paths



IndexDir = Annotated[
    Path | None,
    typer.Option("--index", help="Index folder (default: $RETRIEVAL_INDEX, else ~/.local/share/retrieval/index)."),
]


def _index_dir(index: Path | None) -> Path:
    return index if index is not None else default_index_dir()


class _StopAfterBatch:
    """First Ctrl-C: finish the current batch, save, exit. Second Ctrl-C: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self.previous: Any = None

    def __enter__(self) -> _StopAfterBatch:
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


