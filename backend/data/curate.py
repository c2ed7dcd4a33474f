"""Curation: flags and choices, never deleting anything the user imported.

``curate`` recomputes a dataset's automatic flags from its settings: exact duplicates (same
content hash) and near duplicates (perceptual hashes within a Hamming threshold) grouped in
clusters with one keeper (the user's chosen keeper, else the highest resolution), plus
filters on resolution, aspect, caption length and blur. Every flag says why
(``near_duplicate_of:12``, ``low_resolution:32x32``). The curated view is every item without
a flag; the user's own flags (``manual:...``) and keeper choices survive a recompute.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from backend.store import Project, dumps

from .view import excluded

AUTO_PREFIXES = ("duplicate_of", "near_duplicate_of", "low_resolution", "aspect", "caption_empty", "caption_short", "caption_long", "blurry")


@dataclass
class CurationSettings:
    near_threshold: int = 20  # bits of 256; re-encodes land within ~12, distinct ShapesWorld scenes 38+
    min_side: int = 16
    max_aspect: float = 4.0
    min_caption_words: int = 1
    max_caption_words: int = 120
    min_blur: float | None = None  # None = blur filter off

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> CurationSettings:
        known = {k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class CurationReport:
    dataset: str
    items: int
    curated: int
    flags: Counter = field(default_factory=Counter)
    exact_clusters: list[list[int]] = field(default_factory=list)  # keeper first
    near_clusters: list[list[int]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "items": self.items, "curated": self.curated, "flags": dict(self.flags),
                "exact_clusters": self.exact_clusters, "near_clusters": self.near_clusters, "settings": self.settings}

    def summary(self) -> str:
        lines = [f"'{self.dataset}': {self.curated} of {self.items} items in the curated view"]
        lines += [f"  {k}: {n}" for k, n in sorted(self.flags.items())]
        lines.append(f"  exact-duplicate clusters: {len(self.exact_clusters)}, near-duplicate clusters: {len(self.near_clusters)}")
        return "\n".join(lines)


def _hash_bits(hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``<64 hex>/<rrggbb>`` hashes -> (N, 4) uint64 DCT bits and (N, 3) mean colours."""
    bits = np.zeros((len(hashes), 4), dtype=np.uint64)
    colour = np.zeros((len(hashes), 3), dtype=np.int16)
    for i, full in enumerate(hashes):
        h, _, c = full.partition("/")
        h = h.rjust(64, "0")[-64:]
        bits[i] = [int(h[k : k + 16], 16) for k in range(0, 64, 16)]
        if len(c) == 6:
            colour[i] = [int(c[k : k + 2], 16) for k in (0, 2, 4)]
    return bits, colour


def near_pairs(hashes: list[str], threshold: int, max_colour_gap: int = 24, cells: int = 1 << 21) -> list[tuple[int, int]]:
    """Index pairs (i < j) within ``threshold`` DCT bits and ``max_colour_gap`` mean colour.

    Vectorised over blocks of rows against the rows after them; a block holds about ``cells``
    comparisons whatever the dataset size, so memory stays flat (a few tens of MB) as N grows."""
    bits, colour = _hash_bits(hashes)
    pairs: list[tuple[int, int]] = []
    n = len(hashes)
    chunk = max(16, min(1024, cells // max(n, 1)))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        rest_bits, rest_colour = bits[start:], colour[start:]
        dist = np.zeros((stop - start, n - start), dtype=np.uint16)
        for word in range(bits.shape[1]):
            dist += np.bitwise_count(bits[start:stop, None, word] ^ rest_bits[None, :, word])
        close = dist <= threshold
        for c in range(3):
            close &= np.abs(colour[start:stop, None, c] - rest_colour[None, :, c]) <= max_colour_gap
        ii, jj = np.nonzero(close)
        for i, j in zip(ii + start, jj + start):
            if i < j:
                pairs.append((int(i), int(j)))
    return pairs


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _keeper(members: list[int], rows: list[dict[str, Any]]) -> int:
    chosen = [m for m in members if "chosen_keeper" in rows[m]["flags"]]
    if chosen:
        return chosen[0]
    return max(members, key=lambda m: (rows[m]["width"] * rows[m]["height"], -rows[m]["id"]))


def _flag_clusters(groups, rows: list[dict[str, Any]], flag: str, clusters: list[list[int]]) -> set[int]:
    """Every group of two or more keeps one member; the others get ``flag:<keeper id>``. Returns the flagged rows."""
    flagged: set[int] = set()
    for members in groups:
        if len(members) > 1:
            keep = _keeper(members, rows)
            clusters.append([rows[keep]["id"]] + [rows[m]["id"] for m in members if m != keep])
            for m in members:
                if m != keep:
                    rows[m]["flags"].append(f"{flag}:{rows[keep]['id']}")
                    flagged.add(m)
    return flagged


def curate(project: Project, dataset: str, settings: CurationSettings | None = None) -> CurationReport:
    """Recompute automatic flags of ``dataset`` (one transaction) and store the settings."""
    ds = project.dataset_id(dataset)
    if settings is None:
        stored = project.db.execute("SELECT curation FROM datasets WHERE id = ?", [ds]).fetchone()[0]
        settings = CurationSettings.from_json(json.loads(stored) if stored else None)
    cur = project.db.execute("SELECT id, hash, phash, width, height, caption, blur, flags FROM items WHERE dataset_id = ? ORDER BY id", [ds])
    cols = [c[0] for c in cur.description]
    rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    for r in rows:
        r["flags"] = [f for f in json.loads(r["flags"] or "[]") if not f.startswith(AUTO_PREFIXES)]
    report = CurationReport(dataset, len(rows), 0, settings=asdict(settings))
    # exact duplicates, then near duplicates among the rest
    by_hash: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_hash.setdefault(r["hash"], []).append(i)
    exact_dupe = _flag_clusters(by_hash.values(), rows, "duplicate_of", report.exact_clusters)
    cand = [i for i, r in enumerate(rows) if i not in exact_dupe and r["phash"]]
    uf = _UnionFind(len(cand))
    for a, b in near_pairs([rows[i]["phash"] for i in cand], settings.near_threshold):
        uf.union(a, b)
    groups: dict[int, list[int]] = {}
    for k in range(len(cand)):
        groups.setdefault(uf.find(k), []).append(cand[k])
    _flag_clusters(groups.values(), rows, "near_duplicate_of", report.near_clusters)
    # filters
    for r in rows:
        w, h = r["width"], r["height"]
        if min(w, h) < settings.min_side:
            r["flags"].append(f"low_resolution:{w}x{h}")
        if max(w, h) / max(1, min(w, h)) > settings.max_aspect:
            r["flags"].append(f"aspect:{max(w, h) / min(w, h):.2f}")
        words = len((r["caption"] or "").split())
        if words == 0:
            r["flags"].append("caption_empty")
        elif words < settings.min_caption_words:
            r["flags"].append(f"caption_short:{words}")
        elif words > settings.max_caption_words:
            r["flags"].append(f"caption_long:{words}")
        if settings.min_blur is not None and r["blur"] is not None and r["blur"] < settings.min_blur:
            r["flags"].append(f"blurry:{r['blur']:.1f}")
    with project.transaction():
        for r in rows:
            project.db.execute("UPDATE items SET flags = ? WHERE id = ?", [json.dumps(r["flags"]), r["id"]])
        project.db.execute("UPDATE datasets SET curation = ? WHERE id = ?", [dumps(asdict(settings)), ds])
    for r in rows:
        for f in r["flags"]:
            if f != "chosen_keeper":
                report.flags[f.split(":")[0]] += 1
    report.curated = sum(1 for r in rows if not excluded(r["flags"]))
    return report


def choose_keeper(project: Project, item_id: int) -> None:
    """Make ``item_id`` the keeper of its duplicate cluster, then recompute its dataset's flags."""
    row = project.db.execute("SELECT dataset_id, flags FROM items WHERE id = ?", [item_id]).fetchone()
    if row is None:
        raise KeyError(f"no item {item_id}")
    ds, flags = row
    flags = json.loads(flags or "[]")
    keeper = next((int(f.split(":")[1]) for f in flags if f.startswith(("duplicate_of:", "near_duplicate_of:"))), item_id)
    members = [keeper] + [
        r[0] for r in project.db.execute(
            "SELECT id FROM items WHERE dataset_id = ? AND flags LIKE ?", [ds, f'%duplicate_of:{keeper}"%']
        )
    ]
    with project.transaction():
        for mid in set(members) | {item_id}:
            mflags = json.loads(project.db.execute("SELECT flags FROM items WHERE id = ?", [mid]).fetchone()[0] or "[]")
            mflags = [f for f in mflags if f != "chosen_keeper"] + (["chosen_keeper"] if mid == item_id else [])
            project.db.execute("UPDATE items SET flags = ? WHERE id = ?", [json.dumps(mflags), mid])
    name = project.db.execute("SELECT name FROM datasets WHERE id = ?", [ds]).fetchone()[0]
    curate(project, name)


def mixture(project: Project, dataset: str, targets: dict[str, float] | None = None, view: str = "curated") -> dict[str, dict[str, float]]:
    """Per category: items, realised fraction, and the target fraction when targets are given."""
    from .view import load_view

    counts = Counter(it.category for it in load_view(project, dataset, view))
    total = sum(counts.values()) or 1
    tsum = sum((targets or {}).values()) or 1.0
    cats = sorted(set(counts) | set(targets or {}))
    return {c: {"items": counts.get(c, 0), "realised": counts.get(c, 0) / total, **({"target": (targets or {}).get(c, 0.0) / tsum} if targets else {})} for c in cats}
