"""The listening sockets of `retrieve serve`, bound before anything is announced (docs/serve.md).

    sockets = bind("127.0.0.1", 8000)          # RetrievalError / UsageError in one line
    uvicorn.Server(uvicorn.Config(app)).run(sockets=sockets)

Binding here rather than inside uvicorn means a port in use is known before the index is opened
and the URL printed, and that no other process can take the port between a check and the server
starting: the server is handed these very sockets.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from ..errors import RetrievalError, UsageError


def bind(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address `host` resolves to (as asyncio's create_server binds them:
    "localhost" is 127.0.0.1 and ::1), all on `port`; port 0 picks one free port for them all.
    Not yet listening (the server does that). UsageError for a host that cannot be resolved or is
    not this machine's; RetrievalError for a port in use or not allowed to this user."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UsageError(f"--host {host} cannot be resolved ({e.strerror}); fix: pass an IP address such as "
                         f"127.0.0.1, or a name this machine resolves") from None
    addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in infos))
    sockets: list[socket.socket] = []
    try:
        for family, address in addresses:
            # IPPROTO_TCP named, as getaddrinfo names it for create_server: asyncio sets TCP_NODELAY only on
            # connections whose socket says so, and without it every answer after a connection's first
            # waited ~40 ms (the headers' segment held by Nagle until the client's delayed ACK)
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not a listener's port: Linux refuses that
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # the port the first address was given, for all of them
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            try:
                sock.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL and len(addresses) > 1:  # e.g. ::1 where IPv6 is off
                    sockets.pop().close()
                    continue
                raise _bind_error(e, host, port) from None
        if not sockets:
            raise UsageError(f"--host {host} is not an address of this machine; fix: pass one of its addresses, "
                             f"or 0.0.0.0 for all of them (with --token)")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _bind_error(e: OSError, host: str, port: int) -> RetrievalError:
    if e.errno == errno.EADDRINUSE:
        return RetrievalError(f"port {port} on {host} is in use; fix: pass --port N (or stop the other server)")
    if e.errno == errno.EACCES and 0 < port < 1024:
        return RetrievalError(f"port {port} on {host} needs privileges this user lacks (ports below 1024); "
                              f"fix: pass --port 1024 or above")
    if e.errno == errno.EADDRNOTAVAIL:
        return UsageError(f"--host {host} is not an address of this machine; fix: pass one of its addresses, "
                          f"or 0.0.0.0 for all of them (with --token)")
    return RetrievalError(f"cannot listen on {host} port {port}: {(e.strerror or str(e)).lower()}")


def urls(host: str, port: int) -> list[str]:
    """Where a browser reaches a server bound to `host`: that address, or for a wildcard (0.0.0.0,
    ::) loopback first, then this machine's addresses of that family that another machine can use."""
    try:
        ip = ipaddress.ip_address(host.strip("[]") or "0.0.0.0")
    except ValueError:  # a name: as the user gave it
        return [f"http://{host}:{port}/"]
    if not ip.is_unspecified:
        return [_url(ip, port)]
    family, loopback = (socket.AF_INET, "127.0.0.1") if ip.version == 4 else (socket.AF_INET6, "::1")
    return [_url(a, port) for a in dict.fromkeys([ipaddress.ip_address(loopback), *_addresses(family)])]


def _url(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    return f"http://{ip}:{port}/" if ip.version == 4 else f"http://[{ip}]:{port}/"


def _addresses(family: socket.AddressFamily) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """This machine's addresses of `family` other than loopback and link-local: those its host
    name resolves to, and the one its default route leaves from (connecting a UDP socket sends
    nothing; the documentation address it names is never contacted)."""
    found = []
    try:
        found += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, family, socket.SOCK_STREAM)]
    except OSError:
        pass
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1" if family == socket.AF_INET else "2001:db8::1", 9))
            found.append(probe.getsockname()[0])
    except OSError:  # no route: no other address
        pass
    ips = [ipaddress.ip_address(str(a).split("%")[0]) for a in found]
    return [ip for ip in ips if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified)]


__all__ = ["bind", "urls"]
