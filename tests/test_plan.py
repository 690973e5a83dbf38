"""engine.plan.plan_update: what an update must do, from the files found and the rows stored."""

from __future__ import annotations

import pytest

from retrieval.engine.plan import plan_update
from retrieval.images import load_image
from retrieval.errors import BadImageError
from retrieval.store import FileRow, Touch
from retrieval.types import ImageRef


def _plan(error: str, *, retry: bool = False):
    ref = ImageRef("/p/a.jpg", 10, 5)
    row = FileRow(1, "/p/a.jpg", 10, 5, None, "skipped", error)
    return plan_update([ref], {ref.path: row}, retry_skipped=retry, sha256_of=lambda p: None)


def test_a_file_refused_for_its_content_waits_for_a_change_or_retry_skipped():
    plan = _plan("not an image (cannot identify image file)")
    assert (plan.embed, plan.still_refused) == ([], 1)
    assert _plan("not an image", retry=True).embed == ["/p/a.jpg"]


def test_a_file_that_could_not_be_read_is_tried_again_each_run(tmp_path):
    """Permissions and I/O errors are the environment's, and a chmod leaves the mtime alone: the
    reader's own refusal text for an unreadable file is what the plan recognises."""
    with pytest.raises(BadImageError) as refused:
        load_image(tmp_path / "gone.jpg")
    plan = _plan(refused.value.reason)
    assert (plan.embed, plan.still_refused) == (["/p/a.jpg"], 0)


# --- a file's identity: size, mtime, ctime and inode (issue 27, item 4) ----------------------------
def _ok_row(**stat):
    base = {"nbytes": 10, "mtime_ns": 5, "ctime_ns": 7, "inode": 100}
    s = {**base, **stat}
    return FileRow(1, "/p/a.jpg", s["nbytes"], s["mtime_ns"], "h-old", "ok", None, s["ctime_ns"], s["inode"])


def _hashing(same: bool):
    """sha256_of that gives the stored hash ("h-old") when `same`, and records the files it read."""
    read: list[str] = []

    def sha256_of(path):
        read.append(path)
        return "h-old" if same else "h-new"

    return sha256_of, read


@pytest.mark.parametrize("changed", [{"ctime_ns": 8}, {"inode": 101}])
def test_a_new_ctime_or_inode_with_the_same_size_and_mtime_is_hashed(changed):
    """`cp b01 b00; touch -d <old mtime> b00` keeps size and mtime: only the ctime (or, for a file
    replaced by a rename, the inode) tells. Other bytes are embedded again."""
    ref = ImageRef("/p/a.jpg", 10, 5, **{"ctime_ns": 7, "inode": 100, **changed})
    sha256_of, read = _hashing(False)
    plan = plan_update([ref], {ref.path: _ok_row()}, retry_skipped=False, sha256_of=sha256_of)
    assert read == ["/p/a.jpg"] and plan.embed == ["/p/a.jpg"]
    assert (plan.hashed, plan.changed, plan.unchanged, plan.touches) == (1, 1, 0, [])


def test_a_new_ctime_with_the_same_bytes_only_updates_the_stored_stat():
    """chmod, a new hard link or a restore change the ctime or inode: one read, no model work."""
    ref = ImageRef("/p/a.jpg", 10, 5, 9, 200)
    sha256_of, read = _hashing(True)
    plan = plan_update([ref], {ref.path: _ok_row()}, retry_skipped=False, sha256_of=sha256_of)
    assert read == ["/p/a.jpg"] and plan.embed == []
    assert (plan.hashed, plan.changed, plan.unchanged) == (1, 0, 1)
    assert plan.touches == [Touch(1, 10, 5, 9, 200)]


def test_an_identical_stat_reads_nothing():
    ref = ImageRef("/p/a.jpg", 10, 5, 7, 100)
    sha256_of, read = _hashing(False)
    plan = plan_update([ref], {ref.path: _ok_row()}, retry_skipped=False, sha256_of=sha256_of)
    assert (read, plan.embed, plan.touches, plan.unchanged) == ([], [], [], 1)


def test_a_row_from_schema_2_gets_its_ctime_and_inode_recorded_without_a_read():
    """Rows migrated from schema 2 have no ctime or inode: recorded as found (docs/index.md says
    why, and that `--verify` is the way to check their bytes)."""
    ref = ImageRef("/p/a.jpg", 10, 5, 7, 100)
    sha256_of, read = _hashing(False)
    plan = plan_update([ref], {ref.path: _ok_row(ctime_ns=None, inode=None)}, retry_skipped=False,
                       sha256_of=sha256_of)
    assert (read, plan.embed, plan.unchanged) == ([], [], 1)
    assert plan.touches == [Touch(1, 10, 5, 7, 100)]


def test_verify_hashes_every_indexed_file_and_reports_progress():
    refs = [ImageRef(f"/p/{n}.jpg", 10, 5, 7, i) for i, n in enumerate("abc")]
    rows = {r.path: FileRow(i, r.path, 10, 5, f"h{i}", "ok", None, 7, i) for i, r in enumerate(refs)}
    rows["/p/c.jpg"] = FileRow(2, "/p/c.jpg", 10, 5, None, "skipped", "not an image", 7, 2)  # no hash to compare
    progress = []
    plan = plan_update(refs, rows, retry_skipped=False, verify=True, on_hashed=lambda d, t: progress.append((d, t)),
                       sha256_of=lambda path: "h0")
    assert progress == [(1, 2), (2, 2)]
    assert (plan.hashed, plan.changed, plan.embed, plan.unchanged, plan.still_refused) == (2, 1, ["/p/b.jpg"], 1, 1)
    assert plan.touches == []  # the same bytes and the same stat: nothing to write


def test_a_stop_while_hashing_leaves_the_rest_as_it_is():
    refs = [ImageRef(f"/p/{n}.jpg", 10, 5, 8, 0) for n in "ab"]
    rows = {r.path: FileRow(i, r.path, 10, 5, "h", "ok", None, 7, 0) for i, r in enumerate(refs)}
    read: list[str] = []
    plan = plan_update(refs, rows, retry_skipped=False, should_stop=lambda: bool(read),
                       sha256_of=lambda path: read.append(path))
    assert read == ["/p/a.jpg"] and plan.stopped and plan.embed == ["/p/a.jpg"] and plan.touches == []
