"""Project store: layout, pragmas, migrations of older projects, path safety, crash consistency."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from sqlite_utils import Database

from backend.store import OutsideProjectError, Project, ProjectError
from backend.store.project import connect
from backend.store.schema import MIGRATIONS, latest_version


def test_init_creates_layout_and_tables(tmp_path: Path):
    with Project.init(tmp_path / "p") as project:
        for sub in ("images", "cache", "runs", "models"):
            assert (project.root / sub).is_dir()
        tables = set(project.db.table_names())
        assert {"datasets", "items", "jobs", "metrics", "samples", "comparisons", "models"} <= tables
        assert project.applied_migrations()[-1] == latest_version()
        assert project.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert project.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert project.db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_init_refuses_existing_project_and_open_refuses_foreign_folder(tmp_path: Path):
    Project.init(tmp_path / "p").close()
    with pytest.raises(ProjectError, match="already holds a project"):
        Project.init(tmp_path / "p")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    with pytest.raises(ProjectError, match="not a Signal Studio project"):
        Project.open(tmp_path / "other")


def test_foreign_keys_are_enforced(tmp_path: Path):
    import sqlite3

    with Project.init(tmp_path / "p") as project:
        with pytest.raises(sqlite3.IntegrityError):
            with project.transaction():
                project.db["metrics"].insert({"job_id": 999, "step": 1, "key": "loss", "value": 1.0, "time": 0.0})
        assert project.db["metrics"].count == 0


def test_opening_an_older_project_migrates_it_and_keeps_its_rows(tmp_path: Path):
    root = tmp_path / "old"
    root.mkdir()
    db = connect(root / "project.db")
    names = [m.name for m in MIGRATIONS._migrations]
    assert len(names) >= 2, "the migration test needs at least two migrations"
    MIGRATIONS.apply(db, stop_before=names[1])  # the project as an older release left it
    db["datasets"].insert({"name": "old-data"})
    ds = db.execute("SELECT id FROM datasets").fetchone()[0]
    db["items"].insert({"dataset_id": ds, "hash": "ab" * 32, "ext": "png", "size": 3, "width": 8, "height": 8,
                        "mode": "RGB", "caption": "a red circle", "source_path": "a.png"})
    assert "rejects" not in db.table_names()
    db.conn.close()

    with Project.open(root) as project:
        assert project.applied_migrations() == names
        assert "rejects" in project.db.table_names()
        assert "phash" in project.db["items"].columns_dict and "blur" in project.db["items"].columns_dict
        row = next(project.db["items"].rows)
        assert row["caption"] == "a red circle" and row["phash"] is None


def test_resolve_refuses_paths_outside_the_project(tmp_path: Path):
    with Project.init(tmp_path / "p") as project:
        assert project.resolve("images/x.png") == project.root / "images" / "x.png"
        for bad in ("../secret", "images/../../secret", "/etc/passwd", str(tmp_path / "elsewhere")):
            with pytest.raises(OutsideProjectError):
                project.resolve(bad)
        outside = tmp_path / "outside"
        outside.mkdir()
        (project.root / "images" / "link").symlink_to(outside)
        with pytest.raises(OutsideProjectError):
            project.resolve("images/link/file.png")


def test_blobs_are_content_addressed_and_written_once(tmp_path: Path):
    with Project.init(tmp_path / "p") as project:
        h1 = project.put_blob(b"hello", "bin", kind="cache")
        h2 = project.put_blob(b"hello", "bin", kind="cache")
        assert h1 == h2
        path = project.blob_path(h1, "bin", kind="cache")
        assert path.read_bytes() == b"hello"
        assert path.parent.name == h1[:2]
        with pytest.raises(ValueError):
            project.blob_path("../../etc", "png")


WRITER = r"""
import sys, time
from backend.store import Project
project = Project.open(sys.argv[1])
ds = project.dataset_id("batch", create=True)
# a first batch that commits
with project.transaction():
    for i in range(50):
        project.db["items"].insert({"dataset_id": ds, "hash": "%064x" % i, "ext": "png", "size": 1,
                                   "width": 8, "height": 8, "mode": "RGB", "source_path": f"first/{i}.png"})
print("committed", flush=True)
# a second batch that is killed half way
with project.transaction():
    for i in range(1000):
        project.db["items"].insert({"dataset_id": ds, "hash": "%064x" % (1000 + i), "ext": "png", "size": 1,
                                   "width": 8, "height": 8, "mode": "RGB", "source_path": f"second/{i}.png"})
        if i == 100:
            print("halfway", flush=True)
        time.sleep(0.002)
print("finished", flush=True)
"""


def test_killed_writer_leaves_a_consistent_database(tmp_path: Path):
    Project.init(tmp_path / "p").close()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "p")], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    lines = []
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        lines.append(line.strip())
        if line.strip() == "halfway":
            break
    assert "halfway" in lines, lines
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    db = Database(connect(tmp_path / "p" / "project.db").conn)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    first = db.execute("SELECT count(*) FROM items WHERE source_path LIKE 'first/%'").fetchone()[0]
    second = db.execute("SELECT count(*) FROM items WHERE source_path LIKE 'second/%'").fetchone()[0]
    assert first == 50, "the committed batch must survive the kill"
    assert second == 0, f"a half-written batch must not be visible ({second} rows leaked)"


def test_concurrent_transactions_wait_for_each_other_instead_of_failing(tmp_path: Path):
    """The service writes from several threads, each with its own connection (two rating
    submissions, two job creations at once); none of them may fail with "database is locked"."""
    import threading

    Project.init(tmp_path / "p").close()
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            with Project.open(tmp_path / "p") as p:
                for i in range(40):
                    with p.transaction():
                        n = p.db.execute("SELECT count(*) FROM datasets").fetchone()[0]  # read first, then write
                        p.db["datasets"].insert({"name": f"w{k}-{i}-{n}"})
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    with Project.open(tmp_path / "p") as p:
        assert p.db.execute("SELECT count(*) FROM datasets").fetchone()[0] == 160


def test_a_full_disk_while_storing_an_image_says_where_and_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import errno

    import backend.store.project as project_module
    from backend.store import DiskFull

    with Project.init(tmp_path / "p") as project:
        kept = project.put_blob(b"an earlier image", "png")

        def no_space(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(project_module.os, "fsync", no_space)
        with pytest.raises(DiskFull, match=r"disk full at .*images.*was not written \(nothing half-written was kept\)"):
            project.put_blob(b"a new image", "png")
        monkeypatch.undo()
        blobs = [p for p in (tmp_path / "p").rglob("*") if p.is_file() and "images" in p.parts]
        assert [p.name for p in blobs if p.name.startswith(".tmp-")] == []  # no temporary file left behind
        assert project.blob_path(kept, "png").read_bytes() == b"an earlier image"
        assert not any(b.read_bytes() == b"a new image" for b in blobs)
        digest = project.put_blob(b"a new image", "png")  # space back: the same write goes through
        assert project.blob_path(digest, "png").read_bytes() == b"a new image"
