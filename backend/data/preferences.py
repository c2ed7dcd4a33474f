"""Ratings in and out as Pick-a-Pic-style parquet, so preference data moves between projects and
into other tools (pyarrow writes it; no library reads and writes this layout for us).

One row per live decisive judgement (a, b or tie; "both bad" and skips are left out and counted):
Pick-a-Pic's columns ``caption``, ``jpg_0``/``jpg_1`` (the image bytes: our PNGs, which every
reader that decodes with PIL opens), ``label_0``/``label_1`` (1/0, 0/1, ties 0.5/0.5),
``best_image_uid``, ``image_0_uid``/``image_1_uid``, ``model_0``/``model_1``, ``user_id``,
``created_at``, ``has_label``, ``are_different``, ``ranking_id``, plus ours: ``seed_0``/``seed_1``,
``sampler``, ``meta_0``/``meta_1`` (generation records as JSON), ``shown_left`` (0 or 1),
``decision_ms`` and ``choice``. An import checks every row before it writes anything, then adds
all pairs and judgements in one transaction: a bad file imports nothing.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.store import Project, ratings
from backend.store.project import write_transaction

REQUIRED = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")


@dataclass
class ExportReport:
    path: str
    rows: int
    left_out: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "left_out": self.left_out}


def export_ratings(project: Project, out: Path, rater: str | None = None) -> ExportReport:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = ratings.history(project.db, rater=rater, limit=10_000_000)
    left_out = {"both_bad": 0, "skip": 0}
    cols: dict[str, list[Any]] = {k: [] for k in (
        "ranking_id", "caption", "jpg_0", "jpg_1", "label_0", "label_1", "best_image_uid", "image_0_uid", "image_1_uid", "image_0_url",
        "image_1_url", "model_0", "model_1", "user_id", "created_at", "has_label", "are_different", "num_example_per_prompt",
        "seed_0", "seed_1", "sampler", "meta_0", "meta_1", "shown_left", "decision_ms", "choice")}
    for r in reversed(rows):  # oldest first
        if r["choice"] in left_out:
            left_out[r["choice"]] += 1
            continue
        meta_a, meta_b = r["meta"].get("a") or {}, r["meta"].get("b") or {}
        label = {"a": (1.0, 0.0), "b": (0.0, 1.0), "tie": (0.5, 0.5)}[r["choice"]]
        img = [project.blob_path(h, "png").read_bytes() for h in (r["image_a"], r["image_b"])]
        cols["ranking_id"].append(int(r["id"]))
        cols["caption"].append(r["prompt"])
        cols["jpg_0"].append(img[0])
        cols["jpg_1"].append(img[1])
        cols["label_0"].append(label[0])
        cols["label_1"].append(label[1])
        cols["best_image_uid"].append({"a": r["image_a"], "b": r["image_b"], "tie": ""}[r["choice"]])
        cols["image_0_uid"].append(r["image_a"])
        cols["image_1_uid"].append(r["image_b"])
        cols["image_0_url"].append("")
        cols["image_1_url"].append("")
        cols["model_0"].append(str(meta_a.get("model", "")))
        cols["model_1"].append(str(meta_b.get("model", "")))
        cols["user_id"].append(r["rater"])
        cols["created_at"].append(r["created"])
        cols["has_label"].append(True)
        cols["are_different"].append(r["image_a"] != r["image_b"])
        cols["num_example_per_prompt"].append(1)
        cols["seed_0"].append(meta_a.get("seed"))
        cols["seed_1"].append(meta_b.get("seed"))
        cols["sampler"].append(json.dumps(meta_a.get("sampler") or {}))
        cols["meta_0"].append(json.dumps(meta_a))
        cols["meta_1"].append(json.dumps(meta_b))
        cols["shown_left"].append(0 if r["shown_left"] == "a" else 1)
        cols["decision_ms"].append(r["decision_ms"])
        cols["choice"].append(r["choice"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(pa.table(cols), tmp)
    tmp.replace(out)
    return ExportReport(str(out), len(cols["caption"]), left_out)


class PreferenceImportError(ValueError):
    """A preference file that cannot be imported; nothing of it was."""


def _png(data: bytes, where: str) -> bytes:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.format == "PNG":
                return data
            buf = io.BytesIO()
            im.convert("RGB").save(buf, "PNG")
            return buf.getvalue()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise PreferenceImportError(f"{where}: not a readable image ({exc})") from None


def import_ratings(project: Project, path: Path, rater: str | None = None) -> dict[str, Any]:
    """Add the file's pairs and judgements (``rater`` overrides the file's ``user_id``)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several kinds for a file that is not parquet
        raise PreferenceImportError(f"{path}: not a readable parquet file ({exc})") from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise PreferenceImportError(f"{path}: missing column(s) {', '.join(missing)} (a Pick-a-Pic-style file has {', '.join(REQUIRED)})")
    data = table.to_pylist()
    staged = []
    for i, row in enumerate(data):
        where = f"{path.name} row {i}"
        l0, l1 = row["label_0"], row["label_1"]
        choice = {(1.0, 0.0): "a", (0.0, 1.0): "b", (0.5, 0.5): "tie"}.get((float(l0 if l0 is not None else -1), float(l1 if l1 is not None else -1)))
        if choice is None:
            raise PreferenceImportError(f"{where}: labels {l0}/{l1} are not 1/0, 0/1 or 0.5/0.5")
        if not row["caption"]:
            raise PreferenceImportError(f"{where}: empty caption")
        images = [_png(row[k] or b"", f"{where} {k}") for k in ("jpg_0", "jpg_1")]
        meta = {}
        for side, k in (("a", "meta_0"), ("b", "meta_1")):
            try:
                meta[side] = json.loads(row.get(k) or "{}")
            except json.JSONDecodeError:
                raise PreferenceImportError(f"{where}: {k} is not JSON") from None
            model = row.get("model_0" if side == "a" else "model_1")
            if model and "model" not in meta[side]:
                meta[side]["model"] = model
        shown = row.get("shown_left")
        staged.append((row["caption"], images, meta, choice, "b" if shown == 1 else "a", rater if rater is not None else (row.get("user_id") or ""),
                       row.get("decision_ms")))
    with write_transaction(project.db):
        for caption, images, meta, choice, shown_left, who, ms in staged:
            ha, hb = (project.put_blob(b, "png") for b in images)
            cid = ratings.queue_pair(project.db, caption, ha, hb, {**meta, "imported_from": path.name})
            ratings.record(project.db, cid, choice, shown_left, who, ms)
    return {"imported": len(staged), "path": str(path)}
