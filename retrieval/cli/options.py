"""The options several commands share, and how every option and argument is named in help: plain
metavars (`--index DIR`, `-k N`, `FOLDER...`), never a type's template (`<path>`, `{dest}`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import EngineConfig, default_index_dir, preset_names

DEFAULTS = EngineConfig()  # what help strings name as the defaults: config.py's values, never written here
SIZE_HELP = ("Longer image side in pixels, a multiple of the patch size; others are rounded to the nearest one "
             "(500 -> 504), for DINOv3's patch 16 to 496")

Model = Annotated[str, typer.Option("--model", "-m", help="Backbone short name (see `retrieve models`).")]
Weights = Annotated[
    Path | None,
    typer.Option("--weights", help="Local checkpoint, official .pth key layout or safetensors "
                                   "(default: the official file, cached in the torch hub folder)."),
]
Size = Annotated[int, typer.Option("--size", help=f"{SIZE_HELP}.")]
Batch = Annotated[int, typer.Option("--batch", min=1, help="Images per forward pass.")]
Workers = Annotated[int | None, typer.Option("--workers", min=0, help="Decoder processes (default: cores - 1 up to 8; on 2 "
                                                               "cores or fewer 0: threads decode between forward passes).")]
Device = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present).")]
Dtype = Annotated[str, typer.Option("--dtype", help="fp32, or bf16 / fp16 autocast.")]
MaxPixels = Annotated[int, typer.Option("--max-pixels", help="Refuse images with more pixels than this.")]
Inputs = Annotated[list[Path], typer.Argument(help="Image files or folders.", show_default=False)]
ConfigFile = Annotated[str | None, typer.Option("--config", help=f"A preset by name ({', '.join(preset_names())}) "
                                                                 "or a TOML file: its settings replace the defaults; "
                                                                 "options given here win.")]
Multiscale = Annotated[bool | None, typer.Option("--multiscale/--single-scale",
                                                 help="Average over scales 1, 1/sqrt2, sqrt2, or use 1 only "
                                                      "(default: the index's or the config's, else one scale).")]
IndexDir = Annotated[
    Path | None,
    typer.Option("--index", help="Index folder (default: $RETRIEVAL_INDEX, else ~/.local/share/retrieval/index)."),
]


def index_dir(index: Path | None) -> Path:
    """The --index given, else the default folder (config.default_index_dir)."""
    return index if index is not None else default_index_dir()


# The value an option takes, by name; an option not here is named by its type (TYPES).
METAVARS = {
    "--allow-host": "NAME", "--bbox": "X1,Y1,X2,Y2", "--config": "PRESET", "--data": "DIR", "--dba": "K",
    "--decode": "WHERE", "--device": "DEVICE", "--distractors": "DIR", "--dtype": "DTYPE", "--exclude": "GLOB",
    "--host": "ADDRESS", "--index": "DIR", "--index-kind": "KIND", "--json-out": "FILE", "--like": "PHOTO",
    "--max-upload": "SIZE",
    "--model": "NAME", "--out": "FILE", "--pooling": "POOLING", "--port": "PORT", "--ray": "ADDRESS",
    "--rescan-interval": "SECONDS", "--save-ranks": "FILE", "--token": "TOKEN", "--weights": "FILE",
    "--whiten-from": "SET",
}
TYPES = {int: "N", float: "X", Path: "PATH", str: "TEXT"}


def _element(annotation: Any) -> Any:
    """list[X] -> X, X | None -> X: the type one value of the option has."""
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    return _element(args[0]) if args else annotation


def plain_metavars(params: list[Any]) -> None:
    """Give every parameter a plain metavar, in place: flags none, an argument its name in capitals
    (a list of them in the singular, with `...`: `folders` -> `FOLDER...`), an option the name in
    METAVARS or else its type's in TYPES. A metavar set on the option itself wins."""
    for p in params:
        if p.param_type_name == "argument":
            name = p.name.upper()
            p.metavar = p.metavar or (f"{name.removesuffix('S')}..." if p.nargs == -1 else name)
        elif getattr(p, "is_flag", False) or getattr(p, "count", False):
            p.metavar = ""
        elif p.metavar is None:
            long = next((o for o in p.opts if o.startswith("--")), p.opts[0])
            p.metavar = METAVARS.get(long) or TYPES.get(_element(p.type_descriptor.annotation), "VALUE")
