"""Distilling as a person does it, in the real Studio against a real backend: the Distill page lists
the five methods with what each holds in memory (DMD2's fake network counted), keeps the rounds a halving of the target, estimates the
run, starts it; the student lands in the Playground, sampled at its own steps and without guidance
beside the teacher on the same seeds, each column with its latency per image."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings

from backend.recipes import WorldRecipe
from backend.stages.world import add_world_data
from backend.store import Project
from studio.main_window import MainWindow


def test_distill_page_to_run_to_teacher_student_comparison(qtbot, tmp_path: Path):
    root = tmp_path / "proj"
    with Project.init(root) as project:
        add_world_data(project, WorldRecipe(images=48, seed=0, resolution=(64, 64), subject=False, base_model=True), log=lambda m: None)
    w = MainWindow(QSettings(str(tmp_path / "studio.ini"), QSettings.IniFormat))
    qtbot.addWidget(w)
    w.show()
    try:
        w.open_project(str(root))
        qtbot.waitUntil(lambda: w.stack.currentIndex() == 1 and "Distill" in w.page_names, timeout=120_000)
        w.show_stage("Distill")
        dv = w.distill
        qtbot.waitUntil(lambda: "minute" in dv.estimate.text(), timeout=60_000)
        assert "4 network passes per image against the teacher's 40" in dv.estimate.text()
        assert dv.method_buttons["consistency"].isChecked() and "target (EMA copy)" in dv.estimate.text()  # the recommended one
        assert all(b.isEnabled() for b in dv.method_buttons.values())
        dv.method_buttons["dmd"].setChecked(True)
        qtbot.waitUntil(lambda: "fake-score network" in dv.estimate.text(), timeout=30_000)
        assert dv.form.isRowVisible(dv.knobs["dmd.fake_updates"]) and not dv.form.isRowVisible(dv.knobs["ladd.r1"])
        dv.method_buttons["progressive"].setChecked(True)
        assert dv.form.isRowVisible(dv.knobs["progressive.start_steps"]) and not dv.form.isRowVisible(dv.knobs["consistency.ema"])
        dv.target.setCurrentIndex(dv.target.findData(2))
        assert dv.knobs["progressive.start_steps"].value() == 16  # 16 -> 8 -> 4 -> 2
        dv.target.setCurrentIndex(dv.target.findData(4))
        dv.knobs["progressive.start_steps"].setValue(8)
        for path, value in (("progressive.steps_per_round", 2), ("data.batch_size", 4), ("eval_images", 4), ("sample_every", 2)):
            dv.knobs[path].setValue(value)
        dv.name.setText("student")
        dv.start()
        qtbot.waitUntil(lambda: w.page_names[w.sidebar.currentRow()] == "Runs", timeout=30_000)
        client = w.link.client
        qtbot.waitUntil(lambda: any(j["kind"] == "distill" and j["state"] in ("done", "failed") for j in client.jobs()), timeout=300_000)
        job = next(j for j in client.jobs() if j["kind"] == "distill")
        assert job["state"] == "done", client.log(job["id"])["text"][-2000:]
        runs = w.runs
        # the teacher's pictures of the preview prompts and seeds, under the student's previews
        qtbot.waitUntil(lambda: len(runs.teacher_samples) == 8 and runs.preview_count() == 8, timeout=30_000)
        assert "Teacher (20 steps, cfg 3.0)" in runs.teacher_label.text()
        assert {(s["prompt"], s["seed"]) for s in runs.teacher_samples} == {(s["prompt"], s["seed"]) for s in runs.samples if s["step"] == runs.shown_step}
        student = next(m for m in client.models() if m["name"] == "student")
        assert student["kind"] == "distilled" and student["card"]["sampler"]["steps"] == 4 and student["card"]["parent"] == "models/shapes-base"

        w.show_stage("Playground")
        pg = w.playground
        qtbot.waitUntil(lambda: pg.model_a.findData("models/student") >= 0, timeout=30_000)
        pg.model_a.setCurrentIndex(pg.model_a.findData("models/student"))
        pg.compare.setChecked(True)
        pg.model_b.setCurrentIndex(pg.model_b.findData("models/shapes-base"))
        pg.prompts.setPlainText("a red circle")
        pg.seeds.setText("0, 1")
        pg.steps.setValue(20)
        pg.generate()
        qtbot.waitUntil(lambda: pg.shown_images() >= 4, timeout=120_000)
        qtbot.waitUntil(lambda: bool(pg.latency.get("A")) and bool(pg.latency.get("B")), timeout=30_000)
        assert "its own sampler: 4 steps, cfg 1" in pg.titles["A"].text() and "ms per image" in pg.titles["B"].text()
        recipes = {client.job(j["id"])["name"]: client.job(j["id"])["recipe"] for j in client.jobs() if j["kind"] == "sample"}
        assert "steps = 4\ncfg = 1.0" in recipes["playground A"] and "steps = 20\n" in recipes["playground B"]
    finally:
        w.link.disconnect_backend(stop_process=True)
