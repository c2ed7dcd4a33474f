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
        # the running tally counts the kept judgements (7 of every 10 keys pick a side; the undone one did)
        qtbot.waitUntil(lambda: rate.tally.text().startswith("a/b picks 34 · tie 5 · both bad 5 · skipped 5"), timeout=20_000)
        rate.rater.setText("second")  # another rater's queue starts from the oldest pair, which "tester" judged
        rate._rater_changed()
        qtbot.waitUntil(lambda: rate.current is not None, timeout=30_000)
        assert rate.current["id"] == min(cid for cid, _ in seen)
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


def test_rank_images_with_number_keys_and_nothing_is_lost_when_the_backend_is_killed(qtbot, trained_project, tmp_path: Path):
    """Ranking mode: order three images of a prompt with the number keys (one ranking = its three pair
    judgements), take back a number and a whole ranking, skip a prompt; then SIGKILL the backend the
    Studio started and find every acknowledged judgement in the SQLite file."""
    import os
    import signal

    root, run_dir = trained_project
    w = MainWindow(QSettings(str(tmp_path / "studio.ini"), QSettings.IniFormat))
    qtbot.addWidget(w)
    w.show()
    try:
        w.open_project(str(root))
        qtbot.waitUntil(lambda: w.stack.currentIndex() == 1 and "Rate" in w.page_names, timeout=120_000)
        client = w.link.client
        prompts = ["a red circle", "a blue square", "a yellow star", "a pink heart", "a cyan cross"]
        job = client.create_job(f'kind = "pairs"\nmodel = "{run_dir}"\nprompts_from = "list"\nprompts = {prompts!r}\nimages_per_prompt = 3\n'
                                '[sampler]\nsteps = 4\nwidth = 32\nheight = 32\n'.replace("'", '"'), "pairs")
        assert client.wait_job(job["id"], timeout=600)["state"] == "done", client.log(job["id"])["text"][-3000:]
        w.show_stage("Rate")
        rate = w.rate
        rate.rater.setText("ranker")
        rate._rater_changed()
        rate.mode.setCurrentIndex(rate.mode.findData("rank"))
        panel = rate.rank
        assert panel.isVisible() and not rate.pair_area.isVisible()

        def shown() -> dict:
            qtbot.waitUntil(lambda: panel.current is not None, timeout=60_000)
            return panel.current

        want: dict[str, list[str]] = {}  # group -> images best first, as the keys meant them
        g = shown()
        imgs = [im["image"] for im in g["images"]]
        qtbot.keyClick(rate, Qt.Key_2)
        qtbot.keyClick(rate, Qt.Key_1)  # the third is implied: the ranking goes out
        want[g["group"]] = [imgs[1], imgs[0], imgs[2]]
        g = shown()
        imgs = [im["image"] for im in g["images"]]
        qtbot.keyClick(rate, Qt.Key_3)
        qtbot.keyClick(rate, Qt.Key_Backspace)  # takes back the 3 only
        assert panel.current is g and panel.picks == []
        qtbot.keyClick(rate, Qt.Key_1)
        qtbot.keyClick(rate, Qt.Key_3)
        assert panel.current is not g
        qtbot.keyClick(rate, Qt.Key_Backspace)  # no number pressed: the whole ranking comes back
        assert panel.current["group"] == g["group"]
        retaken = g["group"]
        qtbot.keyClick(rate, Qt.Key_2)
        qtbot.keyClick(rate, Qt.Key_3)
        want[g["group"]] = [imgs[1], imgs[2], imgs[0]]
        skipped = shown()["group"]
        qtbot.keyClick(rate, Qt.Key_Space)
        g = shown()
        imgs = [im["image"] for im in g["images"]]
        qtbot.keyClick(rate, Qt.Key_3)
        qtbot.keyClick(rate, Qt.Key_2)
        want[g["group"]] = [imgs[2], imgs[1], imgs[0]]
        qtbot.waitUntil(lambda: all(e["ranking_id"] is not None for e in panel.sent), timeout=30_000)
        qtbot.waitUntil(lambda: len(client.ratings(rater="ranker")) == 12, timeout=30_000)  # the undone ranking's undo landed
        os.kill(w.link.process.processId(), signal.SIGKILL)
    finally:
        w.link.disconnect_backend(stop_process=True)

    with Project.open(root) as project:
        db = project.db
        rankings = db.execute("SELECT grp, ranked, shown, rater, decision_ms, skipped, undone FROM rankings ORDER BY id").fetchall()
        live = db.execute("""SELECT json_extract(c.meta, '$.group'), c.image_a, c.image_b, r.choice FROM ratings r
                             JOIN comparisons c ON c.id = r.comparison_id WHERE r.undone IS NULL""").fetchall()
        undone = db.execute("SELECT count(*) FROM ratings WHERE undone IS NOT NULL").fetchone()[0]
    import json

    assert len(rankings) == 5 and [r[0] for r in rankings if r[6] is not None] == [retaken]  # the taken-back ranking, kept for audit
    assert all(r[3] == "ranker" and r[4] is not None for r in rankings) and [r[0] for r in rankings if r[5]] == [skipped]
    assert {r[0]: json.loads(r[1]) for r in rankings if r[6] is None and not r[5]} == want
    assert undone == 3 and len(live) == 12
    for grp, a, b, choice in live:  # every pair judgement follows the ranking it came from
        if grp == skipped:
            assert choice == "skip"
        else:
            assert choice == ("a" if want[grp].index(a) < want[grp].index(b) else "b")


STUDIO_RATER = r"""
import sys, time
from PySide6.QtCore import QSettings, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication
app = QApplication(sys.argv[:1])
from studio.main_window import MainWindow
w = MainWindow(QSettings(sys.argv[3], QSettings.IniFormat))
w.show()
w.link.connect_remote(sys.argv[1], sys.argv[2])
def pump(seconds):
    end = time.time() + seconds
    while time.time() < end:
        app.processEvents()
        time.sleep(0.005)
while w.link.client is None or "Rate" not in w.page_names:
    pump(0.05)
w.show_stage("Rate")
rate = w.rate
rate.rater.setText("killed")
rate._rater_changed()
acked = set()
while True:
    pump(0.02)
    for e in rate.submitted:
        if e["rating_id"] is not None and e["rating_id"] not in acked:
            acked.add(e["rating_id"])
            print("acked", e["pair"]["id"], e["choice"], flush=True)
    if rate.current is not None and len(rate.submitted) < int(sys.argv[4]):
        QTest.keyClick(rate, Qt.Key_Left if len(rate.submitted) % 2 else Qt.Key_Right)
"""


def test_a_killed_studio_loses_no_acknowledged_rating(shapes_project: Path, tmp_path: Path):
    """A real Studio process rates pairs by keyboard against a running backend and is SIGKILLed
    once its judgements were acknowledged: every one of them is in the backend, as given."""
    import io
    import os
    import signal
    import subprocess
    import sys

    from backend.store import ratings
    from backend.world.arrays import render_scenes

    root = tmp_path / "proj"
    shutil.copytree(shapes_project, root, ignore=shutil.ignore_patterns("runs", "*.db-wal", "*.db-shm"))
    images, _ = render_scenes(5, 0, 40, size=(64, 64))
    with Project.open(root) as project:
        blobs = []
        for im in images:
            buf = io.BytesIO()
            im.save(buf, "PNG")
            blobs.append(project.put_blob(buf.getvalue(), "png"))
        for i in range(20):
            ratings.queue_pair(project.db, f"scene {i}", blobs[2 * i], blobs[2 * i + 1], {})
    proc, client = start_backend(root)
    studio = None
    try:
        env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
        studio = subprocess.Popen([sys.executable, "-c", STUDIO_RATER, client.url, client.token, str(tmp_path / "studio.ini"), "12"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
        acked: dict[int, str] = {}
        while len(acked) < 12:
            line = studio.stdout.readline()
            assert line, "the Studio process ended before its ratings were acknowledged"
            _, cid, choice = line.split()
            acked[int(cid)] = choice
        os.kill(studio.pid, signal.SIGKILL)
        studio.wait(timeout=30)
        stored = {r["comparison_id"]: r["choice"] for r in client.ratings(rater="killed")}
        assert stored == acked
        assert all(r["decision_ms"] is not None for r in client.ratings(rater="killed"))
    finally:
        if studio is not None and studio.poll() is None:
            studio.kill()
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
