"""Rating as a person does it, in the real Studio against a real backend: generate pairs from a
model through the Rate page's form, judge 50 with the keyboard alone, undo one, and find every
judgement in SQLite with its side, decision time and rater; and the scripted rater, which judges
through the same public API by the detector's reading of each image."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import tiny_pretrain_recipe
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QDialog

from backend.scripted_rater import ScriptedRater
from backend.service.client import start_backend
from backend.store import Project
from studio.main_window import MainWindow
from studio.views.rate_view import PairsDialog


@pytest.fixture
def trained_project(shapes_project: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the shared project with a tiny trained run (the model the pairs come from)."""
    root = tmp_path / "proj"
    shutil.copytree(shapes_project, root, ignore=shutil.ignore_patterns("runs", "*.db-wal", "*.db-shm"))
    proc, client = start_backend(root)
    try:
        job = client.create_job(tiny_pretrain_recipe(steps=4, family="unet", checkpoint_every=4, sample_every=100), "tiny")
        end = client.wait_job(job["id"], timeout=300)
        assert end["state"] == "done", client.log(job["id"])["text"][-3000:]
        run_dir = end["run_dir"]
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
    return root, run_dir


def test_rate_fifty_pairs_with_the_keyboard_and_undo_one(qtbot, trained_project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root, run_dir = trained_project
    w = MainWindow(QSettings(str(tmp_path / "studio.ini"), QSettings.IniFormat))
    qtbot.addWidget(w)
    w.show()
    prompts = ["a red circle", "a blue square", "two green triangles", "a yellow star", "a pink heart", "a cyan cross",
               "a purple circle", "an orange square", "a large red star"]

    def fill_and_accept(dialog: PairsDialog) -> int:  # Qt's modal loop answered as a person would fill the form
        dialog.model.setCurrentIndex(dialog.model.findData(run_dir))
        dialog.source.setCurrentIndex(dialog.source.findData("list"))
        dialog.prompts.setPlainText("\n".join(prompts))
        dialog.count.setValue(len(prompts))
        dialog.per.setValue(4)  # 4 images per prompt: 6 pairs each, 54 in all
        return QDialog.Accepted

    monkeypatch.setattr(PairsDialog, "exec", fill_and_accept)
    try:
        w.open_project(str(root))
        qtbot.waitUntil(lambda: w.stack.currentIndex() == 1 and "Rate" in w.page_names, timeout=120_000)
        w.show_stage("Rate")
        rate = w.rate
        rate.rater.setText("tester")
        rate._rater_changed()
        qtbot.mouseClick(rate.generate_btn, Qt.LeftButton)
        client = w.link.client
        qtbot.waitUntil(lambda: any(j["kind"] == "pairs" for j in client.jobs()), timeout=30_000)
        job = next(j for j in client.jobs() if j["kind"] == "pairs")
        assert client.wait_job(job["id"], timeout=600)["state"] == "done", client.log(job["id"])["text"][-3000:]
        qtbot.waitUntil(lambda: rate.current is not None, timeout=60_000)

        keys = [Qt.Key_Left, Qt.Key_Right, Qt.Key_Left, Qt.Key_Down, Qt.Key_Right, Qt.Key_Up, Qt.Key_Left, Qt.Key_Space, Qt.Key_Right, Qt.Key_Left]
        seen: list[tuple[int, str]] = []
        for i in range(50):
            qtbot.waitUntil(lambda: rate.current is not None, timeout=30_000)
            seen.append((rate.current["id"], rate.current["left"]))
            qtbot.keyClick(rate, keys[i % len(keys)])
        last_id = seen[-1][0]
        qtbot.keyClick(rate, Qt.Key_Backspace)
        assert rate.current["id"] == last_id  # the undone pair is shown again at once
        qtbot.waitUntil(lambda: len(client.ratings(rater="tester", include_undone=True)) == 50, timeout=30_000)
        qtbot.waitUntil(lambda: len(client.ratings(rater="tester")) == 49, timeout=30_000)
    finally:
        w.link.disconnect_backend(stop_process=True)

    with Project.open(root) as project:
        rows = project.db.execute("SELECT comparison_id, choice, shown_left, rater, decision_ms, undone FROM ratings").fetchall()
    assert len(rows) == 50 and len({r[0] for r in rows}) == 50  # no pair judged twice, though submissions race the prefetch
    by_pair = {r[0]: r for r in rows}
    assert {(r[0], r[2]) for r in rows} == set(seen)  # each judgement stored with the side its image a was shown on
    assert all(r[3] == "tester" and r[4] is not None and r[4] >= 0 for r in rows)
    assert [r[0] for r in rows if r[5]] == [last_id]
    # the keys meant sides, the rows store images: "left" picks whichever image was shown left
    for (cid, left), key in zip(seen, keys * 5):
        row = by_pair[cid]
        want = {Qt.Key_Left: left, Qt.Key_Right: "b" if left == "a" else "a", Qt.Key_Down: "tie", Qt.Key_Up: "both_bad", Qt.Key_Space: "skip"}[key]
        assert row[1] == want
    sides = {r[2] for r in rows}
    assert sides == {"a", "b"}  # sides are randomised


def test_scripted_rater_judges_by_the_detector_through_the_api(trained_project, tmp_path: Path):
    root, run_dir = trained_project
    proc, client = start_backend(root)
    try:
        job = client.create_job(f'kind = "pairs"\nmodel = "{run_dir}"\nmax_prompts = 10\nimages_per_prompt = 2\n'
                                '[sampler]\nsteps = 6\nwidth = 32\nheight = 32\n', "pairs")
        assert client.wait_job(job["id"], timeout=600)["state"] == "done", client.log(job["id"])["text"][-3000:]
        pairs = client.pair_queue("probe", count=20)
        assert len(pairs) == 10 and all(p["meta"]["a"]["spec"] and p["meta"]["a"]["seed"] != p["meta"]["b"]["seed"] for p in pairs)
        honest = ScriptedRater(client, "honest", noise=0.0)
        report = honest.rate(10)
        assert report.rated == 10 and report.flipped == 0
        # every judgement agrees with the rater's own reading of the two images
        import io

        from PIL import Image

        for row in client.ratings(rater="honest"):
            spec = row["meta"]["a"]["spec"]
            ua, fa = honest.utility(spec, Image.open(io.BytesIO(client.image(row["image_a"]))).convert("RGB"))
            ub, _ = honest.utility(spec, Image.open(io.BytesIO(client.image(row["image_b"]))).convert("RGB"))
            want = "a" if ua > ub else "b" if ub > ua else ("tie" if fa else "both_bad")
            assert row["choice"] == want
        contrary = ScriptedRater(client, "contrary", noise=1.0)
        report = contrary.rate(10)
        decisive = {r["comparison_id"]: r["choice"] for r in client.ratings(rater="honest") if r["choice"] in ("a", "b")}
        flipped = {r["comparison_id"]: r["choice"] for r in client.ratings(rater="contrary") if r["comparison_id"] in decisive}
        assert decisive and report.flipped == len(decisive) and all(flipped[c] != decisive[c] for c in decisive)
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
