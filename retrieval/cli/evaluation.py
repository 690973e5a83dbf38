"""`retrieve eval`: revisited Oxford/Paris or your own ground truth, through the query path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .. import engine, ground_truth
from ..config import DEFAULT_SIZE, SearchOptions, cli_overrides, eval_defaults, load_config
from ..errors import UsageError
from . import checks
from .app import app, boundary
from .options import DEFAULTS, SIZE_HELP, ConfigFile, Device, Multiscale, Weights, Workers
from .output import literal, print_table, progress_bar


def _benchmark(spec: str, data: Path | None, crop: bool) -> Any:
    if spec.endswith(".json"):
        return ground_truth.load_json(spec, crop=crop)
    if data is None:
        raise UsageError(f"--data DIR is needed for {spec} (DIR/{spec}/gnd_{spec}.pkl and DIR/{spec}/jpg/)")
    return ground_truth.load_revisited(data, spec, crop=crop)


@app.command("eval")
@boundary
def eval_(
    dataset: Annotated[str, typer.Argument(help="roxford5k, rparis6k (or any set in that layout under --data), "
                                                "or a ground-truth .json file.")],
    data: Annotated[Path | None, typer.Option("--data", help="Folder holding DATASET/jpg and DATASET/gnd_DATASET.pkl.")] = None,
    index: Annotated[Path | None, typer.Option("--index", help="Index folder for the database (default: a cache per setup).")] = None,
    config: ConfigFile = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Backbone short name, see `retrieve models` "
                                                                    f"(default: the config's, else {DEFAULTS.backbone.name}).")] = None,
    weights: Weights = None,
    size: Annotated[int | None, typer.Option("--size", help=f"{SIZE_HELP} (default: the config's, else {DEFAULT_SIZE}).")] = None,
    pooling: Annotated[str | None, typer.Option("--pooling", help=f"cls+gem, cls or gem (default: the config's, else {DEFAULTS.pooling.pooling}).")] = None,
    multiscale: Multiscale = None,
    batch: Annotated[int | None, typer.Option("--batch", help=f"Images per forward pass (default: the config's, else {DEFAULTS.batch}).")] = None,
    workers: Workers = None,
    device: Device = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="fp32, auto, or bf16 / fp16 autocast (default: the config's, "
                                                              f"else {eval_defaults()['backbone']['dtype']}).")] = None,
    no_crop: Annotated[bool, typer.Option("--no-crop", help="Use whole query images instead of their boxes.")] = False,
    whiten_from: Annotated[str | None, typer.Option("--whiten-from", help="Learn PCA-whitening on another set "
                                                    "(name under --data, or .json), or 'self' for the test set "
                                                    "(default: none, L2 only).")] = None,
    whiten_dim: Annotated[int | None, typer.Option("--whiten-dim", help="Whitened dimension (default: all).")] = None,
    distractors: Annotated[list[Path] | None, typer.Option("--distractors", help="Extra database folder (repeatable).")] = None,
    save_ranks: Annotated[Path | None, typer.Option("--save-ranks", help="Write the (n_db, n_queries) ranking (.npy).")] = None,
    rerank: Annotated[bool, typer.Option("--rerank", help="Re-rank each shortlist by verified patch matches, as "
                                                          "`retrieve query --rerank` does.")] = SearchOptions.rerank,
    rerank_k: Annotated[int, typer.Option("--rerank-k", help="Shortlist size for --rerank.")] = SearchOptions.rerank_k,
    qe: Annotated[int, typer.Option("--qe", help="alpha-query expansion with this many top results (0: off).")] = SearchOptions.qe,
    qe_alpha: Annotated[float, typer.Option("--qe-alpha", help="Weight exponent of query expansion.")] = SearchOptions.qe_alpha,
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
    for given, option in ((save_ranks, "--save-ranks"), (json_out, "--json-out")):
        if given is not None:
            engine.output_file(given, option)
    checks.known_model(checks.model_of(overrides))  # before torch is imported
    checks.device(device)
    crop = not no_crop
    bench = _benchmark(dataset, data, crop)
    source = None
    if whiten_from is not None and whiten_from != "self":
        source = _benchmark(whiten_from, data, crop)
        if source.name == bench.name:
            raise UsageError("--whiten-from names the test set; say --whiten-from self to do that on purpose")
    with progress_bar() as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        options = engine.EvalOptions(SearchOptions(rerank=rerank, rerank_k=rerank_k, qe=qe, qe_alpha=qe_alpha), dba=dba)
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
        table = Table("stage", *heads, "ms/query", box=None, title=literal(title))
        for st in result.stages:
            table.add_row(st.name, *(f"{100 * m[k]:.2f}" for m in st.metrics.values() for k in keys),
                          f"{st.ms_per_query:.1f}")
    else:
        table = Table("protocol", *keys, box=None, title=literal(f"{title} | {result.stages[-1].name}"))
        for protocol, m in result.metrics.items():
            table.add_row(protocol, *(f"{100 * m[k]:.2f}" for k in keys))
    print_table(table)
    typer.echo(f"{cfg['backbone']} size {cfg['size']} {cfg['pooling']} | crop {cfg['query_crop']} | "
               f"whitening: {cfg['whitening']}")
    if str(cfg["weights_id"]).startswith("random:"):
        typer.echo("note: random weights; these numbers say nothing about retrieval quality")


