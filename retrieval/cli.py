"""`retrieve`: a thin typer adapter. Parses, calls the engine, prints; the one error boundary."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, Task, TextColumn, TimeRemainingColumn
from rich.table import Column, Table

from . import benchmarks, engine  # engine: names load on first use (torch only for commands that embed)
from .config import (DEFAULT_MAX_PIXELS, DEFAULT_SIZE, BackboneConfig, ImageConfig, cli_overrides, default_index_dir,
                     eval_defaults, load_config)
from .errors import RetrievalError, UsageError
from .types import shown

F = TypeVar("F", bound=Callable[..., Any])
VERBOSE = ("-v", "--verbose")


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
SIZE_HELP = "Longer image side in pixels, a multiple of 14; others are rounded to the nearest one (500 -> 504)"
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
            _error_line(str(e))
            raise typer.Exit(2) from None
        except RetrievalError as e:
            _error_line(str(e))
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort, click.ClickException, KeyboardInterrupt):
            raise
        except Exception as e:
            if logging.getLogger("retrieval").isEnabledFor(logging.DEBUG):
                raise
            _error_line(f"unexpected {type(e).__name__}: {e}. This is a bug, not your input: run the command again "
                        f"with -v for the traceback and report it")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"retrieve {__version__}")
        raise typer.Exit()


def _error_line(message: str) -> None:
    """`error: message` on stderr, one line; brackets in paths are text, not rich markup."""
    Console(stderr=True).print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v",
                                          help="Debug logging (also accepted after the command).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    # third-party chatter (faiss loader) stays quiet; on a terminal rich formats the messages, and
    # elsewhere each is one plain line (never wrapped: `grep` must get whole messages)
    handler: logging.Handler = (
        RichHandler(console=Console(stderr=True), show_time=False, show_path=False) if sys.stderr.isatty()
        else logging.StreamHandler(sys.stderr))
    if not sys.stderr.isatty():
        handler.setFormatter(_PlainFormatter())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("retrieval").setLevel(logging.DEBUG if verbose else logging.INFO)


class _PlainFormatter(logging.Formatter):
    """`warning: message` on one line: newlines inside a message become spaces."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}".replace("\n", " ")


def _stdout() -> Console:
    """Tables on stdout: folded to the terminal, never cut; one line per row when piped."""
    import sys

    return Console() if sys.stdout.isatty() else Console(width=100_000, soft_wrap=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    )


def _rate(task: Task) -> str:
    """Images per second since the task began: the average, not the last burst's (a batch that
    lands at once would read as tens of thousands per second); blank for the first second."""
    elapsed = task.elapsed or 0.0
    return f"{task.completed / elapsed:.1f} img/s" if elapsed >= 1.0 and task.completed else ""


def _embed_with_progress(paths: list[str], **kwargs: Any) -> tuple[list[Any], list[Any]]:
    with _progress() as bar:
        task = bar.add_task("embedding", total=len(paths), rate="")

        def seen(r: Any) -> None:
            if isinstance(r, engine.Skipped):
                logging.getLogger("retrieval").warning("skipped %s: %s", r.path, r.reason)
            bar.advance(task)
            bar.update(task, rate=_rate(bar.tasks[0]))

        result: tuple[list[Any], list[Any]] = engine.embed_all(paths, on_result=seen, **kwargs)
        return result


def _backbone(model: str, weights: Path | None, device: str | None, dtype: str) -> Any:
    return engine.open_backbone(BackboneConfig(model, None if weights is None else str(weights), device, dtype))


def _inputs(items: list[Path]) -> list[str]:
    paths = engine.expand_inputs(items)
    if not paths:
        raise RetrievalError(f"no image files in {', '.join(map(str, items))}; pass image files or folders holding them")
    return paths


@app.command()
@_errors
def extract(
    inputs: Inputs,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .npz file.")],
    model: Model = "dinov2_vits14",
    weights: Weights = None,
    size: Size = DEFAULT_SIZE,
    batch: Batch = 16,
    workers: Workers = None,
    device: Device = None,
    dtype: Dtype = "fp32",
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    exact: Annotated[bool, typer.Option("--exact/--draft", help="Decode JPEGs in full, as the official transform "
                                        "does, or (--draft) at a reduced DCT scale as `retrieve index` does: "
                                        "faster on large photos, tokens not equal (docs/features.md).")] = True,
) -> None:
    """Write raw DINOv2 CLS and patch tokens of each image to an .npz file (keys documented in docs/features.md)."""
    paths = _inputs(inputs)
    image = ImageConfig(size=size, max_pixels=max_pixels)
    backbone = _backbone(model, weights, device, dtype)
    done, skipped = _embed_with_progress(paths, backbone=backbone, image=image, batch_size=batch, workers=workers,
                                         draft=not exact)
    engine.write_features(out, done, skipped, backbone=backbone, image=image, draft=not exact)
    typer.echo(f"wrote {out}: {len(done)} images, {backbone.dim}-d tokens, {len(skipped)} skipped")


@app.command()
@_errors
def pca(
    inputs: Inputs,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output PNG file.")],
    model: Model = "dinov2_vits14",
    weights: Weights = None,
    size: Size = DEFAULT_SIZE,
    threshold: Annotated[float, typer.Option(help="Foreground cut on the first component, in [0, 1].")] = 0.5,
    workers: Workers = None,
    device: Device = None,
    dtype: Dtype = "fp32",
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
) -> None:
    """Draw the DINOv2 PCA picture: each input beside its first three foreground components as RGB."""
    paths = _inputs(inputs)
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--threshold must be in [0, 1], got {threshold}")
    image = ImageConfig(size=size, max_pixels=max_pixels)
    backbone = _backbone(model, weights, device, dtype)
    picture, skipped = engine.pca_picture(paths, backbone=backbone, image=image, threshold=threshold, workers=workers)
    for s in skipped:
        logging.getLogger("retrieval").warning("skipped %s: %s", s.path, s.reason)
    engine.save_png(picture, out)
    typer.echo(f"wrote {out}: {len(paths) - len(skipped)} images, {len(skipped)} skipped")


IndexDir = Annotated[
    Path | None,
    typer.Option("--index", help="Index folder (default: $RETRIEVAL_INDEX, else ~/.local/share/retrieval/index)."),
]


def _index_dir(index: Path | None) -> Path:
    return index if index is not None else default_index_dir()


def _parse_bbox(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    try:
        x1, y1, x2, y2 = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--bbox must be x1,y1,x2,y2 in pixels of the upright image, got {text!r}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise UsageError(f"--bbox needs finite numbers, got {text!r}")
    if x2 <= x1 or y2 <= y1:
        raise UsageError(f"--bbox needs x2 > x1 and y2 > y1, got {text!r}")
    return x1, y1, x2, y2


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


@app.command()
@_errors
def index(
    folders: Annotated[list[Path], typer.Argument(help="Folders (or files) to index.", show_default=False)],
    index: IndexDir = None,
    config: ConfigFile = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Backbone, fixed when the index is created "
                                                                   "(default: the index's, else "
                                                                   "dinov2_vits14).")] = None,
    weights: Weights = None,
    size: Annotated[int | None, typer.Option("--size", help=f"{SIZE_HELP}; fixed when the index is created "
                                                            f"(default: the index's, else {DEFAULT_SIZE}).")] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="Images per forward pass "
                                                              "(default: the index's, else 16).")] = None,
    workers: Workers = None,
    device: Device = None,
    decode: Annotated[str | None, typer.Option("--decode", help="Where JPEGs are decoded: auto (the GPU when the "
                                                                "model runs on one), cpu or gpu "
                                                                "(default: the index's, else auto).")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="fp32, bf16 or fp16, or auto: bf16 where the "
                                                              "hardware computes it natively, else fp32; fixed when "
                                                              "the index is created (default: the index's, else "
                                                              "auto).")] = None,
    pooling: Annotated[str | None, typer.Option("--pooling", help="cls+gem, cls or gem; fixed when the index is "
                                                                  "created (default: the index's, else "
                                                                  "cls+gem).")] = None,
    multiscale: Multiscale = None,
    kind: Annotated[str | None, typer.Option("--index-kind", help="auto, flat, ivf or hnsw "
                                                                  "(default: the index's, else auto).")] = None,
    dba: Annotated[int | None, typer.Option("--dba", help="Database-side augmentation with K neighbours, 0: off "
                                                          "(default: the index's, else 0).")] = None,
    whiten_dim: Annotated[int | None, typer.Option("--whiten-dim", help="Reduce whitened descriptors to this "
                                                                          "dimension, 0: keep all (default: the "
                                                                          "index's, else 0).")] = None,
    whitening: Annotated[bool | None, typer.Option("--whitening/--no-whitening",
                                                   help="PCA-whiten once there are enough images, or L2 only "
                                                        "(default: the index's, else --whitening).")] = None,
    refit_whitening: Annotated[bool, typer.Option("--refit-whitening", help="Refit whitening from stored descriptors.")] = False,
    retry_skipped: Annotated[bool, typer.Option("--retry-skipped", help="Try previously refused files again.")] = False,
    max_pixels: Annotated[int | None, typer.Option("--max-pixels", help="Refuse images above this many pixels "
                                                                        "(default: the index's, else "
                                                                        f"{DEFAULT_MAX_PIXELS}).")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Leave out files whose path or a folder "
                                                      "of it matches this glob ('Trash', '*.tmp.jpg'); kept in the "
                                                      "index for later runs (repeatable).")] = None,
    clear_excludes: Annotated[bool, typer.Option("--clear-excludes", help="Forget every exclusion (globs and what "
                                                                         "`retrieve remove` took out) first.")] = False,
) -> None:
    """Index the images under FOLDERS; re-running only embeds new or changed files.

    Settings left out are the index's own; a new index starts from the defaults named.
    """
    overrides = cli_overrides(config, model=model, weights=weights, device=device, dtype=dtype, size=size,
                              max_pixels=max_pixels, pooling=pooling, multiscale=multiscale, index_kind=kind, dba=dba,
                              whiten_dim=whiten_dim, whitening=whitening, batch=batch, workers=workers, decode=decode)
    where = _index_dir(index)
    with engine.Index.open_or_create(where, overrides) as idx, _StopAfterBatch() as stop, _progress() as bar:
        if exclude or clear_excludes:
            idx.exclude(exclude or [], clear=clear_excludes)
        task = bar.add_task("indexing", total=None, rate="")

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            bar.update(task, rate=_rate(bar.tasks[0]))

        summary = idx.update(folders, retry_skipped=retry_skipped, should_stop=stop, on_progress=progress)
        if refit_whitening:
            idx.refresh(refit=True)
        images_now = idx.count()
    log = logging.getLogger("retrieval")
    for path, reason in summary.skipped:
        log.warning("skipped %s: %s", shown(path), reason)
    refused = f", still refused {summary.still_refused} (`retrieve info` says why; --retry-skipped)" \
        if summary.still_refused else ""
    typer.echo(
        f"{shown(str(where))}: {images_now} images indexed | added {summary.added}, updated {summary.updated}, "
        f"removed {summary.removed}, unchanged {summary.unchanged}, skipped {len(summary.skipped)}{refused} | "
        f"{summary.seconds:.1f} s" + (" | whitened" if summary.whitened else "")
    )
    if summary.interrupted:
        typer.echo("interrupted: what was embedded is saved; run the same command again to continue")
        raise typer.Exit(130)


@app.command()
@_errors
def query(
    images: Annotated[list[Path], typer.Argument(help="Query images (may live outside the indexed folders); several "
                                                      "are embedded together.", show_default=False)],
    index: IndexDir = None,
    k: Annotated[int, typer.Option("-k", "--top", help="How many results per query.")] = 10,
    bbox: Annotated[str | None, typer.Option("--bbox", help="x1,y1,x2,y2: query only this box (one image).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout: the list of {rank, score, path} "
                                                         "(several queries: a list of {query, hits}).")] = False,
    paths_only: Annotated[bool, typer.Option("--paths", "--filepath-only",
                                             help="Only the result paths, one per line, as the file system's bytes.")] = False,
    weights: Annotated[Path | None, typer.Option("--weights", help="The index's weights file, if it moved "
                                                                    "(default: the path the index holds).")] = None,
    device: Device = None,
    rerank: Annotated[bool, typer.Option("--rerank", help="Re-rank the shortlist by verified patch matches.")] = False,
    rerank_k: Annotated[int, typer.Option("--rerank-k", help="Shortlist size for --rerank.")] = 100,
    qe: Annotated[int, typer.Option("--qe", help="alpha-query expansion with this many top results (0: off).")] = 0,
    qe_alpha: Annotated[float, typer.Option("--qe-alpha", help="Weight exponent of query expansion.")] = 3.0,
    out: Annotated[Path | None, typer.Option("--out", "-o",
                                             help="Write correspondence maps and index.html here.")] = None,
) -> None:
    """Find the indexed images most like IMAGES. Model, size, pooling and whitening come from the index."""
    if as_json and paths_only:
        raise typer.BadParameter("choose one output: --json or --paths", param_hint="--paths")
    if out is not None and len(images) > 1:
        raise typer.BadParameter("maps are written for one query image at a time", param_hint="--out")
    box = _parse_bbox(bbox)
    with engine.Index.open(_index_dir(index), weights=weights, device=device) as idx:
        results = idx.search_many(images, k=k, bbox=box, rerank=rerank, rerank_k=rerank_k, qe=qe, qe_alpha=qe_alpha)
        for result in results:
            if result.gone:
                logging.getLogger("retrieval").warning(
                    "left out %d result(s) whose files are gone (deleted or moved since indexing), e.g. %s; "
                    "`retrieve index` of their folder removes them from the index", len(result.gone), result.gone[0])
        if as_json:
            data: Any = results[0].to_json() if len(images) == 1 else [
                {"query": str(q), "hits": r.to_json()} for q, r in zip(images, results)]
            typer.echo(json.dumps(data, indent=2))
        elif paths_only:
            lines = b"".join(os.fsencode(h.path) + b"\n" for r in results for h in r.hits)
            sys.stdout.buffer.write(lines)
            sys.stdout.flush()
        else:
            for q, result in zip(images, results):
                _print_hits(result, title=f"query {shown(str(q))}" if len(images) > 1 else None)
        if out is not None:  # after the results are out: a slow or failing map never hides them
            Console(stderr=True).print(f"maps: {engine.explain(idx, images[0], results[0], out, bbox=box)}")


def _print_hits(result: Any, *, title: str | None) -> None:
    """Rank, what the order is by, and the path. Re-ranked lists are ordered by verified inliers
    (at least rerank.MIN_INLIERS), then by global similarity: both shown, in that order."""
    if result.reranked:
        columns = ["rank", "inliers", "similarity"]
        caption = "ordered by verified patch matches (inliers; fewer than 6 count as none), then similarity"
    else:
        columns, caption = ["rank", "similarity"], None
    table = Table(*columns, Column("path", overflow="fold"), box=None, title=title, title_justify="left",
                  caption=caption, caption_justify="left")
    for h in result.hits:
        inliers = [] if not result.reranked else ["-" if h.inliers is None else str(h.inliers)]
        table.add_row(str(h.rank), *inliers, f"{h.score:.4f}", shown(h.path))
    _stdout().print(table)


@app.command()
@_errors
def info(
    index: IndexDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False,
) -> None:
    """What an index holds: configuration, counts, skipped files, size on disk."""
    with engine.Index.open(_index_dir(index)) as idx:
        data = idx.info()
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    cfg = data["config"]
    typer.echo(f"index        {data['index']}")
    typer.echo(f"images       {data['images']} indexed, {len(data['skipped'])} skipped")
    typer.echo(f"model        {cfg['backbone']['name']} ({cfg['backbone']['dtype']}), size {cfg['image']['size']}, "
               f"pooling {cfg['pooling']['pooling']}, scales {cfg['pooling']['scales']}")
    w = data["whitening"]
    typer.echo("whitening    " + ("none (L2 only)" if w is None else f"PCA {w['dim_in']} -> {w['dim_out']}, "
                                                                    f"fitted on {w['fitted_on']}"))
    v = data["vector_index"]
    typer.echo("vectors      " + (f"{v['kind']}, {v['vectors']} x {v['dim']}" if v["fresh"] else "stale (rebuilt on next use)"))
    typer.echo(f"on disk      {data['bytes_on_disk'] / 1e6:.1f} MB")
    excluded = data["excluded"]
    for g in excluded["globs"]:
        typer.echo(f"excluded     {shown(g)} (glob; `retrieve index --clear-excludes` forgets exclusions)")
    for p in excluded["paths"]:
        typer.echo(f"excluded     {shown(p)} (by `retrieve remove`; `retrieve index {shown(p)}` takes it back)")
    for s in data["skipped"]:
        typer.echo(f"skipped      {shown(s['path'])}: {s['reason']}")


@app.command()
@_errors
def remove(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to forget.", show_default=False)],
    index: IndexDir = None,
) -> None:
    """Remove files (or everything under folders) from an index, and keep them out of later
    `retrieve index` runs of their folders (`retrieve index PATH` takes a path back)."""
    where = _index_dir(index)
    with engine.Index.open(where) as idx:
        n = idx.remove(paths)
        left = idx.count()
    if n == 0:
        raise RetrievalError(f"nothing in the index at {shown(str(where))} is at or under "
                             f"{', '.join(shown(str(p)) for p in paths)}; `retrieve info` shows what is indexed")
    typer.echo(f"removed {n} entries; {left} images indexed; later `retrieve index` runs of their folders leave "
               f"them out (`retrieve index PATH` takes a path back)")


@app.command()
@_errors
def check(
    index: IndexDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable findings.")] = False,
) -> None:
    """Check an index: SQLite's integrity check, then every row against the index's own rules and the
    vectors file against the store. One line per finding; exit 1 when something is damaged."""
    report = engine.check_index(_index_dir(index))
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        for f in report.findings:
            typer.echo(f"{f.level:5s}  {f.message}")
    if report.damaged:
        _error_line(report.summary)
        raise typer.Exit(1)
    if not as_json:
        typer.echo(report.summary)


@app.command()
@_errors
def backup(
    dest: Annotated[Path, typer.Argument(help="File to write, or a folder (it gets store.sqlite).",
                                         show_default=False)],
    index: IndexDir = None,
) -> None:
    """Copy the index's store, the one part that cannot be rebuilt, with SQLite's online backup
    (safe while `retrieve index` runs). Restore: copy it into an empty folder as store.sqlite."""
    out, images = engine.backup_store(_index_dir(index), dest)
    typer.echo(f"wrote {out}: {images} images indexed; to restore, copy it as store.sqlite into an empty index "
               f"folder (the vectors file is rebuilt from it)")


def _benchmark(spec: str, data: Path | None, crop: bool) -> Any:
    if spec.endswith(".json"):
        return benchmarks.load_json(spec, crop=crop)
    if data is None:
        raise UsageError(f"--data DIR is needed for {spec} (DIR/{spec}/gnd_{spec}.pkl and DIR/{spec}/jpg/)")
    return benchmarks.load_revisited(data, spec, crop=crop)


@app.command("eval")
@_errors
def eval_(
    dataset: Annotated[str, typer.Argument(help="roxford5k, rparis6k (or any set in that layout under --data), "
                                                "or a ground-truth .json file.")],
    data: Annotated[Path | None, typer.Option("--data", help="Folder holding DATASET/jpg and DATASET/gnd_DATASET.pkl.")] = None,
    index: Annotated[Path | None, typer.Option("--index", help="Index folder for the database (default: a cache per setup).")] = None,
    config: ConfigFile = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Backbone short name, see `retrieve models` "
                                                                    "(default: the config's, else dinov2_vits14).")] = None,
    weights: Weights = None,
    size: Annotated[int | None, typer.Option("--size", help=f"{SIZE_HELP} (default: the config's, else {DEFAULT_SIZE}).")] = None,
    pooling: Annotated[str | None, typer.Option("--pooling", help="cls+gem, cls or gem (default: the config's, else cls+gem).")] = None,
    multiscale: Multiscale = None,
    batch: Annotated[int | None, typer.Option("--batch", help="Images per forward pass (default: the config's, else 16).")] = None,
    workers: Workers = None,
    device: Device = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="fp32, auto, or bf16 / fp16 autocast (default: the config's, "
                                                              "else fp32).")] = None,
    no_crop: Annotated[bool, typer.Option("--no-crop", help="Use whole query images instead of their boxes.")] = False,
    whiten_from: Annotated[str | None, typer.Option("--whiten-from", help="Learn PCA-whitening on another set "
                                                    "(name under --data, or .json), or 'self' for the test set "
                                                    "(default: none, L2 only).")] = None,
    whiten_dim: Annotated[int | None, typer.Option("--whiten-dim", help="Whitened dimension (default: all).")] = None,
    distractors: Annotated[list[Path] | None, typer.Option("--distractors", help="Extra database folder (repeatable).")] = None,
    save_ranks: Annotated[Path | None, typer.Option("--save-ranks", help="Write the (n_db, n_queries) ranking (.npy).")] = None,
    rerank: Annotated[bool, typer.Option("--rerank", help="Re-rank each shortlist by verified patch matches, as "
                                                          "`retrieve query --rerank` does.")] = False,
    rerank_k: Annotated[int, typer.Option("--rerank-k", help="Shortlist size for --rerank.")] = 100,
    qe: Annotated[int, typer.Option("--qe", help="alpha-query expansion with this many top results (0: off).")] = 0,
    qe_alpha: Annotated[float, typer.Option("--qe-alpha", help="Weight exponent of query expansion.")] = 3.0,
    dba: Annotated[int, typer.Option("--dba", help="Database-side augmentation with K neighbours (0: off).")] = 0,
    ladder: Annotated[bool, typer.Option("--ladder", help="One run, a row per stage: global, +DBA, +aQE, "
                                                          "+re-ranking, all (--qe/--dba set their K; default 2).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The metrics and the full config as JSON on stdout.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json-out", help="Write that JSON to a file.")] = None,
) -> None:
    """Evaluate on revisited Oxford/Paris (Easy/Medium/Hard mAP, mP@1,5,10) or your own ground truth,
    ranking through the same search as `retrieve query` (with --rerank, --qe, --dba, or the --ladder)."""
    # the whole setup, never an --index folder's stored one: defaults, eval's fp32, the file, then flags
    overrides = load_config(**cli_overrides(config, defaults=eval_defaults(), model=model, weights=weights, device=device,
                                            dtype=dtype, size=size, pooling=pooling, multiscale=multiscale,
                                            whiten_dim=whiten_dim, batch=batch, workers=workers)).to_dict()
    crop = not no_crop
    bench = _benchmark(dataset, data, crop)
    source = None
    if whiten_from is not None and whiten_from != "self":
        source = _benchmark(whiten_from, data, crop)
        if source.name == bench.name:
            raise UsageError("--whiten-from names the test set; say --whiten-from self to do that on purpose")
    with _progress() as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, rate="")
            bar.update(tasks[stage], completed=done, total=total)

        options = engine.EvalOptions(rerank=rerank, rerank_k=rerank_k, qe=qe, qe_alpha=qe_alpha, dba=dba)
        result = engine.evaluate(bench, overrides=overrides, index_dir=index, whiten_from=source,
                                 whiten_self=whiten_from == "self", distractors=distractors or [], crop=crop,
                                 options=options, stages=ladder, on_progress=progress)
    if save_ranks is not None:
        engine.save_ranks(result.ranks, save_ranks)
    if json_out is not None:
        engine.save_report(result.report, json_out)
    if as_json:
        typer.echo(json.dumps(result.report, indent=2))
        return
    cfg = result.report["config"]
    title = (f"{bench.name}: {len(bench.queries)} queries, {len(bench.database)} images"
             f"{' + ' + str(result.report['n_distractors']) + ' distractors' if result.report['n_distractors'] else ''}")
    keys = ("mAP", "mP@1", "mP@5", "mP@10")
    if ladder:
        short = {"easy": "E", "medium": "M", "hard": "H", "all": ""}
        heads = [f"{short[p]} {k}".strip() for p in result.metrics for k in keys]
        table = Table("stage", *heads, "ms/query", box=None, title=title)
        for st in result.stages:
            table.add_row(st.name, *(f"{100 * m[k]:.2f}" for m in st.metrics.values() for k in keys),
                          f"{st.ms_per_query:.1f}")
    else:
        table = Table("protocol", *keys, box=None, title=f"{title} | {result.stages[-1].name}")
        for protocol, m in result.metrics.items():
            table.add_row(protocol, *(f"{100 * m[k]:.2f}" for k in keys))
    _stdout().print(table)
    typer.echo(f"{cfg['backbone']} size {cfg['size']} {cfg['pooling']} | crop {cfg['query_crop']} | "
               f"whitening: {cfg['whitening']}")
    if str(cfg["weights_id"]).startswith("random:"):
        typer.echo("note: random weights; these numbers say nothing about retrieval quality")


@app.command()
@_errors
def match(
    a: Annotated[Path, typer.Argument(help="First image.")],
    b: Annotated[Path, typer.Argument(help="Second image.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG of the verified matches (also writes *_heatmap, *_pca).")],
    model: Model = "dinov2_vits14",
    weights: Weights = None,
    size: Size = DEFAULT_SIZE,
    threshold: Annotated[float, typer.Option(help="Minimum cosine of a patch match.")] = 0.5,
    device: Device = None,
    dtype: Dtype = "fp32",
) -> None:
    """Correspondence map of any two images: mutual-NN patch matches verified by RANSAC."""
    backbone = _backbone(model, weights, device, dtype)
    p = engine.match_files(a, b, backbone=backbone, image=ImageConfig(size=size), out=out, threshold=threshold)
    typer.echo(f"{p.n_matches} matches, {p.n_inliers} inliers -> {out}")


@app.command()
@_errors
def serve(
    index: IndexDir = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8000,
    token: Annotated[str | None, typer.Option("--token", envvar="RETRIEVAL_TOKEN", show_envvar=False,
                                              help="Every /api/ request must send Authorization: Bearer TOKEN "
                                                   "(also $RETRIEVAL_TOKEN); the page takes it from /?token=TOKEN.")] = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="The index's weights file, if it moved.")] = None,
    device: Device = None,
    max_upload: Annotated[str, typer.Option("--max-upload", help="Largest query upload accepted (50MB, 1GiB, ...).")] = "50MB",
) -> None:
    """HTTP API and web page over an index; the model stays loaded (docs/serve.md). Ctrl-C stops."""
    import ipaddress

    from . import serve as service

    limit = service.parse_size(max_upload)
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        raise UsageError(f"--host {host} is reachable from other machines: pass --token TOKEN (every /api/ request "
                         f"must then send it), or serve on 127.0.0.1")
    import uvicorn

    web = service.create_app(_index_dir(index), token=token or None, max_upload=limit,
                             weights=None if weights is None else str(weights), device=device)
    shown_host = f"[{host}]" if ":" in host else host
    typer.echo(f"serving {_index_dir(index)} on http://{shown_host}:{port}/" + ("?token=..." if token else "")
               + "  (Ctrl-C stops)")
    uvicorn.run(web, host=host.strip("[]"), port=port, log_level="warning")


@app.command()
def models() -> None:
    """List backbone names, their size and where official weights come from."""
    from .backbone.registry import registry

    for name, arch in registry().items():
        source = "random weights (tests only)" if arch.random_only else arch.url
        typer.echo(f"{name:20s} dim {arch.dim:5d}  {arch.depth:2d} blocks  registers {arch.num_registers}  {source}")
