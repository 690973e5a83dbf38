"""Hostile and first-time use through the CLI: memory, file names, one-line errors, honest output."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrieval.cli import app

from .conftest import ROOT, synth_photo

runner = CliRunner()
BAD_NAME = os.fsdecode(b"bad\xff\xfe.jpg")  # not UTF-8: Linux file names are bytes


def _index(folder: Path, ix: Path, *more: str):
    r = runner.invoke(app, ["index", str(folder), "--index", str(ix), "--model", "test_tiny", "--size", "112",
                            "--workers", "0", *more])
    assert r.exit_code == 0, r.output
    return r


def _query(ix: Path, *args: str):
    return runner.invoke(app, ["query", *args, "--index", str(ix)])


def _one_line_error(r, *words: str) -> None:
    assert r.exit_code != 0 and "Traceback" not in r.output, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith(("warning:", "progress:"))]
    assert len(lines) == 1 and lines[0].startswith(("error:", "Usage", "Error")) or "Invalid value" in r.stderr, \
        r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


@pytest.fixture()
def folder(tmp_path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(5):
        synth_photo(i).save(d / f"p{i}.jpg", quality=90)
    return d


@pytest.mark.subprocess
def test_huge_k_rerank_k_and_qe_stay_within_memory(folder, tmp_path):
    """-k 10^9 over 5 images: before the fix, 8 GB+ padding arrays. The child runs with a 6 GB
    address-space limit, so a regression fails here instead of taking the machine down."""
    ix = tmp_path / "ix"
    _index(folder, ix)
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


def test_non_utf8_file_name_is_indexed_losslessly(folder, tmp_path):
    shutil.copy(folder / "p2.jpg", folder / BAD_NAME)
    ix = tmp_path / "ix"
    r = _index(folder, ix)
    assert "6 images indexed" in r.stdout and "skipped 0" in r.stdout
    assert "unchanged 6" in _index(folder, ix).stdout  # and every later run goes on
    js = json.loads(_query(ix, str(folder / "p2.jpg"), "--json", "-k", "6").stdout)
    assert str(folder / BAD_NAME) in [h["path"] for h in js]  # JSON escapes the bytes; they come back exact
    raw = _query(ix, str(folder / "p2.jpg"), "--paths", "-k", "6").stdout_bytes
    assert os.fsencode(folder / BAD_NAME) in raw.split(b"\n")  # the file system's own bytes, for scripts
    table = _query(ix, str(folder / BAD_NAME), "-k", "2")
    assert table.exit_code == 0 and "bad\\xff\\xfe.jpg" in table.stdout  # readable, never a crash
    gone = runner.invoke(app, ["remove", str(folder / BAD_NAME), "--index", str(ix)])
    assert gone.exit_code == 0 and "removed 1" in gone.stdout


def test_paths_that_are_files_and_bad_values_end_in_one_line(folder, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    _one_line_error(runner.invoke(app, ["index", str(folder), "--index", str(a_file), "--model", "test_tiny"]),
                    "is a file")
    _one_line_error(_query(a_file, str(folder / "p0.jpg")), "is a file")
    ix = tmp_path / "ix"
    _index(folder, ix)
    _one_line_error(_query(ix, str(folder / "p0.jpg"), "--out", str(a_file)), "is a file")
    _one_line_error(runner.invoke(app, ["index", str(folder), "--index", str(tmp_path / "i2"), "--model",
                                        "test_tiny", "--size", "100000"]), "4096")
    _one_line_error(runner.invoke(app, ["extract", str(folder), "-o", str(tmp_path / "f.npz"), "--model",
                                        "test_tiny", "--size", "100000"]), "4096")
    for device, said in (("gpu", "unknown device 'gpu'"), ("cuda", "no CUDA device")):
        if device == "cuda" and __import__("torch").cuda.is_available():
            continue
        _one_line_error(runner.invoke(app, ["index", str(folder), "--index", str(tmp_path / "i3"), "--model",
                                            "test_tiny", "--device", device]), said)
        assert not (tmp_path / "i3").exists()  # refused before anything was created
    _one_line_error(_query(ix, str(folder / "p0.jpg"), "--bbox", "nan,0,inf,100"), "finite")
    _one_line_error(runner.invoke(app, ["index", str(folder), "--index", str(ix), "--workers", "-1"]), "--workers")
    _one_line_error(runner.invoke(app, ["extract", str(folder), "-o", str(tmp_path / "f.npz"), "--workers", "-1"]),
                    "--workers")


def test_no_weights_fails_before_creating_anything(folder, tmp_path, monkeypatch):
    from retrieval.backbone import model, weights
    from retrieval.errors import WeightsError

    def offline(arch, **kw):
        raise WeightsError(f"no {arch.name} weights: cannot download (offline)")

    def never(arch):
        raise AssertionError("a model was built before the weights were known to exist")

    monkeypatch.setattr(weights, "fetch_official", offline)
    monkeypatch.setattr(model, "_build_vit", never)
    ix = tmp_path / "new-index"
    _one_line_error(runner.invoke(app, ["index", str(folder), "--index", str(ix)]), "no dinov2_vits14 weights")
    assert not ix.exists()
    _one_line_error(runner.invoke(app, ["index", str(folder), "--index", str(ix), "--weights",
                                        str(tmp_path / "missing.pth")]), "not found")
    assert not ix.exists()


def test_mistyped_folder_creates_and_changes_no_index(folder, tmp_path):
    typo = tmp_path / "photso"
    ix = tmp_path / "new-index"
    _one_line_error(runner.invoke(app, ["index", str(typo), "--index", str(ix), "--model", "test_tiny"]),
                    f"{typo} does not exist")
    assert not ix.exists()
    old = tmp_path / "ix"
    _index(folder, old)
    before = (old / "store.sqlite").read_bytes()
    _one_line_error(runner.invoke(app, ["index", str(folder), str(typo), "--index", str(old), "--whiten-dim", "8"]),
                    f"{typo} does not exist")
    assert (old / "store.sqlite").read_bytes() == before  # its settings too: nothing was stored


def test_reranked_table_says_what_it_is_ordered_by(folder, tmp_path):
    ix = tmp_path / "ix"
    _index(folder, ix)
    r = _query(ix, str(folder / "p3.jpg"), "--rerank", "-k", "3")
    header = r.stdout.splitlines()[0].split()
    assert header == ["rank", "inliers", "similarity", "path"]
    assert "ordered by verified patch matches" in r.stdout
    assert _query(ix, str(folder / "p3.jpg"), "-k", "3").stdout.splitlines()[0].split() == \
        ["rank", "similarity", "path"]


def test_deleted_files_are_left_out_and_the_list_filled(folder, tmp_path):
    ix = tmp_path / "ix"
    _index(folder, ix)
    query = tmp_path / "q.jpg"
    shutil.copy(folder / "p1.jpg", query)
    (folder / "p1.jpg").unlink()
    (folder / "p4.jpg").unlink()
    for extra in ([], ["--rerank"]):
        r = _query(ix, str(query), "--json", "-k", "3", *extra)
        paths = [h["path"] for h in json.loads(r.stdout)]
        assert len(paths) == 3 and all(Path(p).exists() for p in paths)  # filled from further down
        assert "left out 2 result(s) whose files are gone" in r.stderr and "retrieve index" in r.stderr
    r = _query(ix, str(query), "--json", "-k", "10")
    assert len(json.loads(r.stdout)) == 3  # all that exist


def test_maps_folder_keeps_no_stale_results(folder, tmp_path):
    ix, out = tmp_path / "ix", tmp_path / "maps"
    _index(folder, ix)
    assert _query(ix, str(folder / "p0.jpg"), "-k", "4", "--out", str(out)).exit_code == 0
    assert (out / "004_matches.png").exists()
    mine = out / "notes.txt"
    mine.write_text("the user's own file")
    assert _query(ix, str(folder / "p0.jpg"), "-k", "2", "--out", str(out)).exit_code == 0
    assert sorted(p.name for p in out.glob("0*_*.png")) == [f"00{r}_{k}.png" for r in (1, 2)
                                                           for k in ("heatmap", "matches", "pca")]
    assert mine.read_text() == "the user's own file"


def test_refused_files_are_reported_as_still_refused(folder, tmp_path):
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "IMG_0001.NEF").write_bytes(b"\x00" * 64)
    ix = tmp_path / "ix"
    first = _index(folder, ix)
    assert "skipped 2" in first.stdout
    assert "camera RAW files (.nef) are not decoded" in first.stderr
    again = _index(folder, ix)
    assert "unchanged 5, skipped 0, still refused 2" in again.stdout
    info = json.loads(runner.invoke(app, ["info", "--json", "--index", str(ix)]).stdout)
    assert {Path(s["path"]).name for s in info["skipped"]} == {"empty.jpg", "IMG_0001.NEF"}


def test_remove_sticks_until_the_path_is_indexed_again(folder, tmp_path):
    ix = tmp_path / "ix"
    sub = folder / "sub"
    sub.mkdir()
    synth_photo(9).save(sub / "s.jpg")
    _index(folder, ix)
    _one_line_error(runner.invoke(app, ["remove", str(tmp_path / "nowhere.jpg"), "--index", str(ix)]),
                    "nothing in the index")
    r = runner.invoke(app, ["remove", str(sub), str(folder / "p0.jpg"), "--index", str(ix)])
    assert r.exit_code == 0 and "removed 2" in r.stdout
    assert "4 images indexed" in _index(folder, ix).stdout  # re-indexing the parent does not undo it
    info = runner.invoke(app, ["info", "--index", str(ix)]).stdout
    assert f"excluded     {sub}" in info and f"excluded     {folder / 'p0.jpg'}" in info
    assert "added 1" in _index(sub, ix).stdout  # naming it takes it back
    assert "5 images indexed" in _index(folder, ix).stdout
    assert "5 images indexed" in _index(folder, ix, "--exclude", "p0.jpg").stdout  # still out, as a glob now
    assert "4 images indexed" in _index(folder, ix, "--exclude", "sub").stdout
    assert "removed 0" in _index(folder, ix).stdout and "excluded     sub (glob" in \
        runner.invoke(app, ["info", "--index", str(ix)]).stdout
    assert "6 images indexed" in _index(folder, ix, "--clear-excludes").stdout


def test_log_lines_are_never_wrapped_when_piped(folder, tmp_path):
    (folder / ("x" * 120 + ".jpg")).write_bytes(b"")
    r = _index(folder, tmp_path / "ix")
    lines = [line for line in r.stderr.splitlines() if "x" * 120 in line]
    assert len(lines) == 1 and lines[0].startswith("warning: skipped ") and "empty file" in lines[0]


def test_rate_is_an_average_not_a_burst():
    from rich.progress import Progress

    from retrieval.cli import _rate

    with Progress(disable=True) as bar:
        task = bar.add_task("x", total=100)
        bar.advance(task, 50)  # a whole batch lands at once, right after the start
        assert _rate(bar.tasks[0]) == ""


def test_a_long_job_reports_progress_when_stderr_is_not_a_terminal(folder, tmp_path, monkeypatch):
    """In a log file Rich draws no bar: plain `progress:` lines (count, share, rate, ETA) stand in
    for it, every PROGRESS_EVERY seconds (0 here: every batch) and once at the end."""
    cli_app = importlib.import_module("retrieval.cli.app")  # the module (the package's `app` is the Typer)
    monkeypatch.setattr(cli_app, "PROGRESS_EVERY", 0.0)
    said = _index(folder, tmp_path / "ix", "--batch", "2").stderr.splitlines()
    assert "" not in said  # no blank line where a bar would have been
    lines = [x for x in said if x.startswith("progress:")]
    assert lines and lines[-1].startswith("progress: indexing 5/5 (100.0%)"), lines
    assert all(re.fullmatch(r"progress: indexing \d/5 \(\d+\.\d%\)(, [\d.]+ img/s, ETA \d+:\d\d:\d\d)?", x)
               for x in lines), lines
    assert sum("5/5" in x for x in lines) == 1  # the end is said once
    monkeypatch.setattr(cli_app, "PROGRESS_EVERY", 3600.0)
    (folder / "p9.jpg").write_bytes((folder / "p0.jpg").read_bytes()[:-1] + b"x")
    lines = [x for x in _index(folder, tmp_path / "ix").stderr.splitlines() if x.startswith("progress:")]
    assert lines == [lines[-1]] and lines[0].startswith("progress: indexing 1/1 (100.0%)")  # only the end


def test_eta_is_at_the_average_rate():
    from rich.progress import Progress

    from retrieval.cli.app import _eta

    with Progress(disable=True) as bar:
        task = bar.add_task("x", total=1000)
        bar.update(task, completed=100)
        t = bar.tasks[0]
        assert _eta(t) == ""  # no rate yet
        t.start_time -= 10.0  # 100 done in 10 s: 900 left take 90 s
        assert _eta(t) == "ETA 0:01:30"
        t.start_time -= 3590.0  # 100 in an hour: 9 hours left
        assert _eta(t) == "ETA 9:00:00"


@pytest.mark.parametrize("gnd,said", [
    ({"imlist": ["a"], "qimlist": ["q"], "gnd": "oops"}, "gnd must be a list"),
    ({"imlist": 5, "qimlist": ["q"], "gnd": [{}]}, "imlist must be a list"),
    ({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [3], "hard": [], "junk": []}]}, "outside 0..0"),
    ({"imlist": ["a"], "qimlist": ["q"], "gnd": [{"easy": [0], "bbx": [5, 5, 1, 1]}]}, "x2 > x1"),
])
def test_malformed_revisited_ground_truth(tmp_path, gnd, said):
    root = tmp_path / "mine"
    root.mkdir()
    with open(root / "gnd_mine.pkl", "wb") as f:
        pickle.dump(gnd, f)
    _one_line_error(runner.invoke(app, ["eval", "mine", "--data", str(tmp_path), "--model", "test_tiny"]),
                    "gnd_mine.pkl", said)


@pytest.mark.parametrize("data,said", [
    ({"database": ["a.jpg"], "queries": [1, 2]}, "queries[0] must be an object"),
    ({"database": "img00.jpg", "queries": []}, '"database" must be a list'),
    ({"database": ["a.jpg"], "queries": [{"image": "a.jpg", "bbox": [0, 0, "x", 1]}]}, "bbox"),
    ([1, 2], "must be an object"),
    ({"database": ["a.jpg"], "queries": [{"image": "q.jpg", "positives": []}]}, 'no query lists any "positives"'),
])
def test_malformed_json_ground_truth(tmp_path, data, said):
    gt = tmp_path / "mine.json"
    gt.write_text(json.dumps(data))
    _one_line_error(runner.invoke(app, ["eval", str(gt), "--model", "test_tiny"]), "mine.json", said)


def test_a_ground_truth_box_outside_its_image_names_the_query_to_correct(folder, tmp_path):
    gt = tmp_path / "mine.json"
    gt.write_text(json.dumps({"database": [f"photos/p{i}.jpg" for i in range(1, 5)],
                              "queries": [{"image": "photos/p0.jpg", "bbox": [5000, 5000, 6000, 6000],
                                           "positives": ["photos/p1.jpg"]}]}))
    r = runner.invoke(app, ["eval", str(gt), "--model", "test_tiny", "--size", "112", "--index", str(tmp_path / "ix")])
    _one_line_error(r, "p0.jpg", "correct query 0's box in the mine ground truth")
    assert "--bbox" not in r.stderr


def test_several_queries_in_one_call(folder, tmp_path):
    ix = tmp_path / "ix"
    _index(folder, ix)
    files = [str(folder / f"p{i}.jpg") for i in (0, 3)]
    both = json.loads(_query(ix, *files, "--json", "-k", "2").stdout)
    assert [b["query"] for b in both] == files
    for q, b in zip(files, both):
        alone = json.loads(_query(ix, q, "--json", "-k", "2").stdout)
        assert [h["path"] for h in b["hits"]] == [h["path"] for h in alone]
        assert [h["score"] for h in b["hits"]] == pytest.approx([h["score"] for h in alone], abs=1e-4)
    table = _query(ix, *files, "-k", "1")
    assert table.exit_code == 0 and table.stdout.count("query ") == 2
    _one_line_error(_query(ix, *files, "--bbox", "0,0,10,10"), "one")


def test_bad_values_exit_2_and_bugs_are_not_dressed_as_bad_input(folder, tmp_path, monkeypatch):
    ix = tmp_path / "ix"
    _index(folder, ix)
    r = _query(ix, str(folder / "p0.jpg"), "-k", "0")
    assert r.exit_code == 2 and "-k and --rerank-k must be at least 1" in r.stderr
    r = runner.invoke(app, ["index", str(folder), "--index", str(tmp_path / "i2"), "--model", "test_tiny",
                            "--pooling", "max"])
    assert r.exit_code == 2 and "unknown pooling 'max'" in r.stderr

    from retrieval.engine.index import Index

    def broken(self):
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(Index, "info", broken)
    r = runner.invoke(app, ["info", "--index", str(ix)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "unexpected ZeroDivisionError: a bug deep inside. This is a bug, not your input" in r.stderr
    r = runner.invoke(app, ["-v", "info", "--index", str(ix)])
    assert r.exit_code == 1 and isinstance(r.exception, ZeroDivisionError)  # -v: the whole traceback


def test_an_emptied_root_is_refused_not_wiped(folder, tmp_path):
    """A drive not mounted leaves an empty mount point: indexing it again must not delete every
    row it had. A root that still holds images loses only the files that went; an exclusion that
    leaves nothing is the user's wish and is applied."""
    ix, mount = tmp_path / "ix", tmp_path / "mnt" / "drive"
    mount.parent.mkdir()
    shutil.copytree(folder, mount)
    _index(mount, ix)
    away = tmp_path / "unmounted"
    mount.rename(away)
    mount.mkdir()  # the bare mount point
    r = runner.invoke(app, ["index", str(mount), "--index", str(ix), "--model", "test_tiny", "--size", "112"])
    _one_line_error(r, str(mount), "holds no image files now", "has 5 from it", "retrieve remove")
    assert "5 indexed, 0 skipped" in runner.invoke(app, ["info", "--index", str(ix)]).stdout
    shutil.rmtree(mount)
    away.rename(mount)
    assert "unchanged 5" in _index(mount, ix).stdout
    (mount / "p0.jpg").unlink()
    assert "removed 1" in _index(mount, ix).stdout  # files that went are still forgotten
    assert "removed 4" in _index(mount, ix, "--exclude", "*.jpg").stdout
    _index(mount, ix, "--clear-excludes")
    shutil.rmtree(mount)
    mount.mkdir()
    r = runner.invoke(app, ["remove", str(mount), "--index", str(ix)])  # the fix the error names
    assert r.exit_code == 0 and "removed 4" in r.stdout
    assert "0 images indexed" in _index(mount, ix).stdout


def test_a_folder_reached_through_a_link_is_stored_once(folder, tmp_path):
    """Roots are resolved: the same photos indexed by their folder's name and through a symlink
    are one set of rows, under the real path; `remove` through the link finds them."""
    ix, link = tmp_path / "ix", tmp_path / "photolink"
    link.symlink_to(folder)
    _index(folder, ix)
    assert "unchanged 5" in _index(link, ix).stdout
    r = runner.invoke(app, ["index", str(folder), str(link), "--index", str(ix), "--model", "test_tiny",
                            "--size", "112", "--workers", "0"])
    assert r.exit_code == 0 and "5 images indexed" in r.stdout and "removed 0" in r.stdout
    hits = json.loads(_query(ix, str(folder / "p0.jpg"), "--json", "-k", "10").stdout)
    assert sorted(h["path"] for h in hits) == sorted(str(folder.resolve() / f"p{i}.jpg") for i in range(5))
    r = runner.invoke(app, ["remove", str(link), "--index", str(ix)])
    assert r.exit_code == 0 and "removed 5" in r.stdout


@pytest.mark.subprocess
def test_output_cut_short_by_the_reader_ends_quietly(tmp_path):
    """`retrieve ... | head`: the pipe closes under a long output; no error line, no traceback at
    exit, and SIGPIPE's status (141) as shell tools give."""
    code = textwrap.dedent("""
        import typer
        from retrieval.cli.app import _errors
        @_errors
        def long():
            for i in range(200000):
                print("row", i)
        try:
            long()
        except typer.Exit as e:
            raise SystemExit(e.exit_code)
    """)
    r = subprocess.run(f"{sys.executable} -c '{code}' | head -n 1; exit ${{PIPESTATUS[0]}}", shell=True,
                       executable="/bin/bash", capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (141, "row 0\n", "")


def test_odd_file_names_print_as_they_are(folder, tmp_path):
    """Names are text, never rich markup or emoji codes; tabs and line breaks are shown escaped,
    as odd bytes are, so each result stays one line that names its file."""
    odd = [folder / "a[" / "b]c.jpg", folder / "[bold]*?.jpg", folder / ":smile:.jpg", folder / "tab\there.jpg",
           folder / "line\nbreak.jpg", folder / "esc\x1b[31mred.jpg"]
    for i, p in enumerate(odd):
        p.parent.mkdir(exist_ok=True)
        synth_photo(20 + i).save(p, quality=90)
    ix = tmp_path / "ix"
    _index(folder, ix)

    def written(p: Path) -> str:
        return str(p).replace("\t", "\\t").replace("\n", "\\n").replace("\x1b", "\\x1b")

    for p in odd:
        r = _query(ix, str(p), "-k", "11")
        assert r.exit_code == 0, r.output
        rows = r.stdout.splitlines()[1:]
        assert len(rows) == 11 and rows[0].split()[-1] == written(p)
        assert sorted(row.split(maxsplit=2)[2].strip() for row in rows) == \
            sorted([written(q) for q in odd] + [str(folder / f"p{i}.jpg") for i in range(5)])
    both = _query(ix, str(odd[0]), str(odd[1]), "-k", "1")
    assert [x for x in both.stdout.splitlines() if x.startswith("query ")] == [f"query {odd[0]}", f"query {odd[1]}"]
    _one_line_error(_query(ix, str(folder / ":smile:x[/b].jpg")), ":smile:x[/b].jpg")
    maps = _query(ix, str(odd[2]), "-k", "1", "--out", str(tmp_path / "maps[/i]"))
    assert maps.exit_code == 0 and f"maps: {tmp_path / 'maps[/i]' / 'index.html'}" in maps.stderr
    assert runner.invoke(app, ["remove", str(odd[1]), "--index", str(ix)]).exit_code == 0
    info = runner.invoke(app, ["info", "--index", str(ix)]).stdout
    assert f"`retrieve index '{odd[1]}'` takes it back" in info  # a command that works when pasted
    gt = folder / "mine [b] :smile:.json"
    gt.write_text(json.dumps({"database": [f"p{i}.jpg" for i in range(5)],
                              "queries": [{"image": "p0.jpg", "positives": ["p0.jpg"]}]}))
    r = runner.invoke(app, ["eval", str(gt), "--model", "test_tiny", "--size", "112", "--workers", "0"],
                      env={"RETRIEVAL_INDEX": str(tmp_path / "default")})
    assert r.exit_code == 0 and r.stdout.startswith("mine [b] :smile:: 1 queries, 5 images"), r.output


@pytest.mark.subprocess
def test_a_fifo_or_device_is_refused_not_read(folder, tmp_path):
    """A FIFO or /dev/zero as a query: one line naming it, at once. Before, the FIFO waited for a
    writer forever and /dev/zero was read until memory ran out; the child runs with a time limit
    and a 6 GB address-space limit, so a regression fails here instead of hanging."""
    fifo = folder / "pipe.jpg"
    os.mkfifo(fifo)
    ix = tmp_path / "ix"
    r = _index(folder, ix)
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


def test_out_naming_a_folder_is_refused_before_any_work(folder, tmp_path, monkeypatch):
    """extract, pca, match and eval's outputs: one line naming the folder, before a model is loaded
    (a long run never ends in it), the folder left as it was; atomic_write refuses the same way."""
    from retrieval import engine
    from retrieval.engine.files import atomic_write
    from retrieval.errors import RetrievalError

    def never(*a, **k):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr(engine, "open_backbone", never)
    before = sorted(folder.iterdir())
    tiny = ["--model", "test_tiny", "--size", "112"]
    gt = tmp_path / "mine.json"
    gt.write_text(json.dumps({"database": ["p0.jpg"], "queries": [{"image": "p0.jpg", "positives": ["p0.jpg"]}]}))
    for args, option in ((["extract", str(folder / "p0.jpg"), *tiny, "--out", str(folder)], "--out"),
                         (["pca", str(folder / "p0.jpg"), *tiny, "-o", str(folder)], "--out"),
                         (["match", str(folder / "p0.jpg"), str(folder / "p1.jpg"), *tiny, "--out", str(folder)],
                          "--out"),
                         (["eval", str(gt), *tiny, "--json-out", str(folder)], "--json-out"),
                         (["eval", str(gt), *tiny, "--save-ranks", str(folder)], "--save-ranks")):
        r = runner.invoke(app, args)
        _one_line_error(r, f"error: {option} {folder} is a folder; pass a file name")
        assert r.exit_code == 1
    assert sorted(folder.iterdir()) == before
    with pytest.raises(RetrievalError) as refused:
        atomic_write(folder, lambda f: f.write(b"x"))
    assert str(refused.value).startswith(f"{folder} is a folder; pass a file name")
    assert sorted(folder.iterdir()) == before


def test_a_file_refused_while_indexing_is_warned_with_its_fix(folder, tmp_path):
    (folder / "raw.nef").write_bytes(b"II*\x00" + bytes(100))
    r = _index(folder, tmp_path / "ix")
    said = [x for x in r.stderr.splitlines() if "raw.nef" in x]
    assert said == [f"warning: skipped {folder / 'raw.nef'}: camera RAW files (.nef) are not decoded; "
                    f"fix: index the JPEG or TIFF that your raw converter exports from it"], r.stderr
    info = runner.invoke(app, ["info", "--index", str(tmp_path / "ix")]).stdout
    assert "camera RAW files (.nef) are not decoded" in info  # the store keeps the reason


def test_on_a_terminal_a_warning_shows_its_level_once(monkeypatch):
    """rich draws the level itself: the message it is given is the message alone (logging's
    basicConfig would otherwise format it as `WARNING:logger:message`)."""
    import logging

    cli_app = importlib.import_module("retrieval.cli.app")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        cli_app.main(verbose=False, version=False)
        handler = root.handlers[0]
        record = logging.LogRecord("retrieval.x", logging.WARNING, __file__, 1, "random weights", None, None)
        assert type(handler).__name__ == "RichHandler" and handler.format(record) == "random weights"
    finally:
        root.handlers[:] = saved
        root.setLevel(level)
