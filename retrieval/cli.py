"""`retrieve`: a thin typer adapter. Parses, calls the engine, prints; the one error boundary."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from . import engine
from .backbone import registry
from .config import DEFAULT_MAX_PIXELS, DEFAULT_SIZE, BackboneConfig, ImageConfig
from .errors import RetrievalError

app = typer.Typer(
    name="retrieve",
    help="Image instance retrieval on DINOv2 features.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])

Model = Annotated[str, typer.Option("--model", "-m", help="Backbone short name (see `retrieve models`).")]
Weights = Annotated[
    Path | None,
    typer.Option("--weights", help="Local checkpoint (official .pth key layout, or safetensors). "
                                   "Default: the official file, cached in the torch hub folder."),
]
Size = Annotated[int, typer.Option("--size", help="Longer image side in pixels (rounded down to a multiple of 14).")]
Batch = Annotated[int, typer.Option("--batch", help="Images per forward pass.")]
Workers = Annotated[int | None, typer.Option("--workers", help="Decoder processes (default: cores - 1; 0 = inline).")]
Device = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present).")]
Dtype = Annotated[str, typer.Option("--dtype", help="fp32, or bf16 / fp16 autocast.")]
MaxPixels = Annotated[int, typer.Option("--max-pixels", help="Refuse images with more pixels than this.")]
Inputs = Annotated[list[Path], typer.Argument(help="Image files or folders.", show_default=False)]


def _errors(fn: F) -> F:
    """Turn library errors into one line on stderr and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RetrievalError as e:
            Console(stderr=True).print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except ValueError as e:
            Console(stderr=True).print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_time=False, show_path=False)],
        force=True,
    )


def _progress(total: int) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    )


def _embed_with_progress(paths: list[str], **kwargs: Any) -> tuple[list[engine.Embedded], list[engine.Skipped]]:
    done: list[engine.Embedded] = []
    skipped: list[engine.Skipped] = []
    with _progress(len(paths)) as bar:
        task = bar.add_task("embedding", total=len(paths), rate="")
        for r in engine.embed(paths, **kwargs):
            if isinstance(r, engine.Skipped):
                skipped.append(r)
                logging.getLogger("retrieval").warning("skipped %s: %s", r.path, r.reason)
            else:
                done.append(r)
            bar.advance(task)
            speed = bar.tasks[0].speed
            bar.update(task, rate=f"{speed:.1f} img/s" if speed else "")
    return sorted(done, key=lambda r: r.index), sorted(skipped, key=lambda r: r.index)


def _backbone(model: str, weights: Path | None, device: str | None, dtype: str) -> Any:
    return engine.open_backbone(BackboneConfig(model, None if weights is None else str(weights), device, dtype))


def _inputs(items: list[Path]) -> list[str]:
    paths = engine.expand_inputs(items)
    if not paths:
        raise RetrievalError(f"no image files in {', '.join(map(str, items))}; pass image files or folders holding them")
    return paths


@app.command()
@_errors
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
) -> None:
    """Write raw DINOv2 CLS and patch tokens of each image to an .npz file (keys documented in docs/features.md)."""
    paths = _inputs(inputs)
    image = ImageConfig(size=size, max_pixels=max_pixels)
    backbone = _backbone(model, weights, device, dtype)
    done, skipped = _embed_with_progress(paths, backbone=backbone, image=image, batch_size=batch, workers=workers)
    engine.write_features(out, done, skipped, backbone=backbone, image=image)
    typer.echo(f"wrote {out}: {len(done)} images, {backbone.dim}-d tokens, {len(skipped)} skipped")


@app.command()
@_errors
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
    paths = _inputs(inputs)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {threshold}")
    image = ImageConfig(size=size, max_pixels=max_pixels)
    backbone = _backbone(model, weights, device, dtype)
    picture, skipped = engine.pca_picture(paths, backbone=backbone, image=image, threshold=threshold, workers=workers)
    for s in skipped:
        logging.getLogger("retrieval").warning("skipped %s: %s", s.path, s.reason)
    engine.save_png(picture, out)
    typer.echo(f"wrote {out}: {len(paths) - len(skipped)} images, {len(skipped)} skipped")


@app.command()
def models() -> None:
    """List backbone names, their size and where official weights come from."""
    for name, arch in registry().items():
        source = "random weights (tests only)" if arch.random_only else arch.url
        typer.echo(f"{name:20s} dim {arch.dim:5d}  {arch.depth:2d} blocks  registers {arch.num_registers}  {source}")
