"""The job state machine: the one module that writes a job's ``state``.

Several processes move a job along (the service's runner claims and reaps it, the worker runs and
ends it, a route resumes or stops it, the CLI runs it in the foreground), so every move is a
compare-and-set inside a write transaction: it lands only when the job is still in a state the
move may start from, and otherwise reports who got there first instead of overwriting them.

    queued -> running | stopped
    running -> running (heartbeat fields) | paused | stopped | done | failed | interrupted
    paused, stopped, interrupted, failed -> queued (resume through the queue) | running (resume in the foreground)
    done -> (nothing)
"""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from .project import write_transaction

STATES = ("queued", "running", "paused", "stopped", "done", "failed", "interrupted")
FINAL = ("stopped", "done", "failed")
RESUMABLE_FROM = ("paused", "stopped", "interrupted", "failed")
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "queued": ("running", "stopped"),
    "running": ("running", "paused", "stopped", "done", "failed", "interrupted"),
    **{state: ("queued", "running") for state in RESUMABLE_FROM},
    "done": (),
}


class JobStateError(ValueError):
    """A move the state machine does not allow (the message says from where to where)."""


def sources(to: str) -> tuple[str, ...]:
    """The states a job may be in to move to ``to``."""
    if to not in STATES:
        raise JobStateError(f"unknown job state {to!r}; one of {', '.join(STATES)}")
    return tuple(s for s, targets in TRANSITIONS.items() if to in targets)


def create(db: Database, **fields: Any) -> int:
    """A new job row, queued."""
    with write_transaction(db):
        return int(db["jobs"].insert({**fields, "state": "queued"}).last_pk)


def move(db: Database, job_id: int, to: str, *, only_from: tuple[str, ...] | None = None, **fields: Any) -> bool:
    """Move job ``job_id`` to ``to`` (setting ``fields`` with it) if it is in a state that allows it.

    ``only_from`` narrows the allowed starting states (e.g. the runner claims only queued jobs).
    Returns False when the job is in another state (another process moved it first); raises
    ``JobStateError`` when no state could ever move there this way."""
    allowed = sources(to)
    if only_from is not None:
        bad = [s for s in only_from if s not in allowed]
        if bad:
            raise JobStateError(f"a job cannot move from {', '.join(bad)} to {to}")
        allowed = only_from
    if "state" in fields:
        raise JobStateError("pass the new state as 'to', not as a field")
    sets = ", ".join(["state = ?", *(f"{k} = ?" for k in fields)])
    marks = ", ".join("?" for _ in allowed)
    with write_transaction(db):
        cur = db.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND state IN ({marks})", [to, *fields.values(), job_id, *allowed])
        return cur.rowcount == 1


def set_control(db: Database, job_id: int, action: str | None) -> bool:
    """Raise a control flag (stop, pause, sample, save) for the worker to obey; only a running job takes one."""
    with write_transaction(db):
        return db.execute("UPDATE jobs SET control = ? WHERE id = ? AND state = 'running'", [action, job_id]).rowcount == 1


def require(db: Database, job_id: int, to: str, *, only_from: tuple[str, ...] | None = None, **fields: Any) -> None:
    """``move``, or a ``JobStateError`` naming the job's current state."""
    if not move(db, job_id, to, only_from=only_from, **fields):
        row = db.execute("SELECT state FROM jobs WHERE id = ?", [job_id]).fetchone()
        if row is None:
            raise KeyError(f"no job {job_id}")
        raise JobStateError(f"job {job_id} is {row[0]}; it cannot become {to}")
