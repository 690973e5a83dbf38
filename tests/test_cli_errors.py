"""One-line errors through the CLI: paths that are files, bad values, missing weights or folders,
outputs that name a folder; bad input is refused before anything is created, and bugs stay bugs."""

from __future__ import annotations

import json

import pytest

from retrieval.cli import app

from .helpers import index_tiny, one_line_error, query_index, runner


def test_paths_that_are_files_and_bad_values_end_in_one_line(folder, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    one_line_error(runner.invoke(app, ["index", str(folder), "--index", str(a_file), "--model", "test_tiny"]),
                   "is a file")
    one_line_error(query_index(a_file, str(folder / "p0.jpg")), "is a file")
    ix = tmp_path / "ix"
    index_tiny(folder, ix)
    one_line_error(query_index(ix, str(folder / "p0.jpg"), "--out", str(a_file)), "is a file")
    one_line_error(runner.invoke(app, ["index", str(folder), "--index", str(tmp_path / "i2"), "--model",
                                       "test_tiny", "--size", "100000"]), "4096")
    one_line_error(runner.invoke(app, ["extract", str(folder), "-o", str(tmp_path / "f.npz"), "--model",
                                       "test_tiny", "--size", "100000"]), "4096")
    for device, said in (("gpu", "unknown device 'gpu'"), ("cuda", "no CUDA device")):
        if device == "cuda" and __import__("torch").cuda.is_available():
            continue
        one_line_error(runner.invoke(app, ["index", str(folder), "--index", str(tmp_path / "i3"), "--model",
                                           "test_tiny", "--device", device]), said)
        assert not (tmp_path / "i3").exists()  # refused before anything was created
    one_line_error(query_index(ix, str(folder / "p0.jpg"), "--bbox", "nan,0,inf,100"), "finite")
    one_line_error(runner.invoke(app, ["index", str(folder), "--index", str(ix), "--workers", "-1"]), "--workers")
    one_line_error(runner.invoke(app, ["extract", str(folder), "-o", str(tmp_path / "f.npz"), "--workers", "-1"]),
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
    one_line_error(runner.invoke(app, ["index", str(folder), "--index", str(ix)]), "no dinov2_vits14 weights")
    assert not ix.exists()
    one_line_error(runner.invoke(app, ["index", str(folder), "--index", str(ix), "--weights",
                                       str(tmp_path / "missing.pth")]), "not found")
    assert not ix.exists()


def test_mistyped_folder_creates_and_changes_no_index(folder, tmp_path):
    typo = tmp_path / "photso"
    ix = tmp_path / "new-index"
    one_line_error(runner.invoke(app, ["index", str(typo), "--index", str(ix), "--model", "test_tiny"]),
                   f"{typo} does not exist")
    assert not ix.exists()
    old = tmp_path / "ix"
    index_tiny(folder, old)
    before = (old / "store.sqlite").read_bytes()
    one_line_error(runner.invoke(app, ["index", str(folder), str(typo), "--index", str(old), "--whiten-dim", "8"]),
                   f"{typo} does not exist")
    assert (old / "store.sqlite").read_bytes() == before  # its settings too: nothing was stored


def test_a_folder_that_links_to_nowhere_creates_no_index(tmp_path):
    link = tmp_path / "card"
    link.symlink_to(tmp_path / "unmounted")
    ix = tmp_path / "new-index"
    one_line_error(runner.invoke(app, ["index", str(link), "--index", str(ix), "--model", "test_tiny"]),
                   f"{link} does not exist")
    assert not ix.exists()


def test_bad_values_exit_2_and_bugs_are_not_dressed_as_bad_input(folder, tmp_path, monkeypatch):
    ix = tmp_path / "ix"
    index_tiny(folder, ix)
    r = query_index(ix, str(folder / "p0.jpg"), "-k", "0")
    assert r.exit_code == 2 and "k (-k) and rerank_k (--rerank-k) must be at least 1" in r.stderr
    for alpha in ("nan", "-1", "0", "inf"):  # nan printed [] and a negative alpha was taken (issue 26)
        r = query_index(ix, str(folder / "p0.jpg"), "--qe", "2", "--qe-alpha", alpha)
        assert r.exit_code == 2 and "qe_alpha (--qe-alpha) must be a finite number above 0" in r.stderr, (alpha, r.output)
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
        one_line_error(r, f"error: {option} {folder} is a folder; pass a file name")
        assert r.exit_code == 1
    assert sorted(folder.iterdir()) == before
    with pytest.raises(RetrievalError) as refused:
        atomic_write(folder, lambda f: f.write(b"x"))
    assert str(refused.value).startswith(f"{folder} is a folder; pass a file name")
    assert sorted(folder.iterdir()) == before
