"""``signal-backend serve``: bind loopback (by default), pick a free port, write the discovery file."""

from __future__ import annotations

import secrets
import socket
import sys
from pathlib import Path

from backend.store import Project

from .discovery import remove_discovery, write_discovery
from .state import ServiceState


class ServiceRunning(RuntimeError):
    """Another service already serves this project."""


def hold_service_lock(root: Path):
    """One service per project: an exclusive lock on ``.service.lock``, released when the process dies.

    Two services would both start queued jobs; the lock makes the second one refuse to start, naming
    the holder's pid (written into the lock file).
    """
    import os

    path = root / ".service.lock"
    fh = open(path, "a+")
    try:
        if os.name == "nt":  # pragma: no cover - Windows
            import msvcrt

            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip()
        fh.close()
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise ServiceRunning(f"another signal-backend{who} already serves {root}; connect to it instead (its discovery file has the URL "
                             "and token)") from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))  # the holder, named to whoever is refused
    fh.flush()
    return fh


def serve(project: Path, host: str = "127.0.0.1", port: int = 0, token: str | None = None, slots: int = 1, create: bool = False, log_level: str = "warning") -> int:
    import uvicorn

    from .app import create_app

    root = Path(project).expanduser().resolve()
    if create and not (root / "project.db").exists():
        Project.init(root).close()
    Project.open(root).close()  # migrate before anything reads it
    lock = hold_service_lock(root)  # noqa: F841 - held for the life of the process
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit this: without it, small responses wait ~40 ms on delayed ACKs
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    port = sock.getsockname()[1]
    token = token or secrets.token_urlsafe(32)
    state = ServiceState(project_root=root, token=token, host=host, port=port, slots=slots)
    app = create_app(state)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    path = write_discovery(url, token, str(root))
    print(f"signal-backend serving {root} at {url} (discovery file {path})", file=sys.stderr, flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        remove_discovery()
    return 0
