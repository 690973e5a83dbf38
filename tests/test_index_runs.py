"""`retrieve index` run again on the same index: refused files, removed paths, an emptied root (a
drive not mounted), a folder reached through a link."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from retrieval.cli import app

from .conftest import synth_photo
from .helpers import index_tiny, one_line_error, query_index, runner


def test_refused_files_are_reported_as_still_refused(folder, tmp_path):
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "IMG_0001.NEF").write_bytes(b"\x00" * 64)
    ix = tmp_path / "ix"
    first = index_tiny(folder, ix)
    assert "skipped 2" in first.stdout
    assert "camera RAW files (.nef) are not decoded" in first.stderr
    again = index_tiny(folder, ix)
    assert "unchanged 5, skipped 0, still refused 2" in again.stdout
    info = json.loads(runner.invoke(app, ["info", "--json", "--index", str(ix)]).stdout)
    assert {Path(s["path"]).name for s in info["skipped"]} == {"empty.jpg", "IMG_0001.NEF"}


def test_a_file_refused_while_indexing_is_warned_with_its_fix(folder, tmp_path):
    (folder / "raw.nef").write_bytes(b"II*\x00" + bytes(100))
    r = index_tiny(folder, tmp_path / "ix")
    said = [x for x in r.stderr.splitlines() if "raw.nef" in x]
    assert said == [f"warning: skipped {folder / 'raw.nef'}: camera RAW files (.nef) are not decoded; "
                    f"fix: index the JPEG or TIFF that your raw converter exports from it"], r.stderr
    info = runner.invoke(app, ["info", "--index", str(tmp_path / "ix")]).stdout
    assert "camera RAW files (.nef) are not decoded" in info  # the store keeps the reason


def test_remove_sticks_until_the_path_is_indexed_again(folder, tmp_path):
    ix = tmp_path / "ix"
    sub = folder / "sub"
    sub.mkdir()
    synth_photo(9).save(sub / "s.jpg")
    index_tiny(folder, ix)
    one_line_error(runner.invoke(app, ["remove", str(tmp_path / "nowhere.jpg"), "--index", str(ix)]),
                   "nothing in the index")
    r = runner.invoke(app, ["remove", str(sub), str(folder / "p0.jpg"), "--index", str(ix)])
    assert r.exit_code == 0 and "removed 2" in r.stdout
    assert "4 images indexed" in index_tiny(folder, ix).stdout  # re-indexing the parent does not undo it
    info = runner.invoke(app, ["info", "--index", str(ix)]).stdout
    assert f"excluded     {sub}" in info and f"excluded     {folder / 'p0.jpg'}" in info
    assert "added 1" in index_tiny(sub, ix).stdout  # naming it takes it back
    assert "5 images indexed" in index_tiny(folder, ix).stdout
    assert "5 images indexed" in index_tiny(folder, ix, "--exclude", "p0.jpg").stdout  # still out, as a glob now
    assert "4 images indexed" in index_tiny(folder, ix, "--exclude", "sub").stdout
    assert "removed 0" in index_tiny(folder, ix).stdout and "excluded     sub (glob" in \
        runner.invoke(app, ["info", "--index", str(ix)]).stdout
    assert "6 images indexed" in index_tiny(folder, ix, "--clear-excludes").stdout


def test_an_emptied_root_is_refused_not_wiped(folder, tmp_path):
    """A drive not mounted leaves an empty mount point: indexing it again must not delete every
    row it had. A root that still holds images loses only the files that went; an exclusion that
    leaves nothing is the user's wish and is applied."""
    ix, mount = tmp_path / "ix", tmp_path / "mnt" / "drive"
    mount.parent.mkdir()
    shutil.copytree(folder, mount)
    index_tiny(mount, ix)
    away = tmp_path / "unmounted"
    mount.rename(away)
    mount.mkdir()  # the bare mount point
    r = runner.invoke(app, ["index", str(mount), "--index", str(ix), "--model", "test_tiny", "--size", "112"])
    one_line_error(r, str(mount), "holds no image files now", "has 5 from it", f"retrieve index {mount} --prune")
    assert "5 indexed, 0 skipped" in runner.invoke(app, ["info", "--index", str(ix)]).stdout
    shutil.rmtree(mount)
    away.rename(mount)
    assert "unchanged 5" in index_tiny(mount, ix).stdout
    (mount / "p0.jpg").unlink()
    assert "removed 1" in index_tiny(mount, ix).stdout  # files that went are still forgotten
    assert "removed 4" in index_tiny(mount, ix, "--exclude", "*.jpg").stdout
    index_tiny(mount, ix, "--clear-excludes")
    shutil.rmtree(mount)
    mount.mkdir()
    assert "removed 4" in index_tiny(mount, ix, "--prune").stdout  # the fix the error names
    assert "0 images indexed" in index_tiny(mount, ix).stdout


def test_a_folder_reached_through_a_link_is_stored_once(folder, tmp_path):
    """Roots are resolved: the same photos indexed by their folder's name and through a symlink
    are one set of rows, under the real path; `remove` through the link finds them."""
    ix, link = tmp_path / "ix", tmp_path / "photolink"
    link.symlink_to(folder)
    index_tiny(folder, ix)
    assert "unchanged 5" in index_tiny(link, ix).stdout
    r = runner.invoke(app, ["index", str(folder), str(link), "--index", str(ix), "--model", "test_tiny",
                            "--size", "112", "--workers", "0"])
    assert r.exit_code == 0 and "5 images indexed" in r.stdout and "removed 0" in r.stdout
    hits = json.loads(query_index(ix, str(folder / "p0.jpg"), "--json", "-k", "10").stdout)
    assert sorted(h["path"] for h in hits) == sorted(str(folder.resolve() / f"p{i}.jpg") for i in range(5))
    r = runner.invoke(app, ["remove", str(link), "--index", str(ix)])
    assert r.exit_code == 0 and "removed 5" in r.stdout
