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

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, Task, TextColumn, TimeRemainingColumn
from rich.table import Column, Table

from . import benchmarks
from .config import DEFAULT_MAX_LINES, DEFAULT_MAX_PIXELS, DEFAULT_SIZE, BackboneConfig, ImageConfig, default_index_dir
from .errors import RetrievalError
from .types import shown

app = typer.Typer(
    name="retrieve",
    help="Image instance retrieval on DINOv2 features: `retrieve index DIR`, then `retrieve query IMG`.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])


class _LazyEngine:
    """The engine (torch, faiss) is imported on first use, so `retrieve --help` is instant and
    decoder processes, which import this module as the main one, stay light."""

    def __getattr__(self, name: str) -> Any:
        import importlib

        return getattr(importlib.import_module("retrieval.engine"), name)


engine: Any = _LazyEngine()

Model = Annotated[str, typer.Option("--model", "-m", help="Backbone short name (see `retrieve models`).")]
Weights = Annotated[
    Path | None,
    typer.Option("--weights", help="Local checkpoint (official .pth key layout, or safetensors). "
                                   "Default: the official file, cached in the torch hub folder."),
]
Size = Annotated[int, typer.Option("--size", help="Longer image side in pixels (a multiple of 14; others are rounded to one).")]
Batch = Annotated[int, typer.Option("--batch", min=1, help="Images per forward pass.")]
Workers = Annotated[int | None, typer.Option("--workers", min=0, help="Decoder processes (default: cores - 1 up to 8; on 2 "
                                                               "cores or fewer 0: threads decode between forward passes).")]
Device = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present).")]
Dtype = Annotated[str, typer.Option("--dtype", help="fp32, or bf16 / fp16 autocast.")]
MaxPixels = Annotated[int, typer.Option("--max-pixels", help="Refuse images with more pixels than this.")]
Inputs = Annotated[list[Path], typer.Argument(help="Image files or folders.", show_default=False)]


def _errors(fn: F) -> F:
    """Turn library errors into one line on stderr and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RetrievalError as e:
            Console(stderr=True).print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except ValueError as e:
            Console(stderr=True).print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
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
) -> None:
    """Write raw DINOv2 CLS and patch tokens of each image to an .npz file (keys documented in docs/features.md)."""
    paths = _inputs(inputs)
    image = ImageConfig(size=size, max_pixels=max_pixels)
    backbone = _backbone(model, weights, device, dtype)
    done, skipped = _embed_with_progress(paths, backbone=backbone, image=image, batch_size=batch, workers=workers)
    engine.write_features(out, done, skipped, backbone=backbone, image=image)
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
        raise ValueError(f"--threshold must be in [0, 1], got {threshold}")
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
        raise ValueError(f"--bbox must be x1,y1,x2,y2 in pixels of the upright image, got {text!r}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise ValueError(f"--bbox needs finite numbers, got {text!r}")
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"--bbox needs x2 > x1 and y2 > y1, got {text!r}")
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
    model: Annotated[str | None, typer.Option("--model", "-m", help="Backbone (new index only; default dinov2_vits14).")] = None,
    weights: Weights = None,
    size: Annotated[int | None, typer.Option("--size", help=f"Longer side (new index only; default {DEFAULT_SIZE}).")] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="Images per forward pass (default 16).")] = None,
    workers: Workers = None,
    device: Device = None,
    decode: Annotated[str | None, typer.Option("--decode", help="Where JPEGs are decoded: auto (the GPU when the "
                                                                "model runs on one; default), cpu or gpu.")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="auto (default: bf16 where the hardware computes it "
                                                              "natively, else fp32), fp32, bf16, fp16; new index only.")] = None,
    pooling: Annotated[str | None, typer.Option("--pooling", help="cls+gem (default), cls or gem (new index only).")] = None,
    multiscale: Annotated[bool, typer.Option("--multiscale", help="Average over scales 1, 1/sqrt2, sqrt2 (new index only).")] = False,
    kind: Annotated[str | None, typer.Option("--index-kind", help="auto (default), flat, ivf or hnsw.")] = None,
    dba: Annotated[int | None, typer.Option("--dba", help="Database-side augmentation with K neighbours (0: off).")] = None,
    whiten_dim: Annotated[int | None, typer.Option("--whiten-dim", help="Reduce whitened descriptors to this "
                                                                          "dimension (0: keep all).")] = None,
    whitening: Annotated[bool | None, typer.Option("--whitening/--no-whitening",
                                                   help="PCA-whiten once there are enough images (default) or L2 only.")] = None,
    refit_whitening: Annotated[bool, typer.Option("--refit-whitening", help="Refit whitening from stored descriptors.")] = False,
    retry_skipped: Annotated[bool, typer.Option("--retry-skipped", help="Try previously refused files again.")] = False,
    max_pixels: Annotated[int | None, typer.Option("--max-pixels", help="Refuse images above this many pixels (default 100 MP).")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Leave out files whose path or a folder "
                                                      "of it matches this glob ('Trash', '*.tmp.jpg'); kept in the "
                                                      "index for later runs (repeatable).")] = None,
    clear_excludes: Annotated[bool, typer.Option("--clear-excludes", help="Forget every exclusion (globs and what "
                                                                         "`retrieve remove` took out) first.")] = False,
) -> None:
    """Index the images under FOLDERS; re-running only embeds new or changed files."""
    overrides: dict[str, Any] = {}

    def put(section: str | None, key: str, value: Any) -> None:
        if value is not None:
            (overrides.setdefault(section, {}) if section else overrides)[key] = value

    put("backbone", "name", model)
    put("backbone", "weights", None if weights is None else str(weights.resolve()))
    put("backbone", "device", device)
    put("backbone", "dtype", dtype)
    put("image", "size", size)
    put("image", "max_pixels", max_pixels)
    put("pooling", "pooling", pooling)
    put("pooling", "scales", [1.0, 2 ** -0.5, 2 ** 0.5] if multiscale else None)
    put("index", "kind", kind)
    put("index", "dba", dba)
    if whiten_dim is not None:  # 0 clears an earlier reduction, so it is stored even as None
        overrides.setdefault("whitening", {})["dim"] = whiten_dim or None
    put("whitening", "enabled", whitening)
    put(None, "batch_size", batch)
    put(None, "workers", workers)
    put(None, "decode", decode)
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
    weights: Annotated[Path | None, typer.Option("--weights", help="The index's weights file, if it moved.")] = None,
    device: Device = None,
    rerank: Annotated[bool, typer.Option("--rerank", help="Re-rank the shortlist by verified patch matches.")] = False,
    rerank_k: Annotated[int, typer.Option("--rerank-k", help="Shortlist size for --rerank.")] = 100,
    qe: Annotated[int, typer.Option("--qe", help="alpha-query expansion with this many top results (0: off).")] = 0,
    qe_alpha: Annotated[float, typer.Option("--qe-alpha", help="Weight exponent of query expansion.")] = 3.0,
    out: Annotated[Path | None, typer.Option("--out", help="Write correspondence maps and index.html here.")] = None,
    max_lines: Annotated[int, typer.Option("--max-lines", min=0, help="With --out: verified matches drawn as lines, "
                                           "spread over the query; the rest as dots.")] = DEFAULT_MAX_LINES,
) -> None:
    """Find the indexed images most like IMAGES. Model, size, pooling and whitening come from the index."""
    if k < 1:
        raise typer.BadParameter(f"must be at least 1, got {k}", param_hint="-k")
    if as_json and paths_only:
        raise typer.BadParameter("choose one output: --json or --paths", param_hint="--paths")
    if out is not None and len(images) > 1:
        raise typer.BadParameter("maps are written for one query image at a time", param_hint="--out")
    box = _parse_bbox(bbox)
    with engine.Index.open(_index_dir(index)) as idx:
        idx.backbone(weights=None if weights is None else str(weights), device=device)
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
            maps = engine.explain(idx, images[0], results[0], out, bbox=box, max_lines=max_lines)
            Console(stderr=True).print(f"maps: {maps}")


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


def _benchmark(spec: str, data: Path | None, crop: bool) -> Any:
    if spec.endswith(".json"):
        return benchmarks.load_json(spec, crop=crop)
    if data is None:
        raise ValueError(f"--data DIR is needed for {spec} (DIR/{spec}/gnd_{spec}.pkl and DIR/{spec}/jpg/)")
    return benchmarks.load_revisited(data, spec, crop=crop)


@app.command("eval")
@_errors
def eval_(
    dataset: Annotated[str, typer.Argument(help="roxford5k, rparis6k (or any set in that layout under --data), "
                                                "or a ground-truth .json file.")],
    data: Annotated[Path | None, typer.Option("--data", help="Folder holding DATASET/jpg and DATASET/gnd_DATASET.pkl.")] = None,
    index: Annotated[Path | None, typer.Option("--index", help="Index folder for the database (default: a cache per setup).")] = None,
    model: Model = "dinov2_vits14",
    weights: Weights = None,
    size: Size = DEFAULT_SIZE,
    pooling: Annotated[str, typer.Option("--pooling", help="cls+gem, cls or gem.")] = "cls+gem",
    multiscale: Annotated[bool, typer.Option("--multiscale", help="Average scales 1, 1/sqrt2, sqrt2.")] = False,
    batch: Batch = 16,
    workers: Workers = None,
    device: Device = None,
    dtype: Dtype = "fp32",
    no_crop: Annotated[bool, typer.Option("--no-crop", help="Use whole query images instead of their boxes.")] = False,
    whiten_from: Annotated[str | None, typer.Option("--whiten-from", help="Learn PCA-whitening on another set "
                                                    "(name under --data, or .json), or 'self' for the test set.")] = None,
    whiten_dim: Annotated[int | None, typer.Option("--whiten-dim", help="Whitened dimension.")] = None,
    distractors: Annotated[list[Path] | None, typer.Option("--distractors", help="Extra database folder (repeatable).")] = None,
    save_ranks: Annotated[Path | None, typer.Option("--save-ranks", help="Write the (n_db, n_queries) ranking (.npy).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write metrics and the full config as JSON.")] = None,
) -> None:
    """Evaluate on revisited Oxford/Paris (Easy/Medium/Hard mAP, mP@1,5,10) or your own ground truth."""
    crop = not no_crop
    bench = _benchmark(dataset, data, crop)
    source = None
    if whiten_from is not None and whiten_from != "self":
        source = _benchmark(whiten_from, data, crop)
        if source.name == bench.name:
            raise ValueError("--whiten-from names the test set; say --whiten-from self to do that on purpose")
    overrides: dict[str, Any] = {
        "backbone": {"name": model, "weights": None if weights is None else str(weights.resolve()),
                     "device": device, "dtype": dtype},
        "image": {"size": size},
        "pooling": {"pooling": pooling, "scales": [1.0, 2 ** -0.5, 2 ** 0.5] if multiscale else [1.0]},
        "whitening": {"dim": whiten_dim},
        "batch_size": batch,
        "workers": workers,
    }
    with _progress() as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, rate="")
            bar.update(tasks[stage], completed=done, total=total)

        result = engine.evaluate(bench, overrides=overrides, index_dir=index, whiten_from=source,
                                 whiten_self=whiten_from == "self", distractors=distractors or [], crop=crop,
                                 on_progress=progress)
    if save_ranks is not None:
        engine.save_ranks(result.ranks, save_ranks)
    if json_out is not None:
        engine.save_report(result.report, json_out)
    cfg = result.report["config"]
    table = Table("protocol", "mAP", "mP@1", "mP@5", "mP@10", box=None,
                  title=f"{bench.name}: {len(bench.queries)} queries, {len(bench.database)} images"
                        f"{' + ' + str(result.report['n_distractors']) + ' distractors' if result.report['n_distractors'] else ''}")
    for protocol, m in result.metrics.items():
        table.add_row(protocol, *(f"{100 * m[k]:.2f}" for k in ("mAP", "mP@1", "mP@5", "mP@10")))
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
    max_lines: Annotated[int, typer.Option("--max-lines", min=0, help="Verified matches drawn as lines, spread "
                                           "over A; the other inliers as dots.")] = DEFAULT_MAX_LINES,
    show_outliers: Annotated[bool, typer.Option("--show-outliers", help="Also draw the matches RANSAC rejected, "
                                                "in red.")] = False,
    device: Device = None,
    dtype: Dtype = "fp32",
) -> None:
    """Correspondence map of any two images: mutual-NN patch matches verified by RANSAC."""
    backbone = _backbone(model, weights, device, dtype)
    p = engine.match_files(a, b, backbone=backbone, image=ImageConfig(size=size), out=out, threshold=threshold,
                           max_lines=max_lines, show_outliers=show_outliers)
    typer.echo(f"{p.n_matches} matches, {p.n_inliers} inliers -> {out}")


@app.command()
def models() -> None:
    """List backbone names, their size and where official weights come from."""
    from .backbone.registry import registry

    for name, arch in registry().items():
        source = "random weights (tests only)" if arch.random_only else arch.url
        typer.echo(f"{name:20s} dim {arch.dim:5d}  {arch.depth:2d} blocks  registers {arch.num_registers}  {source}")
