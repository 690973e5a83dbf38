"""The Python API as a first-time user meets it (issue 25): docs/api.md's example runs as written,
`info()` is typed, lazy exports show in dir(), and library errors read right to a program."""

from __future__ import annotations

import ast
import builtins
import contextlib
import dataclasses
import importlib
import io
import json
import pickle
import re
import shutil
import typing
from pathlib import Path

import pytest

from retrieval import Index, IndexInfo, RetrievalError, SearchOptions
from retrieval.errors import ArtifactMismatchError, UsageError

from .conftest import ROOT
from .helpers import TINY_ARGS, TINY_CONFIG, make_folder, run

API_DOC = ROOT / "docs" / "api.md"


def _python_blocks(doc: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", doc.read_text(), flags=re.S | re.M)


def test_the_api_page_example_runs_as_written(tmp_path, monkeypatch):
    """docs/api.md's first block, run unchanged from a copy of the repository's example photos: it
    indexes them, searches, reads info() and shows a refusal (so the page cannot drift from the API)."""
    code = _python_blocks(API_DOC)[0]
    shutil.copytree(ROOT / "examples" / "photos", tmp_path / "examples" / "photos")
    monkeypatch.chdir(tmp_path)
    # decoding in threads, as on 2 cores: this test starts no process (the fast run's rule)
    monkeypatch.setattr("retrieval.engine.forward.default_workers", lambda: 0)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(API_DOC), "exec"), {"__name__": "__main__"})
    said = out.getvalue()
    assert "added 6, updated 0, removed 0, unchanged 0, refused 0" in said, said
    ranked = [line.split()[0] for line in said.splitlines() if line.endswith(".jpg") or line.endswith(".webp")]
    assert ranked == ["1", "2", "3"], said
    assert "6 images; test_tiny at 112 px" in said, said
    assert "refused: no index at no-index-here; fix: index a folder of photos into it first" in said, said
    assert (tmp_path / "demo-index" / "store.sqlite").is_file()


def _names_bound(tree: ast.Module) -> set[str]:
    bound = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return bound


@pytest.mark.parametrize("doc", ["README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")))])
def test_python_snippets_import_what_they_use(doc):
    """Every Python block in the docs names only what it imports or defines (comments included: a
    `retrieval.engine.ray_cluster(...)` hint after importing only Index fails), and every name it
    imports from retrieval exists."""
    for code in _python_blocks(ROOT / doc):
        tree = ast.parse(code)
        bound = _names_bound(tree)
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        comments = [line.split("#", 1)[1] for line in code.splitlines() if "#" in line]
        used |= {m for c in comments for m in re.findall(r"(?<![\w.])([A-Za-z_]\w*)(?:\.\w+)+\(", c)}
        assert used <= bound, (doc, sorted(used - bound), code)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("retrieval"):
                module = importlib.import_module(node.module or "")
                for alias in node.names:
                    assert hasattr(module, alias.name), (doc, node.module, alias.name)


def test_info_is_typed_and_info_json_is_unchanged(tmp_path):
    """info() is a frozen IndexInfo (exported from retrieval); `retrieve info --json` prints the
    same JSON as before it was typed: the same keys in the same order, the same values."""
    make_folder(tmp_path / "photos", range(3))
    ix = tmp_path / "ix"
    assert run("index", str(tmp_path / "photos"), "--index", str(ix), *TINY_ARGS).exit_code == 0
    r = run("info", "--index", str(ix), "--json")
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    with Index.open(ix) as idx:
        info = idx.info()
        expected = _info_as_it_was(idx)
    assert isinstance(info, IndexInfo) and typing.get_type_hints(Index.info)["return"] is IndexInfo
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.images = 0  # type: ignore[misc]
    assert (info.images, info.vector_index.kind, info.config.image.size, info.whitening) == (3, "flat", 112, None)
    assert r.stdout == json.dumps(expected, indent=2) + "\n"
    assert list(printed) == list(expected) and printed == expected


def _info_as_it_was(idx: Index) -> dict[str, typing.Any]:
    """The dict Index.info() returned before IndexInfo (copied from it): the JSON layout to keep."""
    from retrieval.engine import derived

    w = idx.whitening()
    files = {f.name: f.stat().st_size for f in idx.path.iterdir() if f.is_file()}
    vec_meta: dict[str, typing.Any] = {"fresh": False}
    with contextlib.suppress(ArtifactMismatchError):
        head = derived.read_vectors(idx.store, idx.config, idx.path, header_only=True)
        vec_meta = {"fresh": True, "kind": head["kind"], "vectors": head["ntotal"], "dim": head["dim"]}
    return {
        "index": str(idx.path.resolve()), "images": idx.store.count("ok"),
        "skipped": [{"path": p, "reason": r} for p, r in idx.store.skipped()],
        "excluded": idx.exclusions().to_meta(), "config": json.loads(json.dumps(idx.config.to_dict())),
        "weights_id": idx.store.get_meta("weights_id"), "fingerprint": idx.fingerprint(),
        "schema_version": idx.store.schema_version, "generation": idx.store.generation,
        "whitening": None if w is None else {"fitted_on": w.fitted_on, "dim_in": w.dim_in, "dim_out": w.dim_out},
        "vector_index": vec_meta, "bytes_on_disk": sum(files.values()), "files": files,
    }


@pytest.mark.parametrize("name", ["retrieval", "retrieval.engine", "retrieval.backbone", "retrieval.serve"])
def test_dir_shows_the_lazy_exports(name):
    module = importlib.import_module(name)
    assert set(module.__all__) <= set(dir(module)), sorted(set(module.__all__) - set(dir(module)))
    if name == "retrieval":
        assert {"Index", "load_backbone", "IndexInfo", "SearchOptions", "RetrievalError"} <= set(dir(module))


def test_the_index_class_documents_itself():
    for what in (Index, Index.close, Index.info, Index.open, Index.open_or_create, Index.update, Index.search):
        assert what.__doc__ and len(what.__doc__.split()) >= 8, what
    assert "open_or_create" in (Index.__doc__ or "") and "close()" in (Index.__doc__ or "")


def _no_command_line_in(message: str) -> None:
    assert "`retrieve" not in message and " --" not in message, message


def test_library_errors_advise_a_program_and_the_cli_adds_the_command(tmp_path):
    """A Python caller reads what to do in words that fit it (no `retrieve ...`, no --option);
    `retrieve` prints the same line with the command that does it."""
    missing = tmp_path / "nothing"
    with pytest.raises(RetrievalError) as e:
        Index.open(missing)
    _no_command_line_in(str(e.value))
    assert str(e.value) == f"no index at {missing}; fix: index a folder of photos into it first, or give the " \
                           f"folder that holds one"
    assert e.value.command == f"retrieve index DIR --index {missing}"
    copy = pickle.loads(pickle.dumps(e.value))  # as a Ray worker's error comes back
    assert (str(copy), copy.fix, copy.command) == (str(e.value), e.value.fix, e.value.command)

    (tmp_path / "q.jpg").write_bytes(b"")  # a query file that exists (a missing one is refused first, before torch)
    r = run("query", str(tmp_path / "q.jpg"), "--index", str(missing))
    assert r.exit_code == 1 and r.stderr.strip() == f"error: {e.value} (`retrieve index DIR --index {missing}`)"

    make_folder(tmp_path / "photos", range(2))
    (tmp_path / "empty").mkdir()
    with Index.open_or_create(tmp_path / "ix", TINY_CONFIG) as idx:
        idx.update([tmp_path / "empty"])
        with pytest.raises(RetrievalError, match="holds no images; fix: index a folder of photos") as e:
            idx.search(tmp_path / "photos" / "img_000.png")
        _no_command_line_in(str(e.value))
        idx.update([tmp_path / "photos"])
        with pytest.raises(UsageError, match="a box crops one query image; fix:") as e:
            idx.search_many([tmp_path / "photos" / "img_000.png"] * 2, bbox=(0, 0, 10, 10))
        _no_command_line_in(str(e.value))
    with pytest.raises(UsageError, match=r"^k \(-k\) and rerank_k \(--rerank-k\) must be at least 1"):
        SearchOptions(k=0)  # the key a program sets, and the option a person types
    with pytest.raises(ArtifactMismatchError) as e:
        Index.open_or_create(tmp_path / "ix", {"image": {"size": 224}})
    _no_command_line_in(str(e.value))
    assert e.value.command == "--index FOLDER"


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_readme_names_each_official_weights_file():
    """Each model's row names Meta's file (register models: `..._reg4_pretrain.pth`), and the URL
    pattern the README gives (`.../dinov2/<model>/<file>`, <model> without `_reg`) is the registry's."""
    from retrieval.backbone import registry

    weights = _section("Weights")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", weights, re.M)}
    assert "`https://dl.fbaipublicfiles.com/dinov2/<model>/<file>`" in weights
    for arch in registry().values():
        if arch.random_only:
            continue
        assert f"`{arch.checkpoint_file}`" in rows.get(arch.name, ""), (arch.name, arch.checkpoint_file)
        if arch.url is not None:
            assert arch.url == f"https://dl.fbaipublicfiles.com/dinov2/{arch.name.removesuffix('_reg')}/" \
                               f"{arch.checkpoint_file}"


def test_the_quick_start_shows_a_cpu_only_install():
    """Next to the quick start (which stays as it was: plain PyPI, test_tiny, offline), a CPU-only
    install: torch and torchvision from PyTorch's CPU index first, then `pip install .`."""
    quick = _section("Quick start")
    commands = re.findall(r"^```bash\n(.*?)^```", quick, flags=re.S | re.M)
    assert any(c.startswith("python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/retrieve index "
                            "examples/photos --index demo-index --model test_tiny") for c in commands), commands
    cpu = [c for c in commands if "download.pytorch.org/whl/cpu" in c]
    assert len(cpu) == 1, commands
    steps = [s.strip() for s in cpu[0].split("&&")]
    assert steps[1] == ".venv/bin/pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"
    assert steps[2] == ".venv/bin/pip install ."
    assert "GB" in quick.split(cpu[0], 1)[1].removeprefix("```\n").split("```", 1)[0]  # says what it saves


def test_the_api_page_lists_every_settings_key_with_its_default():
    """docs/api.md's settings table has one row per EngineConfig key, with the default config.py
    gives it (defaults live in code: the page cannot drift from it)."""
    from retrieval.config import EngineConfig

    def flat(d: dict[str, typing.Any], prefix: str = "") -> dict[str, typing.Any]:
        out: dict[str, typing.Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    table = API_DOC.read_text().split("\n## Settings keys\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([\w.]+)` \| (.*?) \|", table, re.M))
    defaults = flat(EngineConfig().to_dict())
    assert set(rows) == set(defaults), sorted(set(rows) ^ set(defaults))
    for key, default in defaults.items():
        shown = rows[key].strip("`")
        expected = str(list(default)) if isinstance(default, tuple) else str(default)
        assert shown == expected, (key, shown, expected)


def test_an_image_refusal_names_the_setting_and_the_option(tmp_path):
    """A picture over the pixel budget: the fix names the key a program sets (max_pixels) beside
    the option a person types (--max-pixels)."""
    from retrieval import BadImageError, load_image

    make_folder(tmp_path, [1])
    with pytest.raises(BadImageError) as e:
        load_image(tmp_path / "img_001.png", max_pixels=100)
    assert e.value.fix == "downscale it, or raise the budget (max_pixels, --max-pixels)"
