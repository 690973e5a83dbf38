"""engine.plan.plan_update: what an update must do, from the files found and the rows stored."""

from __future__ import annotations

import pytest

from retrieval.engine.plan import plan_update
from retrieval.images import load_image
from retrieval.errors import BadImageError
from retrieval.store import FileRow
from retrieval.types import ImageRef


def _plan(error: str, *, retry: bool = False):
    ref = ImageRef("/p/a.jpg", 10, 5)
    row = FileRow(1, "/p/a.jpg", 10, 5, None, "skipped", error)
    return plan_update([ref], {ref.path: row}, retry_skipped=retry, same_bytes=lambda p, h: True)


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
