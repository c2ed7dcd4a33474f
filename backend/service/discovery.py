"""Discovery files: how a Studio finds a running backend (URL, token, pid, project).

One JSON file per running service in the per-user runtime folder, readable by its owner
only, removed on clean exit. Stale files (the pid is gone) are ignored and cleaned up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from backend.paths import runtime_dir


def discovery_path(pid: int | None = None) -> Path:
    return runtime_dir() / f"backend-{pid or os.getpid()}.json"


def write_discovery(url: str, token: str, project: str | None) -> Path:
    path = discovery_path()
    data = {"url": url, "token": token, "pid": os.getpid(), "project": project}
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def remove_discovery() -> None:
    discovery_path().unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        import psutil

        return psutil.pid_exists(pid)
    except ImportError:  # pragma: no cover
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def find_backends(project: str | None = None) -> list[dict[str, Any]]:
    """Running services (newest first), optionally only those serving ``project``."""
    found = []
    for path in sorted(runtime_dir().glob("backend-*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not _alive(int(data.get("pid", -1))):
            path.unlink(missing_ok=True)
            continue
        if project and data.get("project") and Path(data["project"]).resolve() != Path(project).resolve():
            continue
        found.append(data)
    return found
