"""Preference ratings: the pair queue and the judgements, one row per judgement.

A pair (``comparisons``) holds a prompt, two images and their generation records; a judgement
(``ratings``) says which one a rater preferred, which side each was shown on, how long the
decision took and whether it was a repeat of an earlier judgement (slipped in to measure the
rater's consistency). Every judgement is one small transaction, so a rating submitted is a rating
kept, whatever happens to the Studio or the backend afterwards; an undo marks it undone and keeps
it for audit. The queue is per rater: a pair leaves a rater's queue once that rater judged it
(a skip included), and comes back if the judgement is undone.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

from sqlite_utils import Database

from .project import write_transaction

CHOICES = ("a", "b", "tie", "both_bad", "skip")


def _now() -> str:
    return "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


def heldout_prompt(prompt: str, share: float, seed: int) -> bool:
    """Whether a prompt falls in the held-out share (every judgement of a prompt on one side of a split)."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{prompt}".encode()).digest()[:8], "big")
    return h / 2**64 < share


def queue_pair(db: Database, prompt: str, image_a: str, image_b: str, meta: dict[str, Any] | None = None, job_id: int | None = None) -> int:
    with write_transaction(db):
        cur = db.execute("INSERT INTO comparisons (prompt, image_a, image_b, meta, job_id) VALUES (?, ?, ?, ?, ?)",
                         [prompt, image_a, image_b, json.dumps(meta or {}), job_id])
        return int(cur.lastrowid)


def left_side(comparison_id: int, rater: str) -> str:
    """Which image a rater sees on the left: random across pairs, the same on every fetch of one pair."""
    return "a" if hashlib.sha256(f"{comparison_id}:{rater}".encode()).digest()[0] % 2 == 0 else "b"


def _pair(row: dict[str, Any], rater: str, repeat_of: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {**row, "meta": json.loads(row.get("meta") or "{}"), "repeat": repeat_of is not None}
    # a repeat is shown the other way round from the first time, so agreeing cannot be a habit of one side
    out["left"] = ("b" if repeat_of["shown_left"] == "a" else "a") if repeat_of else left_side(row["id"], rater)
    return out


def _rows(db: Database, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cur = db.execute(sql, params)
    cols = [c[0] for c in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def next_pairs(db: Database, rater: str = "", count: int = 1, exclude: list[int] | None = None, repeat_rate: float = 0.0,
               rng: random.Random | None = None) -> list[dict[str, Any]]:
    """Up to ``count`` pairs this rater has not judged, oldest first, leaving out ``exclude`` (pairs the
    Studio already holds). With ``repeat_rate`` > 0 each slot is, with that probability, a pair the
    rater judged before (not among their last five), flagged ``repeat``."""
    exclude = list(exclude or [])
    rng = rng or random.Random()
    held = f"c.id NOT IN ({','.join('?' for _ in exclude)})" if exclude else "1"
    fresh = _rows(db, f"""SELECT c.id, c.prompt, c.image_a, c.image_b, c.meta, c.job_id FROM comparisons c
                          WHERE {held} AND NOT EXISTS (
                              SELECT 1 FROM ratings r WHERE r.comparison_id = c.id AND r.rater = ? AND r.undone IS NULL)
                          ORDER BY c.id LIMIT ?""", [*exclude, rater, count])
    out: list[dict[str, Any]] = []
    candidates: list[dict[str, Any]] | None = None
    for row in fresh:
        if repeat_rate > 0 and rng.random() < repeat_rate:
            if candidates is None:
                candidates = [c for c in _repeatable(db, rater) if c["id"] not in exclude]
            if candidates:
                first = candidates.pop(rng.randrange(len(candidates)))
                out.append(_pair({k: v for k, v in first.items() if k != "shown_left"}, rater, repeat_of=first))
                continue
        out.append(_pair(row, rater))
    return out


def _repeatable(db: Database, rater: str) -> list[dict[str, Any]]:
    """Pairs this rater judged (not skipped, not yet repeated, not among their last five judgements)."""
    return _rows(db, """SELECT c.id, c.prompt, c.image_a, c.image_b, c.meta, c.job_id, r.shown_left FROM ratings r
                        JOIN comparisons c ON c.id = r.comparison_id
                        WHERE r.rater = ? AND r.undone IS NULL AND r.is_repeat = 0 AND r.choice != 'skip'
                          AND r.id NOT IN (SELECT id FROM ratings WHERE rater = ? AND undone IS NULL ORDER BY id DESC LIMIT 5)
                          AND NOT EXISTS (SELECT 1 FROM ratings x WHERE x.comparison_id = c.id AND x.rater = ? AND x.is_repeat = 1 AND x.undone IS NULL)
                        ORDER BY r.id""", [rater, rater, rater])


def record(db: Database, comparison_id: int, choice: str, shown_left: str, rater: str = "", decision_ms: int | None = None,
           repeat: bool = False) -> int:
    """One judgement, one transaction; returns its id."""
    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {', '.join(CHOICES)}, not {choice!r}")
    with write_transaction(db):
        if db.execute("SELECT 1 FROM comparisons WHERE id = ?", [comparison_id]).fetchone() is None:
            raise KeyError(f"no comparison {comparison_id}")
        cur = db.execute("INSERT INTO ratings (comparison_id, choice, shown_left, rater, decision_ms, is_repeat) VALUES (?, ?, ?, ?, ?, ?)",
                         [comparison_id, choice, shown_left, rater, decision_ms, int(repeat)])
        return int(cur.lastrowid)


def undo(db: Database, rating_id: int | None = None, rater: str = "") -> dict[str, Any] | None:
    """Mark a judgement undone (``rating_id``, or the rater's latest); returns it, or None when there is none.
    A judgement that came from a ranking takes the whole ranking with it (``undone_ratings`` says how many)."""
    with write_transaction(db):
        if rating_id is None:
            row = db.execute("SELECT id FROM ratings WHERE rater = ? AND undone IS NULL ORDER BY id DESC LIMIT 1", [rater]).fetchone()
            if row is None:
                return None
            rating_id = int(row[0])
        found = db.execute("SELECT ranking_id FROM ratings WHERE id = ? AND undone IS NULL", [rating_id]).fetchone()
        if found is None:
            return None
        if found[0] is None:
            n = db.execute(f"UPDATE ratings SET undone = {_now()} WHERE id = ?", [rating_id]).rowcount
        else:
            db.execute(f"UPDATE rankings SET undone = {_now()} WHERE id = ? AND undone IS NULL", [found[0]])
            n = db.execute(f"UPDATE ratings SET undone = {_now()} WHERE ranking_id = ? AND undone IS NULL", [found[0]]).rowcount
    return {**history(db, rating_id=rating_id, include_undone=True)[0], "undone_ratings": n}


# --- rankings: k images of one prompt ordered at once ------------------------------------------------

def _group_rows(db: Database, group: str) -> list[dict[str, Any]]:
    return _rows(db, "SELECT id, prompt, image_a, image_b, meta, job_id FROM comparisons WHERE json_extract(meta, '$.group') = ? ORDER BY id", [group])


def _group_images(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The group's images in the order the pairs stage made them, each with its generation record."""
    images: dict[str, dict[str, Any]] = {}
    for row in rows:
        meta = json.loads(row["meta"] or "{}")
        for side in ("a", "b"):
            images.setdefault(row[f"image_{side}"], {"image": row[f"image_{side}"], "record": meta.get(side, {})})
    return list(images.values())


def next_rankings(db: Database, rater: str = "", count: int = 1, exclude: list[str] | None = None) -> list[dict[str, Any]]:
    """Up to ``count`` groups (one prompt's images from one pairs job, three or more) that this rater
    has judged none of, oldest first, leaving out the groups in ``exclude``. Each comes with its images
    in the order to show them: shuffled per rater and group, the same on every fetch."""
    exclude = list(exclude or [])
    held = f"g NOT IN ({','.join('?' for _ in exclude)})" if exclude else "1"
    groups = _rows(db, f"""SELECT g, min(id) AS first FROM (
                               SELECT c.id, json_extract(c.meta, '$.group') AS g,
                                      EXISTS (SELECT 1 FROM ratings r WHERE r.comparison_id = c.id AND r.rater = ? AND r.undone IS NULL) AS judged
                               FROM comparisons c)
                           WHERE g IS NOT NULL AND {held} GROUP BY g HAVING count(*) >= 3 AND sum(judged) = 0
                           ORDER BY first LIMIT ?""", [rater, *exclude, count])
    out: list[dict[str, Any]] = []
    for g in groups:
        rows = _group_rows(db, g["g"])
        images = _group_images(rows)
        random.Random(f"{g['g']}:{rater}").shuffle(images)
        out.append({"group": g["g"], "prompt": rows[0]["prompt"], "images": images, "pairs": len(rows), "job_id": rows[0]["job_id"]})
    return out


def record_ranking(db: Database, group: str, ranked: list[str], shown: list[str], rater: str = "", decision_ms: int | None = None,
                   skip: bool = False) -> dict[str, Any]:
    """One ranking, one transaction: the ranking row and a pair judgement for each of the group's pairs
    (the image ranked higher wins; a skipped ranking skips every pair). ``ranked`` lists the group's
    images best first, ``shown`` the order they were shown in (left to right)."""
    with write_transaction(db):
        rows = _group_rows(db, group)
        if not rows:
            raise KeyError(f"no group {group!r}")
        images = {im["image"] for im in _group_images(rows)}
        for name, order in (("shown", shown), *(() if skip else (("ranked", ranked),))):
            if sorted(order) != sorted(images):
                raise ValueError(f"'{name}' must list each of the group's {len(images)} images exactly once")
        judged = db.execute(f"""SELECT count(*) FROM ratings WHERE rater = ? AND undone IS NULL
                                AND comparison_id IN ({','.join('?' for _ in rows)})""", [rater, *[r["id"] for r in rows]]).fetchone()[0]
        if judged:
            raise ValueError(f"{judged} of this group's pairs are already judged by {rater or 'the anonymous rater'}; undo them first")
        rid = int(db.execute("INSERT INTO rankings (prompt, grp, ranked, shown, rater, decision_ms, skipped) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             [rows[0]["prompt"], group, json.dumps([] if skip else ranked), json.dumps(shown), rater, decision_ms, int(skip)]).lastrowid)
        place = {im: n for n, im in enumerate(ranked)}
        pos = {im: n for n, im in enumerate(shown)}
        ids = []
        for r in rows:
            a, b = r["image_a"], r["image_b"]
            choice = "skip" if skip else ("a" if place[a] < place[b] else "b")
            cur = db.execute("INSERT INTO ratings (comparison_id, choice, shown_left, rater, decision_ms, ranking_id) VALUES (?, ?, ?, ?, ?, ?)",
                             [r["id"], choice, "a" if pos[a] < pos[b] else "b", rater, decision_ms, rid])
            ids.append(int(cur.lastrowid))
    return {"id": rid, "group": group, "ratings": ids}


def history(db: Database, *, rater: str | None = None, prompt: str | None = None, model: str | None = None, choice: str | None = None,
            rating_id: int | None = None, include_undone: bool = False, limit: int = 200) -> list[dict[str, Any]]:
    """Judgements newest first, with their pair; filters match the rater, a prompt substring, a model
    named in either image's generation record, and the choice."""
    where, params = [], []
    if not include_undone:
        where.append("r.undone IS NULL")
    if rater is not None:
        where.append("r.rater = ?")
        params.append(rater)
    if prompt:
        where.append("c.prompt LIKE ? ESCAPE '\\'")
        params.append("%" + prompt.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
    if model:
        where.append("(json_extract(c.meta, '$.a.model') = ? OR json_extract(c.meta, '$.b.model') = ?)")
        params += [model, model]
    if choice:
        where.append("r.choice = ?")
        params.append(choice)
    if rating_id is not None:
        where.append("r.id = ?")
        params.append(rating_id)
    sql = f"""SELECT r.id, r.comparison_id, r.choice, r.shown_left, r.rater, r.decision_ms, r.is_repeat, r.created, r.undone,
                     c.prompt, c.image_a, c.image_b, c.meta, c.job_id
              FROM ratings r JOIN comparisons c ON c.id = r.comparison_id
              {"WHERE " + " AND ".join(where) if where else ""} ORDER BY r.id DESC LIMIT ?"""
    rows = _rows(db, sql, [*params, limit])
    for row in rows:
        row["meta"] = json.loads(row["meta"] or "{}")
    return rows


def stats(db: Database, rater: str | None = None) -> dict[str, Any]:
    """Progress and quality of the ratings: queued and rated pairs, the tally per choice, the share
    of a/b picks that went to the left image (0.5 without a side bias), and agreement on repeats."""
    who, params = ("AND rater = ?", [rater]) if rater is not None else ("", [])
    tally = dict(db.execute(f"SELECT choice, count(*) FROM ratings WHERE undone IS NULL AND is_repeat = 0 {who} GROUP BY choice", params).fetchall())
    total = db.execute("SELECT count(*) FROM comparisons").fetchone()[0]
    rated = db.execute(f"SELECT count(DISTINCT comparison_id) FROM ratings WHERE undone IS NULL {who}", params).fetchone()[0]
    picks = db.execute(f"SELECT sum(choice = shown_left), count(*) FROM ratings WHERE undone IS NULL AND choice IN ('a', 'b') {who}", params).fetchone()
    pairs = db.execute(f"""SELECT first.choice = again.choice FROM ratings again
                           JOIN ratings first ON first.comparison_id = again.comparison_id AND first.rater = again.rater
                             AND first.is_repeat = 0 AND first.undone IS NULL
                           WHERE again.is_repeat = 1 AND again.undone IS NULL {who.replace('rater', 'again.rater')}""", params).fetchall()
    ranked = db.execute(f"SELECT count(*) FROM rankings WHERE undone IS NULL AND skipped = 0 {who}", params).fetchone()[0]
    return {
        "rankings": int(ranked), "pairs": total, "rated": rated, "queued": total - rated if rater is not None else None, "tally": {c: int(tally.get(c, 0)) for c in CHOICES},
        "left_share": (picks[0] / picks[1]) if picks[1] else None, "left_n": int(picks[1] or 0),
        "repeats": len(pairs), "agreement": (sum(int(a) for (a,) in pairs) / len(pairs)) if pairs else None,
    }
