from __future__ import annotations

import logging
import os

from retrieval.discover import discover

EXTS = {".jpg", ".png"}


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_recursive_sorted_filtered(tmp_path):
    _touch(tmp_path / "b.jpg")
    _touch(tmp_path / "a.PNG")
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / "sub" / "c.jpg", b"xyz")
    refs = list(discover([tmp_path], extensions=EXTS))
    assert [os.path.relpath(r.path, tmp_path) for r in refs] == ["a.PNG", "b.jpg", "sub/c.jpg"]
    assert all(os.path.isabs(r.path) for r in refs)
    assert refs[2].nbytes == 3 and refs[2].mtime_ns == (tmp_path / "sub" / "c.jpg").stat().st_mtime_ns


def test_hidden_and_excluded_skipped(tmp_path):
    _touch(tmp_path / ".hidden" / "a.jpg")
    _touch(tmp_path / ".b.jpg")
    _touch(tmp_path / "index" / "thumb.jpg")
    _touch(tmp_path / "ok.jpg")
    refs = list(discover([tmp_path], extensions=EXTS, exclude=[tmp_path / "index"]))
    assert [os.path.basename(r.path) for r in refs] == ["ok.jpg"]
    assert len(list(discover([tmp_path], extensions=EXTS, include_hidden=True, exclude=[tmp_path / "index"]))) == 3


def test_symlink_loops_and_duplicates(tmp_path):
    _touch(tmp_path / "d" / "a.jpg")
    os.symlink(tmp_path / "d", tmp_path / "d" / "loop")  # d/loop -> d
    os.symlink(tmp_path / "d" / "a.jpg", tmp_path / "alias.jpg")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.jpg")
    refs = list(discover([tmp_path], extensions=EXTS))
    assert len(refs) == 1  # one file, however many ways lead to it


def test_file_roots_and_missing_roots(tmp_path):
    f = _touch(tmp_path / "one.jpg")
    assert [r.path for r in discover([f, tmp_path / "missing"], extensions=EXTS)] == [str(f)]


def test_a_fifo_named_like_an_image_is_named_in_one_line_and_never_opened(tmp_path, caplog):
    os.mkfifo(tmp_path / "pipe\t1.jpg")  # opening it would wait for a writer
    _touch(tmp_path / "ok.jpg")
    with caplog.at_level(logging.WARNING, logger="retrieval.discover"):
        refs = list(discover([tmp_path], extensions=EXTS))
    assert [os.path.basename(r.path) for r in refs] == ["ok.jpg"]
    assert caplog.messages == [f"not a regular file (a FIFO), skipped: {tmp_path}/pipe\\t1.jpg"]
