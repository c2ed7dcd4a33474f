"""Ratings storage: one row per judgement, undo kept for audit, a per-rater queue, repeats and the
figures they give; a project from before the ratings table keeps every judgement it had."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from backend.store import Project, ratings
from backend.store.project import DB_NAME, connect
from backend.store.schema import MIGRATIONS


def _pairs(db, n: int) -> list[int]:
    return [ratings.queue_pair(db, f"prompt {i}", f"{i:064x}", f"{i + 1000:064x}", {"a": {"model": "base"}, "b": {"model": "tuned"}}) for i in range(n)]


def test_old_judgements_survive_the_migration(tmp_path: Path):
    root = tmp_path / "old"
    root.mkdir()
    db = connect(root / DB_NAME)
    MIGRATIONS.apply(db, stop_before="m004_ratings")
    db.execute("INSERT INTO comparisons (prompt, image_a, image_b, choice, shown_left, rater, decision_ms) VALUES ('p', 'x', 'y', 'b', 'b', 'ann', 900)")
    db.execute("INSERT INTO comparisons (prompt, image_a, image_b) VALUES ('q', 'x', 'y')")
    db.conn.commit()
    db.conn.close()
    with Project.open(root) as project:
        rows = ratings.history(project.db)
        assert [(r["prompt"], r["choice"], r["shown_left"], r["rater"], r["decision_ms"]) for r in rows] == [("p", "b", "b", "ann", 900)]
        assert [p["prompt"] for p in ratings.next_pairs(project.db, "ann", 5)] == ["q"]


def test_queue_is_per_rater_and_undo_is_soft(tmp_path: Path):
    with Project.init(tmp_path / "p") as project:
        db = project.db
        ids = _pairs(db, 4)
        queue = ratings.next_pairs(db, "ann", 3)
        assert [p["id"] for p in queue] == ids[:3]
        assert {p["left"] for p in ratings.next_pairs(db, "ann", 4)} <= {"a", "b"}
        assert [p["id"] for p in ratings.next_pairs(db, "ann", 3, exclude=ids[:3])] == ids[3:]  # prefetch leaves out what is held
        r0 = ratings.record(db, ids[0], "a", "b", "ann", 700)
        ratings.record(db, ids[1], "skip", "a", "ann")
        assert [p["id"] for p in ratings.next_pairs(db, "ann", 4)] == ids[2:]
        assert [p["id"] for p in ratings.next_pairs(db, "bob", 4)] == ids  # another rater's queue is untouched
        undone = ratings.undo(db, rater="ann")  # the latest: the skip
        assert undone["comparison_id"] == ids[1] and undone["undone"]
        assert ratings.undo(db, rating_id=r0)["comparison_id"] == ids[0]
        assert ratings.undo(db, rating_id=r0) is None  # twice is nothing
        assert [p["id"] for p in ratings.next_pairs(db, "ann", 4)] == ids
        assert ratings.history(db, rater="ann") == []
        assert len(ratings.history(db, rater="ann", include_undone=True)) == 2


def _group(db, name: str, k: int) -> list[str]:
    """A pairs-stage group: k images of one prompt, all k(k-1)/2 pairs queued."""
    images = [f"{name}{i}".encode().hex().ljust(64, "0") for i in range(k)]
    for x in range(k):
        for y in range(x + 1, k):
            ratings.queue_pair(db, f"prompt {name}", images[x], images[y], {"a": {"seed": x}, "b": {"seed": y}, "group": name})
    return images


def test_a_ranking_is_one_judgement_expanded_into_its_pairs(tmp_path: Path):
    with Project.init(tmp_path / "p") as project:
        db = project.db
        g1, g2 = _group(db, "g1", 4), _group(db, "g2", 3)
        _pairs(db, 2)  # plain pairs never form a group
        queue = ratings.next_rankings(db, "ann", 5)
        assert [q["group"] for q in queue] == ["g1", "g2"]
        assert sorted(im["image"] for im in queue[0]["images"]) == sorted(g1) and queue[0]["pairs"] == 6
        assert ratings.next_rankings(db, "ann", 5)[0]["images"] == queue[0]["images"]  # the shown order is stable per rater
        assert [q["group"] for q in ratings.next_rankings(db, "ann", 5, exclude=["g1"])] == ["g2"]
        best_first = [g1[2], g1[0], g1[3], g1[1]]
        shown = [im["image"] for im in queue[0]["images"]]
        for bad in ([g1[0], g1[1], g1[2]], [g1[0]] * 4, [*g1[:3], g2[0]]):
            with pytest.raises(ValueError, match="exactly once"):
                ratings.record_ranking(db, "g1", bad, shown, "ann")
        assert ratings.history(db) == []  # a refused ranking wrote nothing
        out = ratings.record_ranking(db, "g1", best_first, shown, "ann", 2500)
        rows = ratings.history(db, rater="ann")
        assert len(out["ratings"]) == 6 and len(rows) == 6
        place = {im: n for n, im in enumerate(best_first)}
        for r in rows:  # the image ranked higher wins every pair, and the side it was shown on is recorded
            assert r["choice"] == ("a" if place[r["image_a"]] < place[r["image_b"]] else "b")
            assert r["shown_left"] == ("a" if shown.index(r["image_a"]) < shown.index(r["image_b"]) else "b")
        with pytest.raises(ValueError, match="already judged"):
            ratings.record_ranking(db, "g1", best_first, shown, "ann")
        assert [q["group"] for q in ratings.next_rankings(db, "ann", 5)] == ["g2"]
        assert ratings.stats(db, "ann")["rankings"] == 1 and ratings.stats(db, "ann")["tally"]["a"] + ratings.stats(db, "ann")["tally"]["b"] == 6
        # a pair of g2 judged on its own takes g2 out of the ranking queue (its other pairs are rated as pairs)
        ratings.record(db, db.execute("SELECT id FROM comparisons WHERE json_extract(meta, '$.group') = 'g2'").fetchone()[0], "a", "a", "ann")
        assert ratings.next_rankings(db, "ann", 5) == []
        undone = ratings.undo(db, rating_id=out["ratings"][3])  # one pair of a ranking takes the whole ranking back
        assert undone["undone_ratings"] == 6
        assert [q["group"] for q in ratings.next_rankings(db, "ann", 5)] == ["g1"]
        assert db.execute("SELECT undone IS NOT NULL FROM rankings WHERE id = ?", [out["id"]]).fetchone()[0] == 1
        skipped = ratings.record_ranking(db, "g1", [], shown, "ann", skip=True)
        assert {r["choice"] for r in ratings.history(db, rater="ann") if r["id"] in skipped["ratings"]} == {"skip"}
        assert ratings.stats(db, "ann")["rankings"] == 0


def test_history_filters_and_figures(tmp_path: Path):
    with Project.init(tmp_path / "p") as project:
        db = project.db
        ids = _pairs(db, 10)
        ratings.queue_pair(db, "a green star", "ee" * 32, "ff" * 32, {"a": {"model": "other"}, "b": {"model": "other"}})
        for i, cid in enumerate(ids):
            ratings.record(db, cid, "a" if i < 6 else ("tie" if i < 8 else "b"), "a" if i % 2 == 0 else "b", "ann", 100 + i)
        assert len(ratings.history(db, choice="tie")) == 2
        assert [r["prompt"] for r in ratings.history(db, prompt="prompt 9")] == ["prompt 9"]
        assert len(ratings.history(db, model="tuned")) == 10 and ratings.history(db, model="other") == []
        s = ratings.stats(db, "ann")
        assert s["tally"] == {"a": 6, "b": 2, "tie": 2, "both_bad": 0, "skip": 0}
        assert s["rated"] == 10 and s["queued"] == 1 and s["pairs"] == 11
        # a/b picks: i = 0..5 chose a (shown left when i is even: 0, 2, 4), i = 8, 9 chose b (left when i is odd: 9)
        assert s["left_n"] == 8 and s["left_share"] == 4 / 8


def test_repeats_are_served_flipped_and_measure_agreement(tmp_path: Path):
    with Project.init(tmp_path / "p") as project:
        db = project.db
        ids = _pairs(db, 30)
        for cid in ids[:20]:
            ratings.record(db, cid, "a", ratings.left_side(cid, "ann"), "ann")
        served = ratings.next_pairs(db, "ann", 10, repeat_rate=0.5, rng=random.Random(0))
        repeats = [p for p in served if p["repeat"]]
        assert 0 < len(repeats) < 10
        recent = set(ids[15:20])  # never one of the rater's last five judgements
        for p in repeats:
            assert p["id"] in ids[:15] and p["id"] not in recent
            assert p["left"] != ratings.left_side(p["id"], "ann")  # shown the other way round
        for k, p in enumerate(repeats):
            ratings.record(db, p["id"], "a" if k else "b", p["left"], "ann", repeat=True)
        s = ratings.stats(db, "ann")
        assert s["repeats"] == len(repeats) and abs(s["agreement"] - (len(repeats) - 1) / len(repeats)) < 1e-9
        assert s["tally"]["a"] == 20  # repeats are not counted twice


def _png(color: str) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, "PNG")
    return buf.getvalue()


def test_export_import_round_trip_and_a_bad_file_imports_nothing(tmp_path: Path):
    import pyarrow.parquet as pq
    import pytest

    from backend.data.preferences import PreferenceImportError, export_ratings, import_ratings

    with Project.init(tmp_path / "src") as src:
        hashes = [src.put_blob(_png(c), "png") for c in ("red", "blue", "green")]
        meta = {"a": {"model": "base", "seed": 1, "sampler": {"steps": 20}}, "b": {"model": "tuned", "seed": 1, "sampler": {"steps": 20}}}
        cids = [ratings.queue_pair(src.db, f"p{i}", hashes[i], hashes[(i + 1) % 3], meta) for i in range(3)]
        ratings.record(src.db, cids[0], "a", "b", "ann", 500)
        ratings.record(src.db, cids[1], "tie", "a", "ann", 600)
        ratings.record(src.db, cids[2], "both_bad", "a", "ann", 700)
        report = export_ratings(src, tmp_path / "out.parquet")
    assert report.rows == 2 and report.left_out == {"both_bad": 1, "skip": 0}
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert [(r["caption"], r["label_0"], r["label_1"], r["model_0"], r["model_1"], r["shown_left"], r["decision_ms"]) for r in table] == [
        ("p0", 1.0, 0.0, "base", "tuned", 1, 500), ("p1", 0.5, 0.5, "base", "tuned", 0, 600)]
    assert table[0]["best_image_uid"] == hashes[0] and table[0]["jpg_0"] == _png("red")

    with Project.init(tmp_path / "dst") as dst:
        assert import_ratings(dst, tmp_path / "out.parquet")["imported"] == 2
        rows = ratings.history(dst.db)
        assert sorted((r["prompt"], r["choice"], r["shown_left"], r["rater"], r["decision_ms"]) for r in rows) == [
            ("p0", "a", "b", "ann", 500), ("p1", "tie", "a", "ann", 600)]
        assert {r["image_a"] for r in rows} == {hashes[0], hashes[1]} and dst.blob_path(hashes[0], "png").read_bytes() == _png("red")
        # a file with one broken image: an error that names the row, and nothing of it lands
        broken = [dict(r) for r in table]
        broken[1]["jpg_1"] = b"not an image"
        import pyarrow as pa

        pq.write_table(pa.Table.from_pylist(broken), tmp_path / "broken.parquet")
        with pytest.raises(PreferenceImportError, match="row 1 jpg_1"):
            import_ratings(dst, tmp_path / "broken.parquet")
        (tmp_path / "junk.parquet").write_bytes(b"junk")
        with pytest.raises(PreferenceImportError, match="not a readable parquet"):
            import_ratings(dst, tmp_path / "junk.parquet")
        assert len(ratings.history(dst.db)) == 2 and dst.db.execute("SELECT count(*) FROM comparisons").fetchone()[0] == 2
