"""`retrieve index`, `query`, `info`, `remove`, `check`, `backup`: an index folder and searching it
(`retrieve list` is in listing.py)."""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from .. import engine
from ..config import DEFAULT_MAX_LINES, DEFAULT_MAX_PIXELS, DEFAULT_SIZE, SearchOptions, cli_overrides
from ..engine.watch import Batch, WatchOptions
from ..errors import UsageError
from ..types import parse_box, shown
from . import checks
from .app import StopAfterBatch, app, boundary
from .options import DEFAULTS, SIZE_HELP, ConfigFile, Device, IndexDir, Multiscale, Weights, Workers, index_dir
from .output import error_line, literal, nothing_under, print_table, progress_bar, say_skipped


@app.command()
@boundary
def index(
    folders: Annotated[list[Path], typer.Argument(help="Folders (or files) to index.", show_default=False)],
    index: IndexDir = None,
    config: ConfigFile = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Backbone, fixed when the index is created "
                                                                   "(default: the index's, else "
                                                                   f"{DEFAULTS.backbone.name}).")] = None,
    weights: Weights = None,
    size: Annotated[int | None, typer.Option("--size", help=f"{SIZE_HELP}; fixed when the index is created "
                                                            f"(default: the index's, else {DEFAULT_SIZE}).")] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="Images per forward pass "
                                                              f"(default: the index's, else {DEFAULTS.batch}).")] = None,
    workers: Workers = None,
    device: Device = None,
    decode: Annotated[str | None, typer.Option("--decode", help="Where JPEGs are decoded: auto (the GPU when the "
                                                                "model runs on one), cpu or gpu "
                                                                f"(default: the index's, else {DEFAULTS.decode}).")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="fp32, bf16 or fp16, or auto: bf16 where the "
                                                              "hardware computes it natively, else fp32; fixed when "
                                                              "the index is created (default: the index's, else "
                                                              f"{DEFAULTS.backbone.dtype}).")] = None,
    pooling: Annotated[str | None, typer.Option("--pooling", help="cls+gem, cls or gem; fixed when the index is "
                                                                  "created (default: the index's, else "
                                                                  f"{DEFAULTS.pooling.pooling}).")] = None,
    multiscale: Multiscale = None,
    kind: Annotated[str | None, typer.Option("--index-kind", help="auto, flat, ivf, hnsw or ivfpq "
                                                                  f"(default: the index's, else {DEFAULTS.index.kind}).")] = None,
    dba: Annotated[int | None, typer.Option("--dba", help="Database-side augmentation with K neighbours, 0: off "
                                                          f"(default: the index's, else {DEFAULTS.index.dba}).")] = None,
    whiten_dim: Annotated[int | None, typer.Option("--whiten-dim", help="Reduce whitened descriptors to this "
                                                                          "dimension, 0: keep all (default: the "
                                                                          f"index's, else {DEFAULTS.whitening.dim or 0}).")] = None,
    whitening: Annotated[bool | None, typer.Option("--whitening/--no-whitening",
                                                   help="PCA-whiten once there are enough images, or L2 only "
                                                        "(default: the index's, else "
                                                        f"--{'' if DEFAULTS.whitening.enabled else 'no-'}whitening).")] = None,
    refit_whitening: Annotated[bool, typer.Option("--refit-whitening", help="Refit whitening from stored descriptors.")] = False,
    retry_skipped: Annotated[bool, typer.Option("--retry-skipped", help="Try previously refused files again.")] = False,
    prune: Annotated[bool, typer.Option("--prune", help="Files gone are gone for good: drop their rows even when a "
                                                        "FOLDER holds no image now or no longer exists (refused "
                                                        "without it: a drive not mounted?).")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Read and hash every indexed file, not only those whose "
                                                          "size, times or inode changed, and embed again those whose "
                                                          "bytes differ (no model work for the others).")] = False,
    max_pixels: Annotated[int | None, typer.Option("--max-pixels", help="Refuse images above this many pixels "
                                                                        "(default: the index's, else "
                                                                        f"{DEFAULT_MAX_PIXELS}).")] = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Leave out files whose path or a folder "
                                                      "of it matches this glob ('Trash', '*.tmp.jpg'); kept in the "
                                                      "index for later runs (repeatable).")] = None,
    clear_excludes: Annotated[bool, typer.Option("--clear-excludes", help="Forget every exclusion (globs and what "
                                                                         "`retrieve remove` took out) first.")] = False,
    ray: Annotated[str | None, typer.Option("--ray",
                                            help="Embed on a Ray cluster: local (start Ray on this machine), auto, "
                                                 "or a head's ray://HOST:PORT; needs pip install "
                                                 "\"retrieval[ray]\" (docs/scale.md).")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Then keep running: apply creations, changes, deletions "
                                                        "and moves as they happen, in batches (Ctrl-C stops; "
                                                        "docs/index.md).")] = False,
    rescan_interval: Annotated[float, typer.Option("--rescan-interval", help="With --watch: a whole update at "
                                                   "least every this many seconds, for events that were lost "
                                                   "(0: never).")] = WatchOptions.rescan,
) -> None:
    """Index the images under each FOLDER; re-running only embeds new or changed files.

    Settings left out are the index's own; a new index starts from the defaults named.
    """
    overrides = cli_overrides(config, model=model, weights=weights, device=device, dtype=dtype, size=size,
                              max_pixels=max_pixels, pooling=pooling, multiscale=multiscale, index_kind=kind, dba=dba,
                              whiten_dim=whiten_dim, whitening=whitening, batch=batch, workers=workers, decode=decode)
    where = index_dir(index)
    if not prune:  # --prune: a folder deleted for good is how its rows go
        checks.existing(folders)  # before torch is imported: a mistyped folder is refused at once, creating no index
    checks.known_model(checks.model_of(overrides))
    checks.device(device)
    roots = engine.index_roots(folders, missing_ok=prune)  # resolved once; refuses a link to nowhere (--prune: gone for good)
    if watch and ray is not None:
        raise UsageError("--watch with --ray: watch with this machine's model, or index with --ray from a timer")
    watching = WatchOptions(rescan=rescan_interval) if watch else None  # a bad interval is refused first
    cluster = engine.ray_cluster(ray) if ray is not None else None  # before anything is created
    if cluster is not None and not logging.getLogger("retrieval").isEnabledFor(logging.DEBUG):
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # its plans and timings; -v shows them
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled": ours show
    with engine.Index.open_or_create(where, overrides) as idx, StopAfterBatch() as stop, progress_bar() as bar:
        if exclude or clear_excludes:
            idx.exclude(exclude or [], clear=clear_excludes)
        task = bar.add_task("indexing", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        hashing: list[Any] = []  # its task, added when the first file is hashed

        def hashed(done: int, total: int) -> None:
            if not hashing:
                hashing.append(bar.add_task("hashing", total=total))
            bar.update(hashing[0], completed=done, total=total)

        summary = idx.update(roots, retry_skipped=retry_skipped, should_stop=stop, on_progress=progress,
                             cluster=cluster, verify=verify, on_hashed=hashed, refit=refit_whitening, prune=prune)
        images_now = idx.count()
    say_skipped(summary.skipped)
    log = logging.getLogger("retrieval")
    typer.echo(_summary_line(where, images_now, summary))
    seen = summary.added + summary.updated + summary.unchanged + summary.moved + len(summary.skipped) + \
        summary.still_refused
    if not seen and not summary.interrupted:
        log.warning("no image files under %s (none with an image extension such as .jpg, .png, .heic or a camera "
                    "RAW; hidden files and --exclude matches are left out); check the folder", ", ".join(
                        shlex.quote(shown(str(f))) for f in folders))
    if verify:
        typer.echo(f"verified: {summary.hashed} files hashed, {summary.changed} changed since they were indexed "
                   f"(embedded again)")
    if summary.interrupted:
        typer.echo("interrupted: what was embedded is saved; run the same command again to continue")
        raise typer.Exit(130)
    if watching is not None:
        _watch(where, roots, watching, retry_skipped=retry_skipped, weights=weights, device=device)


def _watch(where: Path, roots: engine.Roots, options: WatchOptions, *, retry_skipped: bool, weights: Path | None,
           device: str | None) -> None:
    """`--watch`: each batch of file events is the same update as the run before it, printed as
    it lands; Ctrl-C stops between batches (or, in one, after its forward batch: exit 130)."""
    from ..engine.watch import watch

    Console(stderr=True).print(Text.assemble("watching ", literal(", ".join(roots.real)), " (Ctrl-C stops)"))
    cut: list[bool] = []  # a batch that Ctrl-C stopped half-way
    with engine.Index.open(where, weights=weights, device=device) as idx, StopAfterBatch() as stop:
        def batch(b: Batch) -> None:
            cut.append(b.summary is not None and b.summary.interrupted)
            if b.error is not None:
                logging.getLogger("retrieval").warning("%s (tried again later)", b.error)
            elif b.summary is not None and (b.reason == "events" or _changed(b.summary)):
                typer.echo(_summary_line(where, idx.count(), b.summary))
                say_skipped(b.summary.skipped)

        watch(lambda: idx.update(roots, retry_skipped=retry_skipped, should_stop=stop), roots.real, ignore=[where],
              options=options, should_stop=stop, on_batch=batch)
    if cut and cut[-1]:
        typer.echo("interrupted: what was embedded is saved; run the same command again to continue")
        raise typer.Exit(130)
    typer.echo("stopped watching")


def _changed(s: engine.UpdateSummary) -> bool:
    return bool(s.added or s.updated or s.removed or s.moved or s.skipped)


def _summary_line(where: Path, images_now: int, summary: engine.UpdateSummary) -> str:
    refused = f", still refused {summary.still_refused} (`retrieve list --skipped` says why; --retry-skipped)" \
        if summary.still_refused else ""
    moved = f"moved {summary.moved}, " if summary.moved else ""
    return (f"{shown(str(where))}: {images_now} images indexed | added {summary.added}, updated {summary.updated}, "
            f"removed {summary.removed}, {moved}unchanged {summary.unchanged}, skipped {len(summary.skipped)}"
            f"{refused} | {summary.seconds:.1f} s" + (" | whitened" if summary.whitened else ""))


@app.command()
@boundary
def query(
    images: Annotated[list[Path] | None, typer.Argument(help="Query images (may live outside the indexed folders); "
                                                             "several are embedded together.", show_default=False)] = None,
    like: Annotated[str | None, typer.Option("--like", help="Instead of IMAGES: more like this indexed file, its path "
                                                           "or its id (N or id:N, as `retrieve list` shows), searched "
                                                           "with its stored descriptor (no decode, no model); the file "
                                                           "itself is left out of the results.")] = None,
    index: IndexDir = None,
    k: Annotated[int, typer.Option("-k", "--top", help="How many results per query.")] = SearchOptions.k,
    bbox: Annotated[str | None, typer.Option("--bbox", help="x1,y1,x2,y2: query only this box (one image).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout: the list of {rank, score, path} "
                                                         "(several queries: a list of {query, hits}).")] = False,
    paths_only: Annotated[bool, typer.Option("--paths", "--filepath-only",
                                             help="Only the result paths, one per line, as the file system's bytes "
                                                  "(several queries: the query, a tab, then the path).")] = False,
    weights: Annotated[Path | None, typer.Option("--weights", help="The index's weights file, if it moved "
                                                                    "(default: the path the index holds).")] = None,
    device: Device = None,
    rerank: Annotated[bool, typer.Option("--rerank", help="Re-rank the shortlist by verified patch matches.")] = SearchOptions.rerank,
    rerank_k: Annotated[int, typer.Option("--rerank-k", help="Shortlist size for --rerank.")] = SearchOptions.rerank_k,
    qe: Annotated[int, typer.Option("--qe", help="alpha-query expansion with this many top results (0: off).")] = SearchOptions.qe,
    qe_alpha: Annotated[float, typer.Option("--qe-alpha", help="Weight exponent of query expansion.")] = SearchOptions.qe_alpha,
    out: Annotated[Path | None, typer.Option("--out", "-o",
                                             help="Write correspondence maps and index.html here.")] = None,
    max_lines: Annotated[int, typer.Option("--max-lines", min=0, help="With --out: verified matches drawn as lines, "
                                           "spread over the query; the rest as dots.")] = DEFAULT_MAX_LINES,
) -> None:
    """Find the indexed images most like each IMAGE (or like an indexed file: --like). Model, size, pooling
    and whitening come from the index."""
    if as_json and paths_only:
        raise typer.BadParameter("choose one output: --json or --paths", param_hint="--paths")
    if (like is None) == (not images):
        raise UsageError("give query IMAGES, or --like an indexed file (its path or id), not both")
    if like is not None and (bbox is not None or out is not None):
        raise UsageError("--like searches with a stored descriptor, which has no box and draws no maps; for --bbox or "
                         "--out give the file itself as the query")
    images = images or []
    if out is not None and len(images) > 1:
        raise typer.BadParameter("maps are written for one query image at a time", param_hint="--out")
    box = None if bbox is None else parse_box(bbox)
    checks.existing(images, files_only=True)  # before the index opens and torch is imported
    checks.device(device)
    options = SearchOptions(k=k, rerank=rerank, rerank_k=rerank_k, qe=qe, qe_alpha=qe_alpha)
    with engine.Index.open(index_dir(index), weights=weights, device=device) as idx:
        results = [idx.similar(like, options)] if like is not None else idx.search_many(images, options, bbox=box)
        queries: list[Any] = [*images] or [like]
        for result in results:
            if result.gone:
                _say_gone(result, k)
        if as_json:
            data: Any = results[0].to_json() if len(results) == 1 else [
                {"query": str(q), "hits": r.to_json()} for q, r in zip(queries, results)]
            typer.echo(json.dumps(data, indent=2))
        elif paths_only:
            # several queries: each line says whose result it is, `QUERY<tab>PATH`, as grep names the file
            lines = b"".join((os.fsencode(q) + b"\t" if len(queries) > 1 else b"") + os.fsencode(h.path) + b"\n"
                             for q, r in zip(queries, results) for h in r.hits)
            sys.stdout.buffer.write(lines)
            sys.stdout.flush()
        else:
            for q, result in zip(queries, results):
                _print_hits(result, title=literal(f"query {q}") if len(queries) > 1 else None)
        if out is not None:  # after the results are out: a slow or failing map never hides them
            maps = engine.explain(idx, images[0], results[0], out, bbox=box, max_lines=max_lines)
            Console(stderr=True).print(literal(f"maps: {maps}"), soft_wrap=True)


def _say_gone(result: Any, k: int) -> None:
    """One warning for the results whose files are gone, with the one way out `retrieve index`'s
    refusal of an emptied folder names too: `retrieve index FOLDER --prune`."""
    more = "" if result.looked_at is None else \
        f"; only the best {result.looked_at} results were looked at, so fewer than {k} are shown"
    folders = {os.path.dirname(p) for p in result.gone}
    where = shlex.quote(shown(folders.pop())) if len(folders) == 1 else "FOLDER"
    logging.getLogger("retrieval").warning(
        "left out %d result(s) whose files are gone (deleted, moved, on a drive not mounted, or no longer regular "
        "files), e.g. %s; mount the drive, or if they are gone for good prune them: `retrieve index %s --prune`%s",
        len(result.gone), shown(result.gone[0]), where, more)


def _print_hits(result: Any, *, title: Text | None) -> None:
    """Rank, what the order is by, and the path. Re-ranked lists are ordered by verified inliers
    (at least rerank.MIN_INLIERS), then by global similarity: both shown, in that order."""
    if result.reranked:
        columns = ["rank", "inliers", "similarity"]
        from ..rerank import MIN_INLIERS

        caption = f"ordered by verified patch matches (inliers; fewer than {MIN_INLIERS} count as none), then similarity"
    else:
        columns, caption = ["rank", "similarity"], None
    table = Table(*columns, Column("path", overflow="fold"), box=None, title=title, title_justify="left",
                  caption=caption, caption_justify="left")
    for h in result.hits:
        inliers = [] if not result.reranked else ["-" if h.inliers is None else str(h.inliers)]
        table.add_row(str(h.rank), *inliers, f"{h.score:.4f}", literal(h.path))
    print_table(table)


@app.command()
@boundary
def info(
    index: IndexDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False,
) -> None:
    """What an index holds: configuration, counts, skipped files, size on disk."""
    with engine.Index.open(index_dir(index)) as idx:
        data = idx.info().to_dict()
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
        typer.echo(f"excluded     {shown(p)} (by `retrieve remove`; `retrieve index {shlex.quote(shown(p))}` takes it "
                   f"back)")
    for s in data["skipped"]:
        typer.echo(f"skipped      {shown(s['path'])}: {s['reason']}")


@app.command()
@boundary
def remove(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to forget.", show_default=False)],
    index: IndexDir = None,
) -> None:
    """Remove files (or everything under folders) from an index, and keep them out of later
    `retrieve index` runs of their folders (`retrieve index PATH` takes a path back)."""
    where = index_dir(index)
    with engine.Index.open(where) as idx:
        n = idx.remove(paths)
        left = idx.count()
    if n == 0:
        raise nothing_under(where, paths)
    typer.echo(f"removed {n} entries; {left} images indexed; later `retrieve index` runs of their folders leave "
               f"them out (`retrieve index PATH` takes a path back)")


@app.command()
@boundary
def check(
    index: IndexDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable findings.")] = False,
) -> None:
    """Check an index: SQLite's integrity check, then every row against the index's own rules and the
    vectors file against the store. One line per finding; exit 1 when something is damaged."""
    report = engine.check_index(index_dir(index))
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        for f in report.findings:
            typer.echo(f"{f.level:5s}  {f.message}")
    if report.damaged:
        error_line(report.summary)
        raise typer.Exit(1)
    if not as_json:
        typer.echo(report.summary)


@app.command()
@boundary
def backup(
    dest: Annotated[str, typer.Argument(help="File to write, or a folder (it gets store.sqlite; written with a "
                                             "trailing slash, it is created if missing).", show_default=False)],
    index: IndexDir = None,
) -> None:
    """Copy the index's store, the one part that cannot be rebuilt, with SQLite's online backup
    (safe while `retrieve index` runs). Restore: copy it into an empty folder as store.sqlite."""
    out, images = engine.backup_store(index_dir(index), dest)
    typer.echo(f"wrote {shown(str(out))}: {images} images indexed; to restore, copy it as store.sqlite into an empty index "
               f"folder (the vectors file is rebuilt from it)")


