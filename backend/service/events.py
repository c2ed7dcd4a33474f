"""The event stream: job state, progress, metrics and new samples, as server-sent events.

One hub polls ``project.db`` (WAL lets it read while workers write) and fans out to every
connected client's queue; each event carries a cursor so a reconnecting client resumes
where it stopped without gaps or repeats.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from backend.store.project import connect

JOB_COLS = ("id", "kind", "name", "state", "progress", "step", "total_steps", "control", "error", "resumable", "heartbeat")


class EventHub:
    def __init__(self, project_root, interval: float = 0.02, max_rows: int = 5000):
        self.root = project_root
        self.interval = interval
        self.max_rows = max_rows
        self.subscribers: set[asyncio.Queue] = set()
        self.cursor = {"metric": 0, "sample": 0, "comparison": 0}
        self._jobs: dict[int, tuple] = {}
        self._task: asyncio.Task | None = None
        self.db = None

    async def start(self) -> None:
        self.db = connect(self.root / "project.db")
        self.cursor["metric"] = self._max("metrics")
        self.cursor["sample"] = self._max("samples")
        self.cursor["comparison"] = self._max("comparisons")
        self._jobs = {r[0]: r for r in self._job_rows()}
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    def _max(self, table: str) -> int:
        return int(self.db.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0])

    def _job_rows(self) -> list[tuple]:
        return self.db.execute(f"SELECT {', '.join(JOB_COLS)} FROM jobs").fetchall()

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=10000)
        self.subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.subscribers.discard(q)

    def poll(self) -> list[dict[str, Any]]:
        """New events since the last poll (synchronous; cheap indexed queries)."""
        events: list[dict[str, Any]] = []
        rows = self.db.execute(
            "SELECT id, job_id, step, key, value, time FROM metrics WHERE id > ? ORDER BY id LIMIT ?", [self.cursor["metric"], self.max_rows]
        ).fetchall()
        if rows:
            self.cursor["metric"] = rows[-1][0]
            by_job: dict[int, list] = {}
            for _rid, job, step, key, value, t in rows:
                by_job.setdefault(job, []).append([step, key, value, t])
            for job, items in by_job.items():
                events.append({"type": "metrics", "job": job, "rows": items})
        rows = self.db.execute(
            "SELECT id, job_id, step, prompt, seed, image_hash, settings FROM samples WHERE id > ? ORDER BY id LIMIT ?", [self.cursor["sample"], self.max_rows]
        ).fetchall()
        for rid, job, step, prompt, seed, h, settings in rows:
            self.cursor["sample"] = rid
            events.append({"type": "sample", "id": rid, "job": job, "step": step, "prompt": prompt, "seed": seed, "image": h, "settings": json.loads(settings or "{}")})
        rows = self.db.execute("SELECT id FROM comparisons WHERE id > ? ORDER BY id LIMIT ?", [self.cursor["comparison"], self.max_rows]).fetchall()
        if rows:
            self.cursor["comparison"] = rows[-1][0]
            events.append({"type": "comparisons", "count": len(rows)})
        current = {r[0]: r for r in self._job_rows()}
        for jid, row in current.items():
            if self._jobs.get(jid) != row:
                events.append({"type": "job", "job": dict(zip(JOB_COLS, row))})
        for jid in set(self._jobs) - set(current):
            events.append({"type": "job_deleted", "job": jid})
        self._jobs = current
        return events

    async def _run(self) -> None:
        while True:
            try:
                events = await asyncio.to_thread(self.poll)
            except Exception:  # a locked or busy database: try again next tick
                events = []
            if events:
                stamp = time.time()
                for ev in events:
                    ev["sent"] = stamp
                for q in list(self.subscribers):
                    for ev in events:
                        if q.full():
                            break
                        q.put_nowait(ev)
            await asyncio.sleep(self.interval)
