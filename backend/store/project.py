"""A project is a folder with ``project.db`` at its heart.

Big blobs (images, checkpoints, caches) are files named by content hash; everything else is
rows. Every path a caller hands in is resolved through :meth:`Project.resolve`, which refuses
anything that leaves the project folder (``..``, absolute paths, symlinks pointing out).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from .schema import MIGRATIONS

DB_NAME = "project.db"
SUBDIRS = ("images", "cache", "runs", "models", "exports")
BUSY_TIMEOUT_S = 30.0


class ProjectError(Exception):
    """A project folder is missing, foreign or unusable; the message says which and why."""


class OutsideProjectError(ProjectError):
    """A path would leave the project folder."""


def connect(db_path: Path, *, readonly: bool = False) -> Database:
    """Open ``project.db`` with WAL, a busy timeout and foreign keys on."""
    if readonly:
        uri = f"file:{db_path.as_posix()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    else:
        conn = sqlite3.connect(str(db_path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    return Database(conn)


@contextmanager
def write_transaction(db: Database) -> Iterator[Database]:
    """Writes that belong together: all of them land or none does.

    The outermost level takes the write lock up front (``BEGIN IMMEDIATE``): a deferred
    transaction that reads first (sqlite-utils inspects the table before inserting) and then
    writes fails at once with "database is locked" when another connection wrote meanwhile,
    instead of waiting out the busy timeout. Nested levels are savepoints."""
    conn = db.conn
    if conn.in_transaction:
        with db.atomic():
            yield db
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


class Project:
    """An open project folder: its database connection and its blob folders."""

    def __init__(self, root: Path, db: Database):
        self.root = root
        self.db = db

    # --- life cycle -------------------------------------------------------------------------

    @classmethod
    def init(cls, root: str | Path) -> Project:
        """Create a project in ``root`` (which may exist but must not hold another project)."""
        root = Path(root).expanduser().resolve()
        if (root / DB_NAME).exists():
            raise ProjectError(f"{root} already holds a project ({DB_NAME} exists); open it instead")
        root.mkdir(parents=True, exist_ok=True)
        for sub in SUBDIRS:
            (root / sub).mkdir(exist_ok=True)
        connect(root / DB_NAME).conn.close()
        return cls.open(root)

    @classmethod
    def open(cls, root: str | Path, *, migrate: bool = True) -> Project:
        """Open an existing project, applying any pending migrations."""
        root = Path(root).expanduser().resolve()
        db_path = root / DB_NAME
        if not db_path.exists():
            raise ProjectError(
                f"{root} is not a Signal Studio project (no {DB_NAME}); "
                f"create one with 'signal-backend project init {root}'"
            )
        for sub in SUBDIRS:
            (root / sub).mkdir(exist_ok=True)
        try:
            db = connect(db_path)
            if migrate:
                MIGRATIONS.apply(db)
        except sqlite3.DatabaseError as exc:
            raise ProjectError(f"{db_path} cannot be used: {exc}") from exc
        return cls(root, db)

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    def applied_migrations(self) -> list[str]:
        return [m.name for m in MIGRATIONS.applied(self.db)]

    # --- transactions -----------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """Writes that belong together: all of them land or none does (see ``write_transaction``)."""
        with write_transaction(self.db) as db:
            yield db

    # --- paths and blobs --------------------------------------------------------------------

    def resolve(self, relative: str | Path) -> Path:
        """Resolve a project-relative path, refusing anything that would leave the folder."""
        rel = Path(relative)
        if rel.is_absolute() or rel.drive or rel.anchor:
            raise OutsideProjectError(f"absolute paths are not allowed here: {relative}")
        target = (self.root / rel).resolve()
        if target != self.root and self.root not in target.parents:
            raise OutsideProjectError(f"path leaves the project folder: {relative}")
        return target

    def blob_path(self, digest: str, ext: str, kind: str = "images") -> Path:
        """Where the content-addressed blob ``digest`` lives (two-level fan-out)."""
        if not digest or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a content hash: {digest!r}")
        return self.root / kind / digest[:2] / f"{digest}.{ext.lstrip('.')}"

    def put_blob(self, data: bytes, ext: str, kind: str = "images") -> str:
        """Store bytes content-addressed (atomic write); returns the sha256 hex digest."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest, ext, kind)
        if not path.exists():
            atomic_write_bytes(path, data)
        return digest

    # --- small typed helpers ----------------------------------------------------------------

    def dataset_id(self, name: str, *, create: bool = False, source: str | None = None) -> int:
        row = self.db.execute("SELECT id FROM datasets WHERE name = ?", [name]).fetchone()
        if row:
            return int(row[0])
        if not create:
            raise ProjectError(f"no dataset named {name!r} in {self.root}")
        with self.transaction():
            return int(self.db["datasets"].insert({"name": name, "source": source}).last_pk)

    def info(self) -> dict[str, Any]:
        counts = {t: self.db[t].count for t in ("datasets", "items", "jobs", "samples", "comparisons", "models")}
        return {"root": str(self.root), "migrations": self.applied_migrations(), "counts": counts}


class DiskFull(OSError):
    """A write failed for lack of space; the message says where and that nothing half-written was kept."""


def disk_full(exc: OSError, where: Path, what: str) -> OSError:
    """``exc`` as a DiskFull naming ``where`` when it is ENOSPC (or EDQUOT), else ``exc`` itself."""
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return DiskFull(exc.errno, f"disk full at {where}: {what} was not written (nothing half-written was kept); free space, then resume")
    return exc


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise disk_full(e, path.parent, path.name) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps(obj: Any) -> str:
    """JSON for TEXT columns: compact and stable."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
