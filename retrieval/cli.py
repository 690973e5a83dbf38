"""`retrieve`: a thin typer adapter. Parses, calls the engine, prints; the one error boundary."""

from __future__ import annotations

import functools
import json
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column, Table

from . import benchmarks
from .config import (DEFAULT_MAX_PIXELS, DEFAULT_SIZE, BackboneConfig, ImageConfig, cli_overrides, default_index_dir,
                     eval_defaults, load_config)
from .errors import RetrievalError

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
Batch = Annotated[int, typer.Option("--batch", help="Images per forward pass.")]
Workers = Annotated[int | None, typer.Option("--workers", help="Decoder processes (default: cores - 1 up to 8; on 2 "
                                                               "cores or fewer 0: threads decode between forward passes).")]
Device = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present).")]
Dtype = Annotated[str, typer.Option("--dtype", help="fp32, or bf16 / fp16 autocast.")]
MaxPixels = Annotated[int, typer.Option("--max-pixels", help="Refuse images with more pixels than this.")]
Inputs = Annotated[list[Path], typer.Argument(help="Image files or folders.", show_default=False)]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML preset (configs/*.toml): its settings "
                                                                  "replace the defaults; options given here win.")]
Multiscale = Annotated[bool | None, typer.Option("--multiscale/--single-scale",
                                                 help="Average over scales 1, 1/sqrt2, sqrt2, or use 1 only (default).")]


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
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,  # third-party chatter (faiss loader) stays quiet
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_time=False, show_path=False)],
        force=True,
    )
    logging.getLogger("retrieval").setLevel(logging.DEBUG if verbose else logging.INFO)


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


def _embed_with_progress(paths: list[str], **kwargs: Any) -> tuple[list[Any], list[Any]]:
    with _progress() as bar:
        task = bar.add_task("embedding", total=len(paths), rate="")

        def seen(r: Any) -> None:
            if isinstance(r, engine.Skipped):
                logging.getLogger("retrieval").warning("skipped %s: %s", r.path, r.reason)
            bar.advance(task)
            speed = bar.tasks[0].speed
            bar.update(task, rate=f"{speed:.1f} img/s" if speed else "")

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
    config: ConfigFile = None,
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
    multiscale: Multiscale = None,
    kind: Annotated[str | None, typer.Option("--index-kind", help="auto (default), flat, ivf or hnsw.")] = None,
    dba: Annotated[int | None, typer.Option("--dba", help="Database-side augmentation with K neighbours (0: off).")] = None,
    whiten_dim: Annotated[int | None, typer.Option("--whiten-dim", help="Reduce whitened descriptors to this "
                                                                          "dimension (0: keep all).")] = None,
    whitening: Annotated[bool | None, typer.Option("--whitening/--no-whitening",
                                                   help="PCA-whiten once there are enough images (default) or L2 only.")] = None,
    refit_whitening: Annotated[bool, typer.Option("--refit-whitening", help="Refit whitening from stored descriptors.")] = False,
    retry_skipped: Annotated[bool, typer.Option("--retry-skipped", help="Try previously refused files again.")] = False,
    max_pixels: Annotated[int | None, typer.Option("--max-pixels", help="Refuse images above this many pixels (default 100 MP).")] = None,
) -> None:
    """Index the images under FOLDERS; re-running only embeds new or changed files."""
    overrides = cli_overrides(config, model=model, weights=weights, device=device, dtype=dtype, size=size,
                              max_pixels=max_pixels, pooling=pooling, multiscale=multiscale, index_kind=kind, dba=dba,
                              whiten_dim=whiten_dim, whitening=whitening, batch=batch, workers=workers, decode=decode)
    where = _index_dir(index)
    with engine.Index.open_or_create(where, overrides) as idx, _StopAfterBatch() as stop, _progress() as bar:
        task = bar.add_task("indexing", total=None, rate="")

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)
            speed = bar.tasks[0].speed
            bar.update(task, rate=f"{speed:.1f} img/s" if speed else "")

        summary = idx.update(folders, retry_skipped=retry_skipped, should_stop=stop, on_progress=progress)
        if refit_whitening:
            idx.refresh(refit=True)
        images_now = idx.store.count("ok")
    log = logging.getLogger("retrieval")
    for path, reason in summary.skipped:
        log.warning("skipped %s: %s", path, reason)
    typer.echo(
        f"{where}: {images_now} images indexed | added {summary.added}, updated {summary.updated}, "
        f"removed {summary.removed}, unchanged {summary.unchanged}, skipped {len(summary.skipped)} | "
        f"{summary.seconds:.1f} s" + (" | whitened" if summary.whitened else "")
    )
    if summary.interrupted:
        typer.echo("interrupted: what was embedded is saved; run the same command again to continue")
        raise typer.Exit(130)


@app.command()
@_errors
def query(
    image: Annotated[Path, typer.Argument(help="Query image (may live outside the indexed folders).")],
    index: IndexDir = None,
    k: Annotated[int, typer.Option("-k", "--top", help="How many results.")] = 10,
    bbox: Annotated[str | None, typer.Option("--bbox", help="x1,y1,x2,y2: query only this box.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON list of {rank, score, path}.")] = False,
    weights: Annotated[Path | None, typer.Option("--weights", help="The index's weights file, if it moved.")] = None,
    device: Device = None,
    rerank: Annotated[bool, typer.Option("--rerank", help="Re-rank the shortlist by verified patch matches.")] = False,
    rerank_k: Annotated[int, typer.Option("--rerank-k", help="Shortlist size for --rerank.")] = 100,
    qe: Annotated[int, typer.Option("--qe", help="alpha-query expansion with this many top results (0: off).")] = 0,
    qe_alpha: Annotated[float, typer.Option("--qe-alpha", help="Weight exponent of query expansion.")] = 3.0,
    out: Annotated[Path | None, typer.Option("--out", help="Write correspondence maps and index.html here.")] = None,
) -> None:
    """Find the indexed images most like IMAGE. Model, size, pooling and whitening come from the index."""
    if k < 1:
        raise ValueError(f"-k must be at least 1, got {k}")
    box = _parse_bbox(bbox)
    with engine.Index.open(_index_dir(index)) as idx:
        idx.backbone(weights=None if weights is None else str(weights), device=device)
        result = idx.search(image, k=k, bbox=box, rerank=rerank, rerank_k=rerank_k, qe=qe, qe_alpha=qe_alpha)
        if as_json:
            typer.echo(json.dumps(result.to_json(), indent=2))
        else:
            columns = ["rank", "score", *(["inliers"] if rerank else [])]
            table = Table(*columns, Column("path", overflow="fold"), box=None)
            for h in result.hits:
                inliers = [] if not rerank else ["-" if h.inliers is None else str(h.inliers)]
                table.add_row(str(h.rank), f"{h.score:.4f}", *inliers, h.path)
            _stdout().print(table)
        if out is not None:  # after the results are out: a slow or failing map never hides them
            Console(stderr=True).print(f"maps: {engine.explain(idx, image, result, out, bbox=box)}")


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
    for s in data["skipped"]:
        typer.echo(f"skipped      {s['path']}: {s['reason']}")


@app.command()
@_errors
def remove(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to forget.", show_default=False)],
    index: IndexDir = None,
) -> None:
    """Remove files (or everything under folders) from an index."""
    with engine.Index.open(_index_dir(index)) as idx:
        n = idx.remove(paths)
        left = idx.store.count("ok")
    typer.echo(f"removed {n} entries; {left} images indexed")


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
    config: ConfigFile = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Backbone short name (see `retrieve models`; "
                                                                    "default dinov2_vits14).")] = None,
    weights: Weights = None,
    size: Annotated[int | None, typer.Option("--size", help=f"Longer image side in pixels (default {DEFAULT_SIZE}).")] = None,
    pooling: Annotated[str | None, typer.Option("--pooling", help="cls+gem (default), cls or gem.")] = None,
    multiscale: Multiscale = None,
    batch: Annotated[int | None, typer.Option("--batch", help="Images per forward pass (default 16).")] = None,
    workers: Workers = None,
    device: Device = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="fp32 (default here), auto, or bf16 / fp16 autocast.")] = None,
    no_crop: Annotated[bool, typer.Option("--no-crop", help="Use whole query images instead of their boxes.")] = False,
    whiten_from: Annotated[str | None, typer.Option("--whiten-from", help="Learn PCA-whitening on another set "
                                                    "(name under --data, or .json), or 'self' for the test set.")] = None,
    whiten_dim: Annotated[int | None, typer.Option("--whiten-dim", help="Whitened dimension (0: keep all).")] = None,
    distractors: Annotated[list[Path] | None, typer.Option("--distractors", help="Extra database folder (repeatable).")] = None,
    save_ranks: Annotated[Path | None, typer.Option("--save-ranks", help="Write the (n_db, n_queries) ranking (.npy).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write metrics and the full config as JSON.")] = None,
) -> None:
    """Evaluate on revisited Oxford/Paris (Easy/Medium/Hard mAP, mP@1,5,10) or your own ground truth."""
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
            raise ValueError("--whiten-from names the test set; say --whiten-from self to do that on purpose")
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
    device: Device = None,
    dtype: Dtype = "fp32",
) -> None:
    """Correspondence map of any two images: mutual-NN patch matches verified by RANSAC."""
    backbone = _backbone(model, weights, device, dtype)
    p = engine.match_files(a, b, backbone=backbone, image=ImageConfig(size=size), out=out, threshold=threshold)
    typer.echo(f"{p.n_matches} matches, {p.n_inliers} inliers -> {out}")


@app.command()
def models() -> None:
    """List backbone names, their size and where official weights come from."""
    from .backbone.registry import registry

    for name, arch in registry().items():
        source = "random weights (tests only)" if arch.random_only else arch.url
        typer.echo(f"{name:20s} dim {arch.dim:5d}  {arch.depth:2d} blocks  registers {arch.num_registers}  {source}")
