"""`retrieve extract`, `pca`, `match`, `models`: research outputs and pictures of any images."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import engine
from ..config import DEFAULT_MAX_LINES, DEFAULT_MAX_PIXELS, DEFAULT_SIZE, BackboneConfig, ImageConfig
from ..errors import UsageError
from ..types import shown
from . import checks
from .app import app, boundary
from .options import Batch, Device, Dtype, Inputs, MaxPixels, Model, Size, Weights, Workers
from .output import progress_bar, say_skipped


def _embed_with_progress(paths: list[str], **kwargs: Any) -> tuple[list[Any], list[Any]]:
    with progress_bar() as bar:
        task = bar.add_task("embedding", total=len(paths))

        def seen(r: Any) -> None:
            if isinstance(r, engine.Skipped):
                say_skipped([(r.path, r.reason)])
            bar.advance(task)

        result: tuple[list[Any], list[Any]] = engine.embed_all(paths, on_result=seen, **kwargs)
        return result


def _backbone(model: str, weights: Path | None, device: str | None, dtype: str) -> Any:
    return engine.open_backbone(BackboneConfig(model, None if weights is None else str(weights), device, dtype))


@app.command()
@boundary
def extract(
    inputs: Inputs,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .npz file.")],
    model: Model = "dinov2_vits14",
    weights: Weights = None,
    size: Size = DEFAULT_SIZE,
    batch: Batch = 16,
    workers: Workers = None,
    device: Device = None,
    dtype: Dtype = "fp32",
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    exact: Annotated[bool, typer.Option("--exact/--draft", help="Decode JPEGs in full, as the official transform "
                                        "does, or (--draft) at a reduced DCT scale as `retrieve index` does: "
                                        "faster on large photos, tokens not equal (docs/features.md).")] = True,
) -> None:
    """Write raw DINOv2 CLS and patch tokens of each image to an .npz file (keys documented in docs/features.md)."""
    checks.known_model(model)  # before torch (or sqlite-utils) is imported
    checks.device(device)
    paths = checks.image_inputs(inputs)
    engine.output_file(out, "--out")
    image = ImageConfig(size=size, max_pixels=max_pixels)
    backbone = _backbone(model, weights, device, dtype)
    done, skipped = _embed_with_progress(paths, backbone=backbone, image=image, batch=batch, workers=workers,
                                         draft=not exact)
    engine.write_features(out, done, skipped, backbone=backbone, image=image, draft=not exact)
    typer.echo(f"wrote {shown(str(out))}: {len(done)} images, {backbone.dim}-d tokens, {len(skipped)} skipped")


@app.command()
@boundary
def pca(
    inputs: Inputs,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output PNG file.")],
    model: Model = "dinov2_vits14",
    weights: Weights = None,
    size: Size = DEFAULT_SIZE,
    threshold: Annotated[float, typer.Option(help="Foreground cut on the first component, in [0, 1].")] = 0.5,
    workers: Workers = None,
    device: Device = None,
    dtype: Dtype = "fp32",
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
) -> None:
    """Draw the DINOv2 PCA picture: each input beside its first three foreground components as RGB."""
    checks.known_model(model)
    checks.device(device)
    paths = checks.image_inputs(inputs)
    engine.output_file(out, "--out")
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--threshold must be in [0, 1], got {threshold}")
    image = ImageConfig(size=size, max_pixels=max_pixels)
    backbone = _backbone(model, weights, device, dtype)
    picture, skipped = engine.pca_picture(paths, backbone=backbone, image=image, threshold=threshold, workers=workers)
    for s in skipped:
        logging.getLogger("retrieval").warning("skipped %s: %s", shown(s.path), s.reason)
    engine.save_png(picture, out)
    typer.echo(f"wrote {shown(str(out))}: {len(paths) - len(skipped)} images, {len(skipped)} skipped")



@app.command()
@boundary
def match(
    a: Annotated[Path, typer.Argument(help="First image.")],
    b: Annotated[Path, typer.Argument(help="Second image.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG of the verified matches (also writes *_heatmap, *_pca).")],
    model: Model = "dinov2_vits14",
    weights: Weights = None,
    size: Size = DEFAULT_SIZE,
    threshold: Annotated[float, typer.Option(help="Minimum cosine of a patch match.")] = 0.5,
    max_lines: Annotated[int, typer.Option("--max-lines", min=0, help="Verified matches drawn as lines, spread "
                                           "over A; the other inliers as dots.")] = DEFAULT_MAX_LINES,
    show_outliers: Annotated[bool, typer.Option("--show-outliers", help="Also draw the matches RANSAC rejected, "
                                                "in red.")] = False,
    device: Device = None,
    dtype: Dtype = "fp32",
) -> None:
    """Correspondence map of any two images: mutual-NN patch matches verified by RANSAC."""
    checks.existing([a, b], files_only=True)
    checks.known_model(model)
    checks.device(device)
    engine.output_file(out, "--out")
    backbone = _backbone(model, weights, device, dtype)
    p = engine.match_files(a, b, backbone=backbone, image=ImageConfig(size=size), out=out, threshold=threshold,
                           max_lines=max_lines, show_outliers=show_outliers)
    written = ", ".join(shown(str(f)) for f in engine.match_paths(out).values())
    typer.echo(f"{p.n_matches} matches, {p.n_inliers} inliers -> {written}")



@app.command()
def models() -> None:
    """List backbone names, their size, where official weights come from and under which licence."""
    from ..backbone.registry import registry

    for name, arch in registry().items():
        tokens = f"{'storage' if arch.family == 'dinov3' else 'registers'} {arch.num_registers}"
        licence = "" if arch.random_only else f"  [weights: {arch.licence}]"
        typer.echo(f"{name:20s} dim {arch.dim:5d}  {arch.depth:2d} blocks  patch {arch.patch_size}  {tokens:10s}  "
                   f"{arch.source}{licence}")
