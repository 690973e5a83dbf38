"""`retrieve serve`: the HTTP API and web page over an index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import UsageError
from ..types import shown
from . import checks
from .app import app, boundary
from .options import Device, IndexDir, index_dir


@app.command()
@boundary
def serve(
    index: IndexDir = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; anything but loopback needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8000,
    token: Annotated[str | None, typer.Option("--token", envvar="RETRIEVAL_TOKEN", show_envvar=False,
                                              help="Every /api/ request must send Authorization: Bearer TOKEN "
                                                   "(also $RETRIEVAL_TOKEN); the page takes it from /?token=TOKEN.")] = None,
    weights: Annotated[Path | None, typer.Option("--weights", help="The index's weights file, if it moved.")] = None,
    device: Device = None,
    max_upload: Annotated[str, typer.Option("--max-upload", help="Largest query upload accepted (50MB, 1GiB, ...).")] = "50MB",
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host", help="Also answer requests whose Host header is this name (repeatable; e.g. the "
                                             "name a reverse proxy forwards). Other names are refused (400).")] = None,
) -> None:
    """HTTP API and web page over an index; the model stays loaded (docs/serve.md). Ctrl-C stops."""
    import ipaddress

    from .. import serve as service  # its names load on first use: the options are checked before torch is imported

    limit, limits = service.parse_size(max_upload), service.Limits()
    checks.device(device)
    service.check_token(token or None)
    service.Hosts.of(host, allow=allow_host or ())  # a malformed --allow-host: one line, before the model
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        raise UsageError(f"--host {host} is reachable from other machines: pass --token TOKEN (every /api/ request "
                         f"must then send it), or serve on 127.0.0.1")
    import uvicorn

    sockets = service.bind(host.strip("[]"), port)  # before the model loads: a port in use is one line, at once
    try:
        web = service.create_app(index_dir(index), token=token or None, max_upload=limit,
                                 body_timeout=limits.body_timeout,
                                 weights=None if weights is None else str(weights), device=device,
                                 host=host, allow_hosts=allow_host or ())
        urls = [u + ("?token=..." if token else "") for u in service.urls(host, sockets[0].getsockname()[1])]
        typer.echo(f"serving {shown(str(index_dir(index)))} on {urls[0]}  (Ctrl-C stops)"
                   + "".join(f"\n  also on {u}" for u in urls[1:]))
        server = uvicorn.Server(service.server_config(web, limits))
        try:
            server.run(sockets=sockets)  # these very sockets: nothing can take the port in between
        except KeyboardInterrupt:  # a second Ctrl-C, or the first one raised again after a clean stop
            pass
    finally:
        for sock in sockets:
            sock.close()
    if not server.started:  # uvicorn has said why (e.g. the app failed to start)
        raise typer.Exit(3)
