"""Defaults and thresholds the CLI prints come from the code that owns them (issue 26 item 8):
help strings from config.py's EngineConfig, the re-ranked table's caption from rerank.MIN_INLIERS."""

from __future__ import annotations

import dataclasses
import importlib
import sys
from types import SimpleNamespace
from typing import Any

from typer.testing import CliRunner

import retrieval
from retrieval import config, rerank

WIDE = {"COLUMNS": "100000"}


@dataclasses.dataclass(frozen=True)
class _Other(config.EngineConfig):
    """Defaults unlike every real one."""

    backbone: config.BackboneConfig = dataclasses.field(
        default_factory=lambda: config.BackboneConfig(name="dinov2_vitb14_reg", dtype="bf16"))
    pooling: config.PoolingConfig = dataclasses.field(default_factory=lambda: config.PoolingConfig(pooling="gem"))
    whitening: config.WhiteningConfig = dataclasses.field(
        default_factory=lambda: config.WhiteningConfig(enabled=False, dim=128))
    index: config.IndexConfig = dataclasses.field(default_factory=lambda: config.IndexConfig(kind="hnsw", dba=3))
    batch: int = 48
    decode: str = "cpu"


def _help(app: Any, command: str) -> dict[str, str]:
    """Option -> its row, as `retrieve COMMAND --help` prints it (its wrapped lines joined)."""
    r = CliRunner().invoke(app, [command, "--help"], env=WIDE)
    assert r.exit_code == 0, r.output
    rows: dict[str, str] = {}
    option = ""
    for line in r.output.split("\nOptions:\n")[1].splitlines():
        if line.startswith("  -"):  # `  -m, --model NAME  help...`; a row's further lines are indented deeper
            option = next(w for w in line.split() if w.startswith("--"))
            rows[option] = ""
        rows[option] = " ".join([*rows[option].split(), *line.split()])
    return rows


def _fresh_cli(monkeypatch: Any) -> Any:
    """retrieval.cli imported anew (its help strings are built on import), undone after the test."""
    monkeypatch.setattr(retrieval, "cli", importlib.import_module("retrieval.cli"))
    for name in [m for m in sys.modules if m == "retrieval.cli" or m.startswith("retrieval.cli.")]:
        monkeypatch.delitem(sys.modules, name)
    return importlib.import_module("retrieval.cli").app


def _expected(d: config.EngineConfig, eval_dtype: str) -> dict[str, dict[str, str]]:
    index = {"--model": d.backbone.name, "--batch": str(d.batch), "--decode": d.decode,
             "--dtype": d.backbone.dtype, "--pooling": d.pooling.pooling, "--index-kind": d.index.kind,
             "--dba": str(d.index.dba), "--whiten-dim": str(d.whitening.dim or 0),
             "--whitening": "--whitening" if d.whitening.enabled else "--no-whitening"}
    evaluation = {"--model": d.backbone.name, "--pooling": d.pooling.pooling, "--batch": str(d.batch),
                  "--dtype": eval_dtype}
    return {"index": index, "eval": evaluation}


def _assert_help_names(app: Any, expected: dict[str, dict[str, str]]) -> None:
    for command, options in expected.items():
        shown = _help(app, command)
        for option, value in options.items():
            assert f"else {value})" in shown[option], (command, option, value, shown[option])


def test_help_names_the_config_defaults():
    from retrieval.cli import app

    _assert_help_names(app, _expected(config.EngineConfig(), config.eval_defaults()["backbone"]["dtype"]))


def test_help_follows_a_changed_default(monkeypatch):
    """Other defaults in config.py, other help: none is written in the help's prose."""
    monkeypatch.setattr(config, "EngineConfig", _Other)
    monkeypatch.setattr(config, "eval_defaults", lambda: {"backbone": {"dtype": "fp16"}})
    _assert_help_names(_fresh_cli(monkeypatch), _expected(_Other(), "fp16"))


def test_the_reranked_caption_names_min_inliers(monkeypatch, capsys):
    from retrieval.cli import collection

    monkeypatch.setattr(rerank, "MIN_INLIERS", 11)
    collection._print_hits(SimpleNamespace(reranked=True, hits=[]), title=None)
    out = capsys.readouterr().out
    assert "fewer than 11 count as none" in out, out
