"""`retrieve query` through the CLI: a huge -k within memory, several queries in one call, files
gone since indexing, the re-ranked table, the maps folder, a query that is not a regular file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import ROOT
from .helpers import index_tiny, one_line_error, query_index


@pytest.mark.subprocess
def test_huge_k_rerank_k_and_qe_stay_within_memory(folder, tmp_path):
    """-k 10^9 over 5 images: before the fix, 8 GB+ padding arrays. The child runs with a 6 GB
    address-space limit, so a regression fails here instead of taking the machine down."""
    ix = tmp_path / "ix"
    index_tiny(folder, ix)
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
        from typer.testing import CliRunner
        from retrieval.cli import app
        r = CliRunner().invoke(app, ["query", {str(folder / "p1.jpg")!r}, "--index", {str(ix)!r}, "--json",
                                     "-k", "1000000000", "--rerank", "--rerank-k", "1000000000",
                                     "--qe", "1000000000"])
        sys.stdout.write(r.stdout)
        sys.exit(r.exit_code)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    hits = json.loads(done.stdout)
    assert len(hits) == 5 and sorted(h["path"] for h in hits) == sorted(str(p) for p in folder.iterdir())


def test_several_queries_in_one_call(folder, tmp_path):
    ix = tmp_path / "ix"
    index_tiny(folder, ix)
    files = [str(folder / f"p{i}.jpg") for i in (0, 3)]
    both = json.loads(query_index(ix, *files, "--json", "-k", "2").stdout)
    assert [b["query"] for b in both] == files
    for q, b in zip(files, both):
        alone = json.loads(query_index(ix, q, "--json", "-k", "2").stdout)
        assert [h["path"] for h in b["hits"]] == [h["path"] for h in alone]
        assert [h["score"] for h in b["hits"]] == pytest.approx([h["score"] for h in alone], abs=1e-4)
    table = query_index(ix, *files, "-k", "1")
    assert table.exit_code == 0 and table.stdout.count("query ") == 2
    one_line_error(query_index(ix, *files, "--bbox", "0,0,10,10"), "one")


def test_deleted_files_are_left_out_and_the_list_filled(folder, tmp_path):
    ix = tmp_path / "ix"
    index_tiny(folder, ix)
    query = tmp_path / "q.jpg"
    shutil.copy(folder / "p1.jpg", query)
    (folder / "p1.jpg").unlink()
    (folder / "p4.jpg").unlink()
    for extra in ([], ["--rerank"]):
        r = query_index(ix, str(query), "--json", "-k", "3", *extra)
        paths = [h["path"] for h in json.loads(r.stdout)]
        assert len(paths) == 3 and all(Path(p).exists() for p in paths)  # filled from further down
        assert "left out 2 result(s) whose files are gone" in r.stderr and "retrieve index" in r.stderr
    r = query_index(ix, str(query), "--json", "-k", "10")
    assert len(json.loads(r.stdout)) == 3  # all that exist


def test_reranked_table_says_what_it_is_ordered_by(folder, tmp_path):
    ix = tmp_path / "ix"
    index_tiny(folder, ix)
    r = query_index(ix, str(folder / "p3.jpg"), "--rerank", "-k", "3")
    header = r.stdout.splitlines()[0].split()
    assert header == ["rank", "inliers", "similarity", "path"]
    assert "ordered by verified patch matches" in r.stdout
    assert query_index(ix, str(folder / "p3.jpg"), "-k", "3").stdout.splitlines()[0].split() == \
        ["rank", "similarity", "path"]


def test_maps_folder_keeps_no_stale_results(folder, tmp_path):
    ix, out = tmp_path / "ix", tmp_path / "maps"
    index_tiny(folder, ix)
    assert query_index(ix, str(folder / "p0.jpg"), "-k", "4", "--out", str(out)).exit_code == 0
    assert (out / "004_matches.png").exists()
    mine = out / "notes.txt"
    mine.write_text("the user's own file")
    assert query_index(ix, str(folder / "p0.jpg"), "-k", "2", "--out", str(out)).exit_code == 0
    assert sorted(p.name for p in out.glob("0*_*.png")) == [f"00{r}_{k}.png" for r in (1, 2)
                                                           for k in ("heatmap", "matches", "pca")]
    assert mine.read_text() == "the user's own file"


@pytest.mark.subprocess
def test_a_fifo_or_device_is_refused_not_read(folder, tmp_path):
    """A FIFO or /dev/zero as a query: one line naming it, at once. Before, the FIFO waited for a
    writer forever and /dev/zero was read until memory ran out; the child runs with a time limit
    and a 6 GB address-space limit, so a regression fails here instead of hanging."""
    fifo = folder / "pipe.jpg"
    os.mkfifo(fifo)
    ix = tmp_path / "ix"
    r = index_tiny(folder, ix)
    assert "5 images indexed" in r.stdout and f"not a regular file (a FIFO), skipped: {fifo}" in r.stderr
    script = textwrap.dedent(f"""
        import json, resource
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
        from typer.testing import CliRunner
        from retrieval.cli import app
        runs = [CliRunner().invoke(app, ["query", q, "--index", {str(ix)!r}]) for q in ({str(fifo)!r}, "/dev/zero")]
        print(json.dumps([[r.exit_code, r.stderr] for r in runs]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    said = ((str(fifo), "a FIFO"), ("/dev/zero", "a device"))
    for (code, stderr), (name, kind) in zip(json.loads(done.stdout), said):
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert code == 1 and errors == [f"error: {name}: not a regular file ({kind}); fix: pass an image file"], stderr
