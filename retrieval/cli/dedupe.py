"""`retrieve dedupe`: copies of the same photo inside an index, or which files of a folder it
already holds. Read-only: it never deletes or moves a file (docs/dedupe.md)."""

from __future__ import annotations

import csv
import datetime
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table

from .. import engine
from ..config import DEDUPE_COVERAGES, DEDUPE_MIN_K, DEDUPE_THRESHOLDS, DedupeOptions
from ..errors import UsageError
from ..types import shown
from . import checks
from .app import app, boundary
from .options import Device, IndexDir, index_dir
from .output import literal, print_table

if TYPE_CHECKING:
    from ..engine.dedupe import Arrival, DedupeReport


def _coverage(value: float) -> float:
    """--coverage's open lower end, which typer's `min` (an end included) cannot say."""
    if not value > DEDUPE_COVERAGES[0]:
        raise typer.BadParameter(f"Input should be greater than {DEDUPE_COVERAGES[0]:g}")
    return value


@app.command()
@boundary
def dedupe(
    folders: Annotated[list[Path] | None, typer.Argument(
        help="Check these files or folders against the index instead (which of them it already holds); "
             "nothing is indexed.", show_default=False)] = None,
    index: IndexDir = None,
    threshold: Annotated[float, typer.Option("--threshold", min=DEDUPE_THRESHOLDS[0], max=DEDUPE_THRESHOLDS[1],
                                             help="Global similarity at which a pair of neighbours is verified at "
                                                  "all (lower: more pairs checked, slower).")] = DedupeOptions.threshold,
    coverage: Annotated[float, typer.Option("--coverage", max=DEDUPE_COVERAGES[1], callback=_coverage,
                                            help="Verification level: share of the smaller image's patches that must "
                                                 "agree under one transform for a copy; verified pairs below it are "
                                                 "`similar`.")] = DedupeOptions.coverage,
    k: Annotated[int, typer.Option("-k", "--neighbours", min=DEDUPE_MIN_K,
                                   help="Nearest neighbours looked at per image.")] = DedupeOptions.k,
    similar: Annotated[bool, typer.Option("--similar", help="Also list similar groups (other shots of the same "
                                                            "scene, heavy edits), apart from the copies.")] = False,
    exact_only: Annotated[bool, typer.Option("--exact-only", help="Identical bytes only: no neighbours, no model.")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV on stdout, one row per image of a group.")] = False,
    html: Annotated[Path | None, typer.Option("--html", help="Write a contact sheet here (a folder): each group "
                                                            "side by side with the patch matches of each pair.")]
    = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="The index's weights file, if it moved.")] = None,
    device: Device = None,
) -> None:
    """Groups of copies of the same photo in the index: `exact` (same bytes) and `near` (re-encoded,
    resized, cropped, mirrored or lightly edited, confirmed by patch matches); the first of each
    group is the one to keep (most pixels, then oldest). With FOLDERS: which of their files the
    index already holds. Nothing is deleted or moved."""
    if as_json and as_csv:
        raise UsageError("choose one output: --json or --csv")
    if html is not None and folders:
        raise UsageError("--html draws the groups of the index; leave out the folders, or --html")
    options = DedupeOptions(k=k, threshold=threshold, coverage=coverage, similar=similar, exact_only=exact_only)
    with engine.Index.open(index_dir(index), weights=weights, device=device) as idx:
        if folders:
            arrivals = engine.folder_against_index(idx, checks.image_inputs(folders), options)
            _print_arrivals(arrivals, as_json=as_json, as_csv=as_csv)
            return
        report = engine.index_duplicates(idx, options)
        _print_report(report, as_json=as_json, as_csv=as_csv)
        if html is not None:
            from ..engine.dedupe_sheet import contact_sheet

            page = contact_sheet(idx, report, html)
            Console(stderr=True).print(literal(f"contact sheet: {page}"), soft_wrap=True)


def _when(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _print_report(report: DedupeReport, *, as_json: bool, as_csv: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    elif as_csv:
        rows = [[n, g.kind, "keep" if m is g.keep else "copy", m.path, m.width, m.height, m.mtime_ns, m.sha256]
                for n, g in enumerate(report.groups, 1) for m in g.members]
        _csv(["group", "kind", "role", "path", "width", "height", "mtime_ns", "sha256"], rows)
    else:
        for n, g in enumerate(report.groups, 1):
            best: dict[int, tuple[int, str]] = {}  # each member's strongest link inside the group: what the table says of it
            for x in g.links:
                for i in (x.a, x.b):
                    best[i] = max(best.get(i, (-1, "")), (1 << 30 if x.kind == "exact" else x.inliers, _link_text(x)))
            table = Table("", "pixels", "modified", "link", Column("path", overflow="fold"), box=None,
                          title=f"group {n}: {g.kind}, {len(g.members)} images", title_justify="left")
            for m in g.members:
                table.add_row("keep" if m is g.keep else "", f"{m.width}x{m.height}", _when(m.mtime_ns),
                              best.get(m.id, (0, ""))[1], literal(m.path))
            print_table(table)
    kinds = [g.kind for g in report.groups]
    counts = ", ".join(f"{kinds.count(k)} {k}" for k in ("exact", "near", "similar") if k in kinds) or "none"
    extra = f"; {report.unverifiable} pairs had no patch descriptors to verify" if report.unverifiable else ""
    Console(stderr=True).print(f"{report.images} images: {len(kinds)} groups ({counts}); {report.candidates} "
                               f"neighbour pairs verified{extra}. Nothing was deleted or moved.",
                               markup=False, highlight=False, soft_wrap=True)


def _link_text(x: Any) -> str:
    if x.kind == "exact":
        return "same bytes"
    return f"{x.kind}: {x.inliers} inliers, {100 * x.coverage:.0f}%" + (" mirrored" if x.mirrored else "")


def _print_arrivals(arrivals: list[Arrival], *, as_json: bool, as_csv: bool) -> None:
    def row(a: Arrival) -> dict[str, Any]:
        return {"path": a.path, "kind": a.kind, "indexed": None if a.match is None else a.match.path,
                "score": a.score, "inliers": a.inliers, "coverage": round(a.coverage, 4), "reason": a.reason}

    if as_json:
        typer.echo(json.dumps([row(a) for a in arrivals], indent=2))
    elif as_csv:
        fields = ["path", "kind", "indexed", "score", "inliers", "coverage", "reason"]
        _csv(fields, [[row(a)[f] for f in fields] for a in arrivals])
    else:
        table = Table("kind", "inliers", Column("path", overflow="fold"), Column("indexed copy", overflow="fold"),
                      box=None)
        for a in arrivals:
            other = literal(a.match.path) if a.match is not None else literal(a.reason or "")
            table.add_row(a.kind, str(a.inliers) if a.inliers else "", literal(a.path), other)
        print_table(table)
    held = sum(a.kind in ("exact", "near") for a in arrivals)
    Console(stderr=True).print(f"{held} of {len(arrivals)} files are already in the index (exact or near copies)",
                               markup=False, highlight=False, soft_wrap=True)


def _csv(header: list[str], rows: list[list[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows([[shown(v) if isinstance(v, str) else ("" if v is None else v) for v in r] for r in rows])
    typer.echo(buf.getvalue(), nl=False)
