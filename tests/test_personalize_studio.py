"""Personalizing as a person does it, in the real Studio against a real backend: the Personalize page
shows the subject's pictures with their problems, imports dropped pictures into a new dataset
(flagging that two are too few), starts a run on the subject from its form, the run streams its
context-prompt previews to Runs, and the Playground compares the base with the personalization on
the same seeds, at a LoRA scale picked on the slider."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSettings

from backend.data.importer import import_sources
from backend.stages.world import install_shipped_base
from backend.store import Project
from backend.world.export import export_world, subject_folder
from studio.main_window import MainWindow


def test_personalize_page_to_run_to_scaled_comparison(qtbot, tmp_path: Path):
    root = tmp_path / "proj"
    with Project.init(root) as project:
        install_shipped_base(project, log=lambda m: None)
        export_world(tmp_path / "world", 2, 0, subject=True)
        import_sources(project, "subject", [subject_folder(tmp_path / "world")])
    w = MainWindow(QSettings(str(tmp_path / "studio.ini"), QSettings.IniFormat))
    qtbot.addWidget(w)
    w.show()
    try:
        w.open_project(str(root))
        qtbot.waitUntil(lambda: w.stack.currentIndex() == 1 and "Personalize" in w.page_names, timeout=120_000)
        w.show_stage("Personalize")
        pz = w.personalize
        qtbot.waitUntil(lambda: pz.strip.count() == 5 and "no problems" in pz.problems.text(), timeout=60_000)
        qtbot.waitUntil(lambda: "minute" in pz.estimate.text() and "100 class images" in pz.estimate.text(), timeout=60_000)
        assert "'a sks circle'" in pz.caption.text() and "every circle is your subject" in pz.prior_about.text()

        # two pictures dropped into a new dataset: imported by a job, then flagged as too few
        pz.dataset.setCurrentText("mine")
        pz.import_paths([str(p) for p in sorted(subject_folder(tmp_path / "world").glob("*.png"))[:2]])
        qtbot.waitUntil(lambda: pz.strip.count() == 2 and "too few" in pz.problems.text(), timeout=120_000)
        pz.dataset.setCurrentText("subject")
        qtbot.waitUntil(lambda: pz.strip.count() == 5, timeout=30_000)

        pz.prior.setChecked(False)  # the sentence says what turning it off risks
        assert "start looking like the subject" in pz.prior_about.text()
        pz.prior.setChecked(True)
        pz.class_count.setValue(2)
        for path, value in (("steps", 4), ("batch_size", 2), ("sample_every", 2), ("eval_images", 1)):
            pz.knobs[path].setValue(value)
        pz.recipe["class_eval_images"] = 2  # not on the page: the recipe's own field, kept small for the test
        pz.recipe["eval_every"] = 4
        pz.recipe["sampler"]["steps"] = 4  # class images, previews and evaluations at 4 steps: their quality is not under test
        pz.name.setText("mine-sks")
        pz.start()
        qtbot.waitUntil(lambda: w.page_names[w.sidebar.currentRow()] == "Runs", timeout=30_000)
        client = w.link.client
        qtbot.waitUntil(lambda: any(j["kind"] == "personalize" and j["state"] in ("done", "failed") for j in client.jobs()), timeout=300_000)
        job = next(j for j in client.jobs() if j["kind"] == "personalize")
        assert job["state"] == "done", client.log(job["id"])["text"][-2000:]
        qtbot.waitUntil(lambda: any(s["prompt"] == "a sks circle left of a red square" for s in w.runs.samples), timeout=30_000)
        model = next(m for m in client.models() if m["name"] == "mine-sks")
        assert model["kind"] == "personalized" and model["card"]["parent"] == "models/shapes-base"

        w.show_stage("Playground")
        pg = w.playground
        qtbot.waitUntil(lambda: pg.model_a.findData("models/mine-sks") >= 0 and pg.adapters.count() == 1, timeout=30_000)
        pg.model_a.setCurrentIndex(pg.model_a.findData("models/mine-sks"))
        pg.compare.setChecked(True)
        pg.model_b.setCurrentIndex(pg.model_b.findData("models/shapes-base"))
        pg.lora_scale.setValue(50)
        pg.prompts.setPlainText("a sks circle")
        pg.seeds.setText("0, 1")
        pg.steps.setValue(4)
        pg.generate()
        qtbot.waitUntil(lambda: pg.shown_images() >= 4, timeout=120_000)
        assert "LoRA scale 0.50" in pg.titles["A"].text() and "LoRA" not in pg.titles["B"].text()
        sampled = [j for j in client.jobs() if j["kind"] == "sample"]
        recipes = sorted(client.job(j["id"])["recipe"] for j in sampled)
        assert len(sampled) == 2 and sum("lora_scale = 0.5" in r for r in recipes) == 1  # the scale went to column A only
    finally:
        w.link.disconnect_backend(stop_process=True)
