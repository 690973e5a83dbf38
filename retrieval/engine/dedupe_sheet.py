"""`retrieve dedupe --html`: a contact sheet of the groups, each image side by side and the patch
matches of each verified pair (drawn like `retrieve match`: the full patch tokens, re-embedded)."""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path

from ..errors import BadImageError, RetrievalError
from ..types import shown
from .dedupe import DedupeReport, Link
from .files import atomic_write
from .index import Index
from .maps import View, _png, caption, model_label, pair, render, view

log = logging.getLogger(__name__)

_OURS = re.compile(r"g\d{3,}_(m|l)\d{2,}\.png")  # what an earlier sheet wrote here, replaced each run
THUMB = 240  # longer side of the member pictures on the page, in CSS pixels


def contact_sheet(idx: Index, report: DedupeReport, out_dir: str | Path) -> Path:
    """index.html in `out_dir` (created), with one PNG per member and per non-exact link."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RetrievalError(f"--html {shown(str(out))} is a file; pass a folder for the contact sheet")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.name == "index.html" or _OURS.fullmatch(old.name):
            old.unlink()
    bb = idx.backbone()
    model = model_label(bb)
    parts = [f"<h1>Duplicates: {len(report.groups)} groups among {report.images} images</h1>",
             f"<p>Model {html.escape(model)}. Read-only: nothing was deleted or moved. The first image of each group "
             f"is the one to keep (most pixels, then oldest).</p>"]
    for n, g in enumerate(report.groups, 1):
        views: dict[int, View | None] = {}
        for m in g.members:
            try:
                views[m.id] = view(m.path, backbone=bb, image=idx.config.image)
            except BadImageError as e:  # changed or gone since it was indexed
                log.warning("no picture of %s: %s", shown(m.path), e.reason)
                views[m.id] = None
        cells = []
        for j, m in enumerate(g.members, 1):
            v = views[m.id]
            img = ""
            if v is not None:
                name = f"g{n:03d}_m{j:02d}.png"
                _png(v.display, out / name)
                img = f'<img src="{name}" style="max-width:{THUMB}px;max-height:{THUMB}px"><br>'
            role = "keep" if m is g.keep else "copy"
            cells.append(f"<figure>{img}<figcaption><b>{role}</b> {m.width}x{m.height}<br>"
                         f"{html.escape(shown(m.path))}</figcaption></figure>")
        parts.append(f'<h2>group {n}: {g.kind}, {len(g.members)} images</h2><div style="display:flex;'
                     f'flex-wrap:wrap;gap:12px">{"".join(cells)}</div>')
        for j, x in enumerate(g.links, 1):
            parts.append(_link_html(x, views, out / f"g{n:03d}_l{j:02d}.png", model, bb.patch_size,
                                    {m.id: m.path for m in g.members}))
    page = ("<!doctype html><meta charset=utf-8><title>retrieve dedupe</title><body style=\"font-family:sans-serif\">"
            + "\n".join(parts) + "</body>")
    return atomic_write(out / "index.html", lambda f: f.write(page.encode()))


def _link_html(x: Link, views: dict[int, View | None], png: Path, model: str, patch_size: int,
               paths: dict[int, str]) -> str:
    """One link: its verdict in words, and for a non-exact one the matches picture."""
    names = f"{html.escape(shown(paths[x.a]))} &harr; {html.escape(shown(paths[x.b]))}"
    if x.kind == "exact":
        return f"<p>{names}: same bytes</p>"
    words = (f"{x.kind}: {x.inliers} verified patch matches, {100 * x.coverage:.0f}% of the smaller image"
             + (", mirrored" if x.mirrored else "") + (f", similarity {x.score:.3f}" if x.score is not None else ""))
    a, b = views.get(x.a), views.get(x.b)
    if a is None or b is None:
        return f"<p>{names}: {html.escape(words)} (no picture: a file is unreadable now)</p>"
    p = pair(a, b)
    text = caption(p, model=model)
    _png(render(p, patch_size=patch_size, text=text)["matches"], png, " · ".join(text))
    return f'<p>{names}: {html.escape(words)}<br><img src="{png.name}" style="max-width:100%"></p>'
