"""A first user's commands through the CLI's real entry point (issue 25, "First use, again"): backup
to a folder named with a slash, the way out when files are gone, --index on a file, results of
several queries, what an empty folder, a clipped box and `match` say, and presets by name."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tomllib

import pytest

from retrieval.cli import app
from retrieval.config import config_path, load_config, preset_names

from .conftest import ROOT
from .helpers import index_tiny, one_line_error, query_index, runner


def test_several_queries_say_whose_each_path_is_and_piped_tables_are_not_padded(folder, tmp_path):
    """Item 10: `query a.jpg b.jpg --paths` ran the results together; piped tables padded rows."""
    ix = tmp_path / "ix"
    index_tiny(folder, ix)
    a, b = folder / "p0.jpg", folder / "p1.jpg"
    lines = query_index(ix, str(a), str(b), "--paths", "-k", "2").stdout_bytes.splitlines()
    assert [line.split(b"\t")[0] for line in lines] == [os.fsencode(a)] * 2 + [os.fsencode(b)] * 2
    assert lines[0] == os.fsencode(a) + b"\t" + os.fsencode(a)  # the query itself first
    assert query_index(ix, str(a), "--paths", "-k", "2").stdout_bytes.splitlines()[0] == os.fsencode(a)  # one: bare
    table = query_index(ix, str(a), str(b), "-k", "3").stdout.splitlines()
    assert len(table) > 6 and all(line == line.rstrip() for line in table), table
    both = query_index(ix, str(a), "--json", "--paths")
    assert both.exit_code == 2 and "choose one output: --json or --paths" in both.output  # usage, not a "bug"


def test_backup_to_a_name_ending_in_a_slash_makes_that_folder(folder, tmp_path):
    """Item 1: `retrieve backup ~/backups/` wrote a file named `backups`; then the docs' cron line
    `retrieve backup ~/backups/retrieval-DATE.sqlite` failed on "folder does not exist"."""
    ix = tmp_path / "ix"
    index_tiny(folder, ix)
    dest = tmp_path / "backups"
    r = runner.invoke(app, ["backup", f"{dest}/", "--index", str(ix)])
    assert r.exit_code == 0 and dest.is_dir() and (dest / "store.sqlite").is_file(), r.output
    r = runner.invoke(app, ["backup", str(dest / "retrieval-2025-01-31.sqlite"), "--index", str(ix)])
    assert r.exit_code == 0 and (dest / "retrieval-2025-01-31.sqlite").is_file(), r.output
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    one_line_error(runner.invoke(app, ["backup", f"{a_file}/", "--index", str(ix)]), "ends in a slash", "is a file")
    assert a_file.read_text() == "x"
    r = runner.invoke(app, ["backup", str(tmp_path / "nope" / "b.sqlite"), "--index", str(ix)])
    one_line_error(r, "does not exist", "end the destination in a slash")
    assert not (tmp_path / "nope").exists()


def test_a_preset_is_taken_by_name_from_any_folder(folder, tmp_path, monkeypatch):
    """Item 13: `--config fast-cpu.toml` worked only from the repository root (configs/ was not
    installed); the presets are package data and a name is enough."""
    monkeypatch.chdir(tmp_path)  # not the repository: nothing named configs/ here
    ix = tmp_path / "ix"
    index_tiny(folder, ix, "--config", "fast-cpu", "--size", "112")
    info = json.loads(runner.invoke(app, ["info", "--index", str(ix), "--json"]).stdout)
    assert info["config"]["backbone"]["name"] == "test_tiny"  # flags win over the preset
    assert load_config("fast-cpu") == load_config("fast-cpu.toml") == load_config(config_path("fast-cpu"))
    assert load_config("fast-cpu").image.size == 224
    r = runner.invoke(app, ["index", str(folder), "--index", str(tmp_path / "i2"), "--config", "fast-gpu"])
    one_line_error(r, "--config fast-gpu: no such file", "fast-cpu, gpu-large")
    assert r.exit_code == 2 and not (tmp_path / "i2").exists()
    r = runner.invoke(app, ["index", str(folder), "--index", str(tmp_path / "i2"), "--config", "configs/fast-cpu.toml"])
    one_line_error(r, "(the preset: --config fast-cpu)")


def test_the_presets_are_package_data():
    """What pyproject installs with the package covers every preset (a wheel built from it has them)."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["retrieval"]
    presets = sorted((ROOT / "retrieval" / "presets").glob("*.toml"))
    assert presets and preset_names() == [p.stem for p in presets]
    assert all(any(fnmatch.fnmatch(str(p.relative_to(ROOT / "retrieval")), g) for g in data) for p in presets)
    assert not list((ROOT / "configs").glob("*.toml"))  # one copy of each preset


_PROBE = """
import atexit, json, sys
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps("torch" in sys.modules)))
import retrieval.cli.checks as checks
checks.DRIVER_FILES = ("/nonexistent/nvidia",)  # as on a machine without a GPU, wherever the test runs
sys.argv = ["retrieve", *sys.argv[2:]]
from retrieval.__main__ import main
main()
"""


@pytest.mark.subprocess
def test_bad_input_that_needs_no_model_is_refused_before_torch_is_imported(folder, tmp_path):
    """Item 7: a missing query, a folder as a query, an unquoted path with a space, an unknown
    --model, a bad --max-upload or --device were refused only after torch and the model loaded
    (8-12 s). Each is now refused in a fresh process that never imports torch; usage errors exit 2."""
    ix = tmp_path / "ix"
    index_tiny(folder, ix)
    (folder / "my photo.jpg").write_bytes((folder / "p0.jpg").read_bytes())
    out = tmp_path / "f.npz"
    cases = [
        (["query", str(folder / "nope.jpg"), "--index", str(ix)], 1, "nope.jpg does not exist"),
        (["query", str(folder), "--index", str(ix)], 1, "is a folder; pass image files"),
        (["query", str(folder / "my"), "photo.jpg", "--index", str(ix)], 1, "quote a path that has spaces"),
        (["index", str(folder), "--index", str(tmp_path / "i2"), "--model", "nope"], 2, "unknown backbone 'nope'"),
        (["index", str(folder), "--index", str(tmp_path / "i2"), "--config", "gpu-large", "--device", "cuda"], 1,
         "no CUDA device here"),
        (["extract", str(folder / "nope.jpg"), "-o", str(out), "--model", "test_tiny"], 1, "does not exist"),
        (["pca", str(folder), "-o", str(tmp_path / "p.png"), "--model", "nope"], 2, "unknown backbone"),
        (["match", str(folder / "p0.jpg"), str(folder), "-o", str(tmp_path / "m.png")], 1, "is a folder"),
        (["query", str(folder / "p0.jpg"), "--index", str(ix), "--device", "cuda:1"], 1, "no CUDA device here"),
        (["serve", "--index", str(ix), "--max-upload", "5XB"], 2, "--max-upload"),
        (["serve", "--index", str(ix), "--device", "gpu"], 2, "unknown device 'gpu'"),
    ]
    seen = tmp_path / "torch.json"
    for args, code, said in cases:
        r = subprocess.run([sys.executable, "-c", _PROBE, str(seen), *args], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        assert (r.returncode, json.loads(seen.read_text())) == (code, False), (args, r.stderr[-2000:])
        assert said in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert not (tmp_path / "i2").exists() and not out.exists()


def test_index_naming_a_file_is_told_apart_by_command(folder, tmp_path):
    """Item 5: `retrieve query --index a.jpg` said "pass a folder (created if missing)", but only
    `retrieve index` creates one."""
    a_file = tmp_path / "a.jpg"
    a_file.write_bytes((folder / "p0.jpg").read_bytes())
    for args in (["query", str(folder / "p0.jpg")], ["info"], ["remove", str(folder)]):
        r = runner.invoke(app, [*args, "--index", str(a_file)])
        one_line_error(r, f"index folder {a_file} is a file; fix: give the folder that indexing made")
        assert "created if missing" not in r.output, args
    r = runner.invoke(app, ["index", str(folder), "--index", str(a_file), "--model", "test_tiny"])
    one_line_error(r, "is a file; fix: give a folder (created if missing)")


def test_the_gone_files_warning_and_the_emptied_folder_refusal_name_one_way_out(folder, tmp_path):
    """Item 3: the warning about gone files said to run `retrieve index` on their folder, which
    an emptied folder refuses ("a drive not mounted?"). Both now name `retrieve index FOLDER
    --prune`, and it works: on the emptied folder, and on one deleted altogether."""
    photos = tmp_path / "album"
    shutil.copytree(folder, photos)
    ix = tmp_path / "ix"
    index_tiny(photos, ix)
    query = tmp_path / "q.jpg"
    shutil.copy(photos / "p0.jpg", query)
    for p in photos.iterdir():
        p.unlink()
    r = query_index(ix, str(query), "-k", "2")
    fix = f"retrieve index {photos} --prune"
    assert r.exit_code == 0 and "left out 5 result(s) whose files are gone" in r.stderr and fix in r.stderr
    refused = runner.invoke(app, ["index", str(photos), "--index", str(ix)])
    one_line_error(refused, "holds no image files now", fix)
    assert "removed 5" in index_tiny(photos, ix, "--prune").stdout  # the way out works
    index_tiny(folder, ix)
    gone = tmp_path / "gone"
    shutil.copytree(folder, gone)
    index_tiny(gone, ix)
    shutil.rmtree(gone)
    one_line_error(runner.invoke(app, ["index", str(gone), "--index", str(ix)]), "does not exist")
    r = index_tiny(gone, ix, "--prune")  # a folder deleted for good
    assert "removed 5" in r.stdout and "5 images indexed" in r.stdout


def test_offline_without_weights_is_one_line(folder, tmp_path, monkeypatch):
    """Item 12: the no-weights error came after an `info: downloading ...` line; the download is
    announced only once the server answers."""
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # nothing cached
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    r = runner.invoke(app, ["index", str(folder), "--index", str(tmp_path / "ix")])
    one_line_error(r, "no dinov2_vits14 weights: cannot download")
    assert r.stderr.count("\n") == 1 and "downloading" not in r.stderr, r.stderr


def test_a_folder_without_images_says_why_nothing_was_added(tmp_path):
    """Item 12: indexing a folder with no images said `added 0` and no word of why."""
    empty = tmp_path / "docs"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a picture")
    r = index_tiny(empty, tmp_path / "ix")
    assert "added 0" in r.stdout and f"warning: no image files under {empty}" in r.stderr, r.stderr


def test_a_box_past_the_edge_is_said_to_be_cut(folder, tmp_path):
    """Item 12: a --bbox partly outside the image was cut to it silently."""
    ix = tmp_path / "ix"
    index_tiny(folder, ix)
    q = str(folder / "p0.jpg")  # 320 x 240
    r = query_index(ix, q, "--bbox", "100,50,400,200", "-k", "1")
    assert r.exit_code == 0 and "--bbox 100,50,400,200 reaches past the 320x240 image" in r.stderr, r.stderr
    assert "the part inside it, 100,50,320,200" in r.stderr
    r = query_index(ix, q, "--bbox", "100,50,300,200", "-k", "1")
    assert r.exit_code == 0 and "bbox" not in r.stderr, r.stderr


def test_match_names_every_file_it_writes(folder, tmp_path):
    """Item 12: `match` printed one output file but wrote three."""
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "pair.png"
    r = runner.invoke(app, ["match", str(folder / "p0.jpg"), str(folder / "p1.jpg"), "-o", str(out),
                            "--model", "test_tiny", "--size", "112"])
    assert r.exit_code == 0, r.output
    written = [tmp_path / "out" / n for n in ("pair.png", "pair_heatmap.png", "pair_pca.png")]
    assert r.stdout.rstrip().endswith(" -> " + ", ".join(map(str, written))) and all(p.is_file() for p in written)
    assert sorted((tmp_path / "out").iterdir()) == sorted(written)
