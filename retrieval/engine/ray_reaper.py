"""What a killed `--ray local` driver leaves, ended with it (Linux).

Ray ends the runtime a driver started (its GCS, raylet, API server, monitors) when the driver
dies, even by SIGKILL (the kernel's parent-death signal), but the raylet's agents
(`ray::DashboardAgent`, `ray::RuntimeEnvAgent`, about 85 MB each) notice their raylet's death, then
spend 60 s trying to report it to the GCS that died with it. This watcher is a small process
beside the driver, in a session of its own (a terminal's Ctrl-C is the driver's alone): it
remembers, every second, the raylet's children (pid and start time) and its session folder, and
when its stdin closes (a clean stop) or the driver's process is gone (checked every second through
/proc: a pipe's end alone is not enough, since a process that inherited it keeps it open) kills
those still running, and any process
whose command line names that session (a worker still starting, spawned since the last look). Run as a script, standard library only,
so it starts in milliseconds without importing the package. docs/scale.md says what is left.

    watcher = start(os.getpid())   # after ray.init started a local runtime; None off Linux
    ...
    ray.shutdown(); stop(watcher)  # a clean end: the agents are ending already
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

TICK_S = 1.0


def start(driver: int) -> subprocess.Popen[bytes] | None:
    """The watcher of `driver`'s Ray runtime (the raylet among its children); None where there is
    no /proc to watch it through."""
    if not sys.platform.startswith("linux"):
        return None
    return subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), str(driver)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop(watcher: subprocess.Popen[bytes] | None) -> None:
    """End the watcher after a clean ray.shutdown(): it kills what of the runtime is still there."""
    if watcher is not None and watcher.stdin is not None:
        watcher.stdin.close()
        try:
            watcher.wait(timeout=10)
        except subprocess.TimeoutExpired:
            watcher.kill()


def _stat(pid: int) -> tuple[int, str, str] | None:
    """(parent pid, command name, start time) of a process, or None once it is gone (a zombie
    counts as gone: it runs nothing, it waits for its parent to read its status)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
    return None if rest[0] in ("Z", "X") else (int(rest[1]), name, rest[19])


def _children(pid: int) -> dict[int, str]:
    """The children of `pid`, each with its start time."""
    out = {}
    for entry in os.listdir("/proc"):
        st = _stat(int(entry)) if entry.isdigit() else None
        if st is not None and st[0] == pid:
            out[int(entry)] = st[2]
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.fsdecode(f.read()).split("\0")
    except OSError:
        return []


def main(driver: int) -> None:
    """Until stdin closes or the driver is gone, remember the raylet's children and session; then
    kill what is left."""
    last: dict[int, str] = {}
    sessions: set[str] = set()
    first = _stat(driver)
    while first is not None and (_stat(driver) or (0, "", ""))[2] == first[2]:  # the driver itself, still alive
        raylets = [p for p in _children(driver) if (_stat(p) or (0, "", ""))[1] == "raylet"]
        if raylets:  # after the driver's death the raylet is gone too: keep what was seen last
            last = {p: t for r in raylets for p, t in _children(r).items()}
            sessions = {a.split("=", 1)[1] for r in raylets for a in _cmdline(r) if a.startswith("--session_dir=")}
        ready, _, _ = select.select([sys.stdin], [], [], TICK_S)
        if ready and not os.read(sys.stdin.fileno(), 4096):  # a clean stop
            break
    named = [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != os.getpid()
             and any(s and s in a for a in _cmdline(int(e)) for s in sessions)]
    for pid, started in [*last.items(), *((p, None) for p in named)]:
        st = _stat(pid)
        if st is not None and started in (None, st[2]):  # the same process, not a later one given its pid
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


if __name__ == "__main__":
    main(int(sys.argv[1]))
