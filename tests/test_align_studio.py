"""Aligning as a person does it, in the real Studio against a real backend: the Align page shows
each method with its cost, a Flow-GRPO run is started from its form, it appears in Runs with its
own curves, and the tuned model is compared with its parent in the Playground on the same seeds."""

from __future__ import annotations

import re
from pathlib import Path

from PySide6.QtCore import QSettings

from backend.stages.world import install_shipped_base
from backend.store import Project
from studio.main_window import MainWindow


def test_align_page_to_run_to_side_by_side_comparison(qtbot, tmp_path: Path):
    root = tmp_path / "proj"
    with Project.init(root) as project:
        install_shipped_base(project, log=lambda m: None)
    w = MainWindow(QSettings(str(tmp_path / "studio.ini"), QSettings.IniFormat))
    qtbot.addWidget(w)
    w.show()
    try:
        w.open_project(str(root))
        qtbot.waitUntil(lambda: w.stack.currentIndex() == 1 and "Align" in w.page_names, timeout=120_000)
        w.show_stage("Align")
        al = w.align
        # a duration as duration_text writes it (GRPO's defaults on the 11M-parameter base run for hours on 2 cores)
        qtbot.waitUntil(lambda: re.search(r"\d+ (minutes?|hours|days)", al.estimate.text()) is not None, timeout=60_000)
        assert al.method() == "grpo" and "group" in al.method_about.text()
        cost_grpo = al.estimate.text()
        al.method_buttons["dpo"].setChecked(True)  # each method says what it does; DPO asks for ratings first
        qtbot.waitUntil(lambda: al.estimate.text() != cost_grpo and "minute" in al.estimate.text(), timeout=30_000)
        assert "rated" in al.method_about.text() and "rate at least 8 pairs" in al.ratings.text()
        al.method_buttons["grpo"].setChecked(True)
        for path, value in (("steps", 2), ("grpo.group_size", 2), ("grpo.prompts_per_step", 2), ("grpo.sde_steps", 2), ("eval_images", 4),
                            ("eval_every", 2)):
            al.knobs[path][0].setValue(value)
        al.name.setText("aligned")
        al.start()
        qtbot.waitUntil(lambda: w.page_names[w.sidebar.currentRow()] == "Runs", timeout=30_000)
        client = w.link.client
        qtbot.waitUntil(lambda: any(j["kind"] == "align" and j["state"] in ("done", "failed") for j in client.jobs()), timeout=300_000)
        job = next(j for j in client.jobs() if j["kind"] == "align")
        assert job["state"] == "done", client.log(job["id"])["text"][-2000:]
        # the last evaluation lands in the store as the job ends: wait for the view's next refresh to draw it
        wanted = {"grpo/reward_mean", "grpo/advantage_collapse", "shapes_eval/overall"}
        qtbot.waitUntil(lambda: "grpo/kl" in w.runs.series and wanted <= set(w.runs._acc_curves), timeout=30_000)
        tuned = next(m for m in client.models() if m["name"] == "aligned")
        assert tuned["kind"] == "tuned" and tuned["card"]["parent"] == "models/shapes-base"

        w.show_stage("Playground")
        pg = w.playground
        qtbot.waitUntil(lambda: pg.model_a.findData("models/aligned") >= 0, timeout=30_000)
        pg.model_a.setCurrentIndex(pg.model_a.findData("models/shapes-base"))
        pg.compare.setChecked(True)
        pg.model_b.setCurrentIndex(pg.model_b.findData("models/aligned"))
        pg.prompts.setPlainText("red circle")
        pg.enhance.setChecked(True)
        pg.seeds.setText("0, 1")
        pg.steps.setValue(4)
        pg.generate()
        qtbot.waitUntil(lambda: pg.shown_images() >= 4, timeout=120_000)
        qtbot.waitUntil(lambda: bool(pg.enhanced.get("A")) and bool(pg.enhanced.get("B")), timeout=30_000)
        assert pg.enhanced["A"] == pg.enhanced["B"] == ["a red circle", "a red circle"]  # same prompt, same seeds, both columns
        assert "→ a red circle" in pg.grids["B"].tiles[0].label.text()
    finally:
        w.link.disconnect_backend(stop_process=True)
