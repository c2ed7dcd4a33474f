"""Bring folders of images and captions into a project.

Captions come from ``.txt`` sidecars, ``metadata.jsonl`` or a CSV beside the images (in that
order of preference); categories and ground truth come from metadata when it has them.
Images are stored content-addressed; rows are written in batches, each batch one
transaction, and every source path is remembered (imported or rejected with its reason), so
an interrupted import resumes where it stopped without duplicating rows. Decoding runs in a
process pool (spawn-safe); the database is written by this process only.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.store import Project, atomic_write_bytes, dumps

from .captions import caption_complexity
from .decode import Decoded, Rejected, content_hash, decode_file

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
SIDECAR_EXTS = {".txt", ".json", ".jsonl", ".csv", ".md"}
BATCH = 256


@dataclass
class ImportReport:
    dataset: str
    imported: int = 0
    normalised: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    already_present: int = 0
    rejects: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, detail)

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "imported": self.imported,
            "normalised": dict(self.normalised),
            "rejected": dict(self.rejected),
            "already_present": self.already_present,
            "rejects": [{"file": p, "reason": r, "detail": d} for p, r, d in self.rejects],
        }

    def summary(self) -> str:
        lines = [f"imported {self.imported} image(s) into '{self.dataset}'"]
        if self.already_present:
            lines.append(f"already present (skipped): {self.already_present}")
        for kind, n in sorted(self.normalised.items()):
            lines.append(f"normalised ({kind}): {n}")
        for reason, n in sorted(self.rejected.items()):
            lines.append(f"rejected ({reason}): {n}")
        for p, r, d in self.rejects[:20]:
            lines.append(f"  {p}: {r} - {d}")
        if len(self.rejects) > 20:
            lines.append(f"  ... and {len(self.rejects) - 20} more (see the rejects table)")
        return "\n".join(lines)


@dataclass
class Candidate:
    path: Path
    key: str  # source path as recorded (relative to its source root, posix)
    caption: str
    category: str | None
    meta: dict[str, Any] | None


def _folder_metadata(folder: Path) -> dict[str, dict[str, Any]]:
    """file name -> record, from metadata.jsonl and *.csv in ``folder``."""
    records: dict[str, dict[str, Any]] = {}
    for csv_path in sorted(folder.glob("*.csv")):
        try:
            with open(csv_path, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    name = row.get("file") or row.get("file_name") or row.get("image")
                    if name:
                        records.setdefault(name, {}).update({k: v for k, v in row.items() if v not in (None, "")})
        except (OSError, UnicodeDecodeError, csv.Error):
            continue
    jsonl = folder / "metadata.jsonl"
    if jsonl.exists():
        for line in jsonl.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            name = rec.get("file") or rec.get("file_name") or rec.get("image") if isinstance(rec, dict) else None
            if name:
                records.setdefault(name, {}).update(rec)
    return records


def scan(sources: Iterable[str | Path], category_from: str = "metadata") -> tuple[list[Candidate], list[tuple[str, str, str]]]:
    """Candidates to decode and (path, reason, detail) for files that are not images at all."""
    candidates: list[Candidate] = []
    others: list[tuple[str, str, str]] = []
    for src in sources:
        root = Path(src).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"source {root} does not exist")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        base = root.parent if root.is_file() else root
        meta_cache: dict[Path, dict[str, dict[str, Any]]] = {}
        for path in files:
            rel = path.relative_to(base).as_posix()
            key = f"{base.name}/{rel}"
            ext = path.suffix.lower()
            if ext in SIDECAR_EXTS or path.name.startswith("."):
                continue
            if ext not in IMAGE_EXTS:
                others.append((key, "unsupported_type", f"extension {ext or '(none)'} is not an image type"))
                continue
            if path.parent not in meta_cache:  # read each folder's metadata once
                meta_cache[path.parent] = _folder_metadata(path.parent)
            folder_meta = meta_cache[path.parent]
            rec = folder_meta.get(path.name, {})
            side = path.with_suffix(".txt")
            if side.exists():
                caption = side.read_text(encoding="utf-8", errors="replace").strip()
            else:
                caption = str(rec.get("caption") or rec.get("text") or "").strip()
            category = rec.get("category")
            if not category and category_from == "folder" and path.parent != base:
                category = path.parent.name
            meta = {k: v for k, v in rec.items() if k not in ("file", "file_name", "image", "caption", "text")} or None
            candidates.append(Candidate(path, key, caption, category, meta))
    return candidates, others


def _decode_job(args: tuple[str, int, int]) -> Decoded | Rejected:
    path, max_pixels, min_side = args
    try:
        return decode_file(Path(path), max_pixels=max_pixels, min_side=min_side)
    except Rejected as exc:
        return exc


def _decode_chunk(jobs: list[tuple[str, int, int]]) -> list[Decoded | Rejected]:
    return [_decode_job(j) for j in jobs]


def _bounded_map(pool: ProcessPoolExecutor, jobs: list[tuple[str, int, int]], chunk: int = 32, ahead: int = 8) -> Iterator[Decoded | Rejected]:
    """Results in order with at most ``ahead`` chunks in flight. ``Executor.map`` submits every
    job at once, so decoded images pile up whenever the writer is slower than the decoders and
    memory grows with the size of the import; this keeps it flat."""
    inflight: deque[Future] = deque()
    for i in range(0, len(jobs), chunk):
        inflight.append(pool.submit(_decode_chunk, jobs[i : i + chunk]))
        if len(inflight) >= ahead:
            yield from inflight.popleft().result()
    while inflight:
        yield from inflight.popleft().result()


def import_sources(
    project: Project,
    dataset: str,
    sources: Iterable[str | Path],
    *,
    category_from: str = "metadata",
    max_pixels: int = 64_000_000,
    min_side: int = 8,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Import every image under ``sources`` into ``dataset``; one bad file never stops it."""
    report = ImportReport(dataset)
    ds = project.dataset_id(dataset, create=True, source=", ".join(str(s) for s in sources))
    candidates, others = scan(sources, category_from)
    done = {r[0] for r in project.db.execute("SELECT source_path FROM items WHERE dataset_id = ?", [ds])}
    done |= {r[0] for r in project.db.execute("SELECT source_path FROM rejects WHERE dataset_id = ?", [ds])}
    todo = [c for c in candidates if c.key not in done]
    report.already_present = len(candidates) - len(todo)
    new_others = [o for o in others if o[0] not in done]
    if new_others:
        with project.transaction():
            for key, reason, detail in new_others:
                project.db["rejects"].insert({"dataset_id": ds, "source_path": key, "reason": reason, "detail": detail})
    for key, reason, detail in others:
        report.rejected[reason] += 1
        report.rejects.append((key, reason, detail))

    workers = workers if workers is not None else max(1, min(4, (os.cpu_count() or 1)))
    jobs = [(str(c.path), max_pixels, min_side) for c in todo]
    total = len(jobs)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_spawn()) if workers > 1 and total > 64 else None
    try:
        results = _bounded_map(pool, jobs) if pool else map(_decode_job, jobs)
        pending_items: list[dict[str, Any]] = []
        pending_rejects: list[dict[str, Any]] = []
        for i, (cand, res) in enumerate(zip(todo, results), 1):
            if isinstance(res, Rejected):
                pending_rejects.append({"dataset_id": ds, "source_path": cand.key, "reason": res.reason, "detail": res.detail})
                report.rejected[res.reason] += 1
                report.rejects.append((cand.key, res.reason, res.detail))
            else:
                digest = content_hash(res.data)
                path = project.blob_path(digest, res.ext)
                if not path.exists():
                    atomic_write_bytes(path, res.data)
                thumb = project.blob_path(digest, "png", kind="cache/thumbs")
                if not thumb.exists():
                    atomic_write_bytes(thumb, res.thumb)
                meta = dict(cand.meta or {})
                if res.normalised:
                    meta["normalised"] = res.normalised
                    for n in res.normalised:
                        report.normalised[n] += 1
                complexity = meta.get("complexity")
                pending_items.append({
                    "dataset_id": ds, "hash": digest, "ext": res.ext, "size": len(res.data), "width": res.width,
                    "height": res.height, "mode": res.mode, "caption": cand.caption, "category": cand.category,
                    "meta": dumps(meta) if meta else None, "source_path": cand.key,
                    "complexity": float(complexity) if complexity is not None else caption_complexity(cand.caption),
                    "phash": res.phash, "blur": res.blur,
                })
                report.imported += 1
            if len(pending_items) + len(pending_rejects) >= BATCH or i == total:
                _flush(project, pending_items, pending_rejects)
                pending_items, pending_rejects = [], []
            if progress and (i % 100 == 0 or i == total):
                progress(i, total)
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return report


def _flush(project: Project, items: list[dict[str, Any]], rejects: list[dict[str, Any]]) -> None:
    """One batch, one transaction: after a kill either the whole batch is there or none of it."""
    if not items and not rejects:
        return
    with project.transaction():
        if items:
            project.db["items"].insert_all(items, batch_size=BATCH)
        if rejects:
            project.db["rejects"].insert_all(rejects, batch_size=BATCH)


def _spawn():
    import multiprocessing

    return multiprocessing.get_context("spawn")
