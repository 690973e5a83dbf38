"""engine/update.py, the update stage of `retrieve index`: its roots resolved once, and a whitening
refitted once when --refit-whitening meets changed files (issue 26 item 2)."""

from __future__ import annotations

import os

from retrieval.engine import derived
from retrieval.engine.files import VECTORS_FILE

from .helpers import make_folder, run


def _index(photos, ix, preset, *more: str):  # noqa: ANN001, ANN202
    r = run("index", str(photos), "--index", str(ix), "--model", "test_tiny", "--size", "56", "--workers", "0",
            "--pooling", "cls", "--config", str(preset), *more)
    assert r.exit_code == 0, r.output
    return r


def test_refit_whitening_with_changed_files_fits_and_writes_once(tmp_path, monkeypatch):
    """The update refitted the whitening (its files had changed) and then --refit-whitening
    refitted it again, reading every stored descriptor twice."""
    photos, ix = tmp_path / "photos", tmp_path / "ix"
    make_folder(photos, range(66), size=(64, 48))
    preset = tmp_path / "few.toml"
    preset.write_text("[whitening]\nmin_images = 10\n")
    _index(photos, ix, preset)
    make_folder(photos, range(66, 70), size=(64, 48))
    fits: list[int] = []
    writes: list[str] = []
    fit, write = derived._fit, derived.atomic_write
    monkeypatch.setattr(derived, "_fit", lambda x, config: fits.append(len(x)) or fit(x, config))
    monkeypatch.setattr(derived, "atomic_write", lambda out, w: writes.append(os.path.basename(out)) or write(out, w))
    r = _index(photos, ix, preset, "--refit-whitening")
    assert "added 4" in r.stdout and r.stdout.rstrip().endswith("| whitened")
    assert fits == [70]
    assert writes == [VECTORS_FILE]


def test_roots_are_resolved_once(tmp_path, monkeypatch):
    """`retrieve index` resolved its folders' real paths before creating the index, then again
    inside the update."""
    photos = tmp_path / "photos"
    make_folder(photos, range(3), size=(64, 48))
    link = tmp_path / "link"
    link.symlink_to(photos)
    resolved: list[str] = []
    realpath = os.path.realpath

    def counted(path, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        if os.fspath(path) == str(link):
            resolved.append(os.fspath(path))
        return realpath(path, *a, **k)

    monkeypatch.setattr(os.path, "realpath", counted)
    r = run("index", str(link), "--index", str(tmp_path / "ix"), "--model", "test_tiny", "--size", "56",
            "--workers", "0")
    assert r.exit_code == 0, r.output
    assert "added 3" in r.stdout
    assert resolved == [str(link)]
