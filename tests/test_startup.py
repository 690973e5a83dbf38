"""What each command imports at start-up (issue 11, "cold start"): commands without a model import
no torch; commands with one import neither timm nor torchvision (GPU JPEG decoding only) nor
scikit-learn. Checked in fresh processes, since the test process itself has imported everything.
Times are measured by scripts/bench_startup.py (docs/throughput.md), not asserted here."""

from __future__ import annotations

import json
import subprocess
import textwrap
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, synth_photo

pytestmark = pytest.mark.subprocess

HEAVY = ("torch", "timm", "torchvision", "sklearn", "scipy", "ray")  # ray: only `retrieve index --ray` imports it

_PROBE = """
import atexit, json, sys
out, heavy = sys.argv[1], set(sys.argv[2].split(","))
def _seen():
    with open(out, "w") as f:
        json.dump(sorted({m.split(".")[0] for m in sys.modules} & heavy), f)
atexit.register(_seen)
sys.argv = ["retrieve", *sys.argv[3:]]
from retrieval.cli import app
app()
"""


def _imports(tmp_path: Path, *args: str) -> set[str]:
    """The heavy top-level packages a `retrieve ARGS` process had imported when it exited."""
    out = tmp_path / "modules.json"
    out.unlink(missing_ok=True)
    r = subprocess.run([sys.executable, "-c", _PROBE, str(out), ",".join(HEAVY), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return set(json.loads(out.read_text()))


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("startup")
    (root / "photos").mkdir()
    for i in range(3):
        synth_photo(i).save(root / "photos" / f"p{i}.jpg")
    from typer.testing import CliRunner

    from retrieval.cli import app

    ix = root / "ix"
    r = CliRunner().invoke(app, ["index", str(root / "photos"), "--index", str(ix), "--model", "test_tiny"])
    assert r.exit_code == 0, r.output
    return root, ix


def test_commands_without_a_model_import_no_torch(tiny_index, tmp_path):
    root, ix = tiny_index
    for args in (["--help"], ["models"], ["info", "--index", str(ix)], ["check", "--index", str(ix)],
                 ["info", "--help"], ["remove", str(root / "photos" / "p2.jpg"), "--index", str(ix)]):
        assert _imports(tmp_path, *args) == set(), args


def test_model_commands_import_torch_only(tiny_index, tmp_path):
    root, ix = tiny_index
    assert _imports(tmp_path, "query", str(root / "photos" / "p0.jpg"), "--index", str(ix)) == {"torch"}
    one = root / "one"
    one.mkdir()
    synth_photo(9).save(one / "x.jpg")
    assert _imports(tmp_path, "index", str(one), "--index", str(root / "new"), "--model", "test_tiny") == {"torch"}


def test_ctrl_c_while_the_libraries_import_ends_quietly():
    """The `retrieve` entry point (pyproject's [project.scripts]): a Ctrl-C during the imports is
    one line and exit 130, not a traceback (an import hook stands in for the key press)."""
    code = textwrap.dedent("""
        import sys
        class Press:
            def find_spec(self, name, path=None, target=None):
                if name == "retrieval.cli":
                    raise KeyboardInterrupt
        sys.meta_path.insert(0, Press())
        from retrieval.__main__ import main
        main()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert (r.returncode, r.stderr) == (130, "interrupted\n")
    scripts = (ROOT / "pyproject.toml").read_text()
    assert 'retrieve = "retrieval.__main__:main"' in scripts


def test_every_lazy_export_resolves_to_its_home():
    """Each name that retrieval.engine imports on first use is found in the module its table names
    (a module renamed without its entries, engine/descriptors.py -> engine/embedding.py, broke them)."""
    import importlib

    import retrieval.engine as eng

    for name in eng.__all__:
        home = importlib.import_module(f"retrieval.engine.{eng._EXPORTS[name]}")
        assert getattr(eng, name) is vars(home)[name], name
