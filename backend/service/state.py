"""What the service holds: its project, its token, one SQLite connection per thread."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from backend.store import Project
from backend.store.project import connect


@dataclass
class ServiceState:
    project_root: Path
    token: str
    host: str = "127.0.0.1"
    port: int = 0
    slots: int = 1
    _local: threading.local = field(default_factory=threading.local)
    runner: Any = None
    hub: Any = None

    def db(self) -> Database:
        """This thread's connection (sqlite connections must not be shared across threads)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = connect(self.project_root / "project.db")
            self._local.db = db
        return db

    def project(self) -> Project:
        """A Project view over this thread's connection (for blob paths and path checks)."""
        proj = getattr(self._local, "project", None)
        if proj is None:
            proj = Project(self.project_root, self.db())
            self._local.project = proj
        return proj

    def rows(self, sql: str, params: list[Any] | tuple = ()) -> list[dict[str, Any]]:
        cur = self.db().execute(sql, list(params))
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]
