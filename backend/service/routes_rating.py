"""Routes for preference ratings: queue pairs, serve the next pair, record a choice, undo.

Each judgement keeps prompt, both images, which side each was shown on, rater, decision time
and any generation settings (seeds, checkpoints, sampler) in ``meta``. A submission is one
small transaction, so a rating written is a rating kept.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field, field_validator

from .params import Id

router = APIRouter()
HASH = re.compile(r"^[0-9a-f]{64}$")


def _state(request: Request):
    return request.app.state.service


class PairCreate(BaseModel):
    prompt: str = Field(..., min_length=1, max_length=2000)
    image_a: str
    image_b: str
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("image_a", "image_b")
    @classmethod
    def _hash(cls, v: str) -> str:
        if not HASH.match(v):
            raise ValueError("must be a 64-character content hash")
        return v


class Choice(BaseModel):
    choice: Literal["a", "b", "tie", "both_bad", "skip"]
    shown_left: Literal["a", "b"] = "a"
    rater: str = Field("", max_length=100)
    decision_ms: int | None = Field(None, ge=0, le=86_400_000)


class Undo(BaseModel):
    rater: str = Field("", max_length=100)


def _row(request: Request, cid: Id) -> dict[str, Any]:
    rows = _state(request).rows("SELECT * FROM comparisons WHERE id = ?", [cid])
    if not rows:
        raise HTTPException(404, f"no comparison {cid}")
    row = rows[0]
    row["meta"] = json.loads(row["meta"] or "{}")
    return row


@router.post("/comparisons", status_code=201)
def create_pair(request: Request, body: PairCreate) -> dict[str, Any]:
    """Queue a pair of images of one prompt for rating."""
    db = _state(request).db()
    with db.conn:
        cur = db.execute("INSERT INTO comparisons (prompt, image_a, image_b, meta) VALUES (?, ?, ?, ?)",
                         [body.prompt, body.image_a, body.image_b, json.dumps(body.meta)])
    return _row(request, int(cur.lastrowid))


@router.get("/comparisons/next")
def next_pair(request: Request) -> dict[str, Any] | None:
    """The oldest pair nobody has judged yet (null when the queue is empty)."""
    rows = _state(request).rows("SELECT id FROM comparisons WHERE choice IS NULL ORDER BY id LIMIT 1")
    return _row(request, rows[0]["id"]) if rows else None


@router.post("/comparisons/{cid}/choice")
async def submit(request: Request, cid: Id, body: Choice) -> dict[str, Any]:
    """Record a judgement. Runs on the event loop: one indexed UPDATE in WAL mode takes well under
    a millisecond, less than handing it to a worker thread would."""
    db = _state(request).db()
    with db.conn:
        cur = db.execute(
            "UPDATE comparisons SET choice = ?, shown_left = ?, rater = ?, decision_ms = ?, created = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?",
            [body.choice, body.shown_left, body.rater, body.decision_ms, cid],
        )
    if cur.rowcount == 0:
        raise HTTPException(404, f"no comparison {cid}")
    return {"id": cid, "choice": body.choice}


@router.post("/comparisons/undo")
def undo(request: Request, body: Undo) -> dict[str, Any]:
    """Take back this rater's most recent judgement; the pair returns to the queue."""
    db = _state(request).db()
    row = db.execute("SELECT id FROM comparisons WHERE choice IS NOT NULL AND rater = ? ORDER BY created DESC, id DESC LIMIT 1", [body.rater]).fetchone()
    if row is None:
        raise HTTPException(404, "nothing to undo")
    with db.conn:
        db.execute("UPDATE comparisons SET choice = NULL, decision_ms = NULL WHERE id = ?", [row[0]])
    return _row(request, row[0])


@router.get("/comparisons")
def comparisons(request: Request, judged: bool | None = None, limit: int = Query(200, ge=1, le=5000)) -> dict[str, Any]:
    st = _state(request)
    where = "" if judged is None else ("WHERE choice IS NOT NULL" if judged else "WHERE choice IS NULL")
    total = st.db().execute(f"SELECT count(*) FROM comparisons {where}").fetchone()[0]
    rows = st.rows(f"SELECT id, prompt, image_a, image_b, choice, shown_left, rater, decision_ms, created FROM comparisons {where} ORDER BY id DESC LIMIT ?", [limit])
    return {"total": total, "items": rows}
