"""Issue 27, item 11: the summary line says `whitened` only when a whitening was fitted in that run."""

from __future__ import annotations

from .helpers import make_folder, run


def test_summary_says_whitened_only_when_fitted(tmp_path):
    """An unchanged rerun refits nothing, and its summary line must not say `whitened`."""
    photos = tmp_path / "photos"
    make_folder(photos, range(70), size=(64, 48))
    preset = tmp_path / "few.toml"
    preset.write_text("[whitening]\nmin_images = 10\n")
    args = ["index", str(photos), "--index", str(tmp_path / "ix"), "--model", "test_tiny", "--size", "56", "--workers",
            "0", "--pooling", "cls", "--config", str(preset)]
    first = run(*args)
    assert first.exit_code == 0, first.output
    assert "added 70" in first.stdout and first.stdout.rstrip().endswith("| whitened")
    again = run(*args)
    assert again.exit_code == 0, again.output
    assert "unchanged 70" in again.stdout and not again.stdout.rstrip().endswith("whitened")
    refit = run(*args, "--refit-whitening")
    assert refit.exit_code == 0, refit.output
    assert refit.stdout.rstrip().endswith("| whitened")
