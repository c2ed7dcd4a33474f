"""Routes for preference ratings: queue pairs, serve the next pairs (prefetch), record a judgement,
undo, history and the rater's figures. The rules live in ``store/ratings.py``; a submission is one
small transaction, so a rating written is a rating kept."""

from __future__ import annotations

import re
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field, field_validator

from backend.store import ratings

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
    repeat: bool = False


class Ranking(BaseModel):
    group: str = Field(..., min_length=1, max_length=200)
    ranked: list[str] = Field(default_factory=list, max_length=64, description="the group's images, best first (empty when skipped)")
    shown: list[str] = Field(..., min_length=3, max_length=64, description="the group's images in the order they were shown")
    rater: str = Field("", max_length=100)
    decision_ms: int | None = Field(None, ge=0, le=86_400_000)
    skip: bool = False


class Undo(BaseModel):
    rater: str = Field("", max_length=100)


@router.post("/comparisons", status_code=201)
def create_pair(request: Request, body: PairCreate) -> dict[str, Any]:
    """Queue a pair of images of one prompt for rating."""
    db = _state(request).db()
    cid = ratings.queue_pair(db, body.prompt, body.image_a, body.image_b, body.meta)
    return _state(request).rows("SELECT id, prompt, image_a, image_b, job_id, meta, created FROM comparisons WHERE id = ?", [cid])[0]


@router.get("/comparisons/next")
def next_pair(request: Request, rater: str = Query("", max_length=100)) -> dict[str, Any] | None:
    """The oldest pair this rater has not judged (null when their queue is empty)."""
    pairs = ratings.next_pairs(_state(request).db(), rater, 1)
    return pairs[0] if pairs else None


@router.get("/comparisons/queue")
def queue(
    request: Request,
    rater: str = Query("", max_length=100),
    count: int = Query(8, ge=1, le=100),
    exclude: str = Query("", max_length=4000, description="comma-separated pair ids the caller already holds"),
    repeat_rate: float = Query(0.0, ge=0.0, le=0.5),
) -> list[dict[str, Any]]:
    """The next ``count`` pairs for a rater (to prefetch), each with the side its image a is shown on."""
    try:
        held = [int(x) for x in exclude.split(",") if x.strip()]
    except ValueError:
        raise HTTPException(422, "exclude must be comma-separated pair ids") from None
    return ratings.next_pairs(_state(request).db(), rater, count, held, repeat_rate)


@router.post("/comparisons/{cid}/choice")
def submit(request: Request, cid: Id, body: Choice) -> dict[str, Any]:
    """Record a judgement (one row, one transaction)."""
    try:
        rid = ratings.record(_state(request).db(), cid, body.choice, body.shown_left, body.rater, body.decision_ms, body.repeat)
    except KeyError:
        raise HTTPException(404, f"no comparison {cid}") from None
    return {"id": rid, "comparison_id": cid, "choice": body.choice}


@router.get("/rankings/queue")
def ranking_queue(
    request: Request,
    rater: str = Query("", max_length=100),
    count: int = Query(4, ge=1, le=50),
    exclude: list[str] = Query([], description="groups the caller already holds"),
) -> list[dict[str, Any]]:
    """The next groups of three or more images of one prompt that this rater has not judged, to rank at once."""
    return ratings.next_rankings(_state(request).db(), rater, count, exclude)


@router.post("/rankings", status_code=201)
def submit_ranking(request: Request, body: Ranking) -> dict[str, Any]:
    """Record a ranking: one transaction, one judgement per pair it implies (409 when some are judged already)."""
    try:
        return ratings.record_ranking(_state(request).db(), body.group, body.ranked, body.shown, body.rater, body.decision_ms, body.skip)
    except KeyError:
        raise HTTPException(404, f"no group {body.group!r}") from None
    except ValueError as exc:
        raise HTTPException(409 if "already judged" in str(exc) else 422, str(exc)) from None


@router.post("/comparisons/undo")
def undo(request: Request, body: Undo) -> dict[str, Any]:
    """Take back this rater's most recent judgement (kept, marked undone); the pair returns to their queue."""
    row = ratings.undo(_state(request).db(), rater=body.rater)
    if row is None:
        raise HTTPException(404, "nothing to undo")
    return row


@router.post("/ratings/{rid}/undo")
def undo_rating(request: Request, rid: Id) -> dict[str, Any]:
    """Take back one judgement from the history."""
    row = ratings.undo(_state(request).db(), rating_id=rid)
    if row is None:
        raise HTTPException(404, f"no live rating {rid}")
    return row


@router.get("/ratings")
def history(
    request: Request,
    rater: str | None = Query(None, max_length=100),
    prompt: str | None = Query(None, max_length=200),
    model: str | None = Query(None, max_length=500),
    choice: Literal["a", "b", "tie", "both_bad", "skip"] | None = None,
    include_undone: bool = False,
    limit: int = Query(200, ge=1, le=5000),
) -> list[dict[str, Any]]:
    """Judgements newest first, filtered by rater, prompt text, model and choice."""
    return ratings.history(_state(request).db(), rater=rater, prompt=prompt, model=model, choice=choice, include_undone=include_undone, limit=limit)


@router.get("/ratings/stats")
def stats(request: Request, rater: str | None = Query(None, max_length=100)) -> dict[str, Any]:
    """Rated and queued pairs, the tally, the share of left picks and agreement on repeated pairs."""
    return ratings.stats(_state(request).db(), rater)


class Export(BaseModel):
    rater: str | None = Field(None, max_length=100)


@router.post("/ratings/export")
def export(request: Request, body: Export) -> dict[str, Any]:
    """Write the judgements as Pick-a-Pic-style parquet into the project's exports/ (fetch it with /files)."""
    import time

    from backend.data.preferences import export_ratings

    project = _state(request).project()
    out = project.root / "exports" / f"ratings-{time.strftime('%Y%m%d-%H%M%S')}.parquet"
    report = export_ratings(project, out, body.rater).to_json()
    report["path"] = str(out.relative_to(project.root))
    return report


MAX_IMPORT = 1 << 30


@router.post("/ratings/import")
async def import_file(request: Request, rater: str | None = Query(None, max_length=100), name: str = Query("upload.parquet", max_length=200)) -> dict[str, Any]:
    """Import a Pick-a-Pic-style parquet file sent as the request body; a bad file imports nothing (422 says why)."""
    import asyncio
    import tempfile
    from pathlib import Path

    from backend.data.preferences import PreferenceImportError, import_ratings

    data = await request.body()
    if len(data) > MAX_IMPORT:
        raise HTTPException(413, f"file larger than {MAX_IMPORT >> 20} MB")
    project = _state(request).project()
    folder = project.root / "cache" / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = Path(tmp) / (re.sub(r"[^A-Za-z0-9._-]", "_", name) or "upload.parquet")
        path.write_bytes(data)

        def run() -> dict[str, Any]:
            from backend.store import Project

            with Project.open(project.root) as own:  # its own connection: this runs in a worker thread
                return import_ratings(own, path, rater)

        try:
            return await asyncio.to_thread(run)
        except PreferenceImportError as exc:
            raise HTTPException(422, str(exc).replace(str(path.parent) + "/", "")) from None


@router.get("/comparisons")
def comparisons(request: Request, limit: int = Query(200, ge=1, le=5000)) -> dict[str, Any]:
    """Queued pairs, newest first, with how many live judgements each has."""
    st = _state(request)
    total = st.db().execute("SELECT count(*) FROM comparisons").fetchone()[0]
    rows = st.rows("""SELECT c.id, c.prompt, c.image_a, c.image_b, c.job_id, c.created,
                             (SELECT count(*) FROM ratings r WHERE r.comparison_id = c.id AND r.undone IS NULL) AS judgements
                      FROM comparisons c ORDER BY c.id DESC LIMIT ?""", [limit])
    return {"total": total, "items": rows}
