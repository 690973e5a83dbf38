"""The test data committed in tests/data is complete and unchanged (see tests/data/README.md)."""

from __future__ import annotations

import hashlib
import re

from .conftest import AWKWARD, DATA, GND, manifest_rows


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_awkward_images_match_their_manifest():
    rows = manifest_rows()
    assert len(rows) == 80
    for row in rows:
        path = AWKWARD / row["file"]
        assert path.is_file(), row["file"]
        assert path.stat().st_size == int(row["bytes"]) and _sha256(path) == row["sha256"], row["file"]
    extra = {p.name for p in AWKWARD.iterdir()} - {r["file"] for r in rows}
    assert extra == {"MANIFEST.tsv", "README.md", "LICENSES"}
    assert sorted(p.name for p in (AWKWARD / "LICENSES").iterdir())  # licence notices travel with the files


def test_revisitop_pickles_match_their_readme():
    table = dict(re.findall(r"\| (gnd_\w+\.pkl) \| \d+ \| ([0-9a-f]{64}) \|", (GND / "README.md").read_text()))
    assert set(table) == {"gnd_roxford5k.pkl", "gnd_rparis6k.pkl"}
    for name, digest in table.items():
        assert _sha256(GND / name) == digest, name


def test_every_data_folder_says_where_it_came_from():
    readme = (DATA / "README.md").read_text()
    for folder in sorted(p for p in DATA.iterdir() if p.is_dir()):
        assert (folder / "README.md").is_file() and f"`{folder.name}/`" in readme, folder.name
