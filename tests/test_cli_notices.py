"""First use of the command line (issue 25): what `retrieve` prints by default and with -v, and
errors that name only what differs."""

from __future__ import annotations

from pathlib import Path

from .conftest import synth_photo
from .helpers import TINY_ARGS, error_lines, make_folder, run


def _index(folder: Path, ix: Path, *more: str):  # noqa: ANN202
    r = run("index", str(folder), "--index", str(ix), *TINY_ARGS, *more)
    assert r.exit_code == 0, r.output
    return r


def test_a_changing_index_run_prints_no_vector_index_internals(tmp_path):
    """The vector index rebuilt after every change is routine: no `rebuilding ... store generation`
    line on a plain run (index, then index again with a file added, then remove)."""
    photos = tmp_path / "photos"
    make_folder(photos, range(4))
    ix = tmp_path / "ix"
    _index(photos, ix)
    synth_photo(99, (160, 120)).save(photos / "new.png")
    runs = [_index(photos, ix), run("remove", str(photos / "new.png"), "--index", str(ix))]
    for r in runs:
        assert r.exit_code == 0, r.output
        said = "\n".join(error_lines(r))
        assert "generation" not in said and "rebuilding" not in said, said


def test_verbose_shows_our_debug_lines_and_not_other_libraries(tmp_path):
    """-v: retrieval's own debug lines (the vector index rebuilt, the whitening), and no debug
    chatter of other libraries (Pillow's PNG chunk tags); -vv adds theirs."""
    photos = tmp_path / "photos"
    make_folder(photos, range(4))  # PNG files: Pillow logs a `STREAM b'IHDR'` debug line per chunk
    ix = tmp_path / "ix"
    _index(photos, ix)
    synth_photo(99, (160, 120)).save(photos / "new.png")
    r = _index(photos, ix, "-v")
    assert "debug: rebuilding the vector index from the store" in r.stderr, r.stderr
    assert "debug: vector index built: flat" in r.stderr, r.stderr
    assert "STREAM" not in r.stderr, r.stderr
    synth_photo(98, (160, 120)).save(photos / "newer.png")
    r = _index(photos, ix, "-vv")
    assert "STREAM" in r.stderr and "debug: vector index built" in r.stderr, r.stderr


def test_a_settings_mismatch_names_only_what_differs(tmp_path):
    """An index made at --size 112 asked for 224 and --multiscale: one line naming each difference as
    "size 112 in the index, 224 asked", not two settings dicts to compare by eye; nothing changed."""
    photos = tmp_path / "photos"
    make_folder(photos, range(2))
    ix = tmp_path / "ix"
    _index(photos, ix)
    before = (ix / "store.sqlite").read_bytes()
    args = [a if a != "112" else "224" for a in TINY_ARGS]
    r = run("index", str(photos), "--index", str(ix), *args, "--multiscale")
    lines = error_lines(r)
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert ("other settings: pooling.scales 1 in the index, 1,0.707107,1.41421 asked; size 112 in the index, 224 "
            "asked; fix:") in lines[0], lines[0]
    assert "{" not in lines[0] and "fix: keep the index's settings, or use another index folder" in lines[0]
    assert lines[0].endswith("(`--index FOLDER`)"), lines[0]
    assert (ix / "store.sqlite").read_bytes() == before
