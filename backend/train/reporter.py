"""How a running job talks to the world: rows in ``project.db`` and lines in its log.

Progress, metrics and samples are rows the service streams to clients; control (stop, pause,
sample now, save now) is a flag on the job row that the loop polls. ``PrintReporter`` is the
same interface for scripts and benchmarks that run without a project.
"""

from __future__ import annotations

import io
import math
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image

from backend.store import Project, dumps

ONE_SHOT = ("sample", "save")


class Reporter:
    """Interface used by the training loop (the base class prints and ignores controls)."""

    def log(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        pass

    def progress(self, step: int, total: int) -> None:
        pass

    def sample(self, step: int, prompt: str, seed: int, image: Image.Image, settings: dict[str, Any]) -> str:
        return ""

    def control(self) -> str | None:
        return None

    def model_saved(self, path: Path, name: str, card: dict[str, Any], kind: str = "base", parent: int | None = None) -> int | None:
        return None


PrintReporter = Reporter


class DbReporter(Reporter):
    """Writes a job's progress into its project; reads its control flag."""

    def __init__(self, project: Project, job_id: int, log_path: Path | None = None, echo: bool = True):
        self.project = project
        self.job_id = job_id
        self.log_path = log_path
        self.echo = echo
        self._log = open(log_path, "a", encoding="utf-8", buffering=1) if log_path else None

    def log(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        if self._log:
            self._log.write(f"{stamp} {text}\n")
        if self.echo:
            print(text, file=sys.stderr, flush=True)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        """One row per finite value; a NaN means "not measured" (e.g. no class images asked for) and is left out."""
        now = time.time()
        rows = [{"job_id": self.job_id, "step": step, "key": k, "value": float(v), "time": now} for k, v in values.items() if math.isfinite(float(v))]
        if not rows:
            return
        with self.project.transaction():
            self.project.db["metrics"].insert_all(rows)

    def progress(self, step: int, total: int) -> None:
        self.project.db.execute(
            "UPDATE jobs SET step = ?, total_steps = ?, progress = ?, heartbeat = ? WHERE id = ?",
            [step, total, step / max(1, total), time.time(), self.job_id],
        )
        self.project.db.conn.commit()

    def sample(self, step: int, prompt: str, seed: int, image: Image.Image, settings: dict[str, Any]) -> str:
        buf = io.BytesIO()
        image.save(buf, "PNG")
        digest = self.project.put_blob(buf.getvalue(), "png")
        with self.project.transaction():
            self.project.db["samples"].insert(
                {"job_id": self.job_id, "step": step, "prompt": prompt, "seed": seed, "image_hash": digest, "settings": dumps(settings)}
            )
        return digest

    def control(self) -> str | None:
        row = self.project.db.execute("SELECT control FROM jobs WHERE id = ?", [self.job_id]).fetchone()
        flag = row[0] if row else None
        if flag in ONE_SHOT:
            self.project.db.execute("UPDATE jobs SET control = NULL WHERE id = ? AND control = ?", [self.job_id, flag])
            self.project.db.conn.commit()
        return flag

    def model_saved(self, path: Path, name: str, card: dict[str, Any], kind: str = "base", parent: int | None = None) -> int | None:
        try:
            rel = str(path.relative_to(self.project.root))
        except ValueError:
            rel = str(path)
        with self.project.transaction():
            return int(self.project.db["models"].insert(
                {"kind": kind, "name": name, "path": rel, "parent_id": parent, "job_id": self.job_id, "card": dumps(card)}
            ).last_pk)

    def close(self) -> None:
        if self._log:
            self._log.close()
