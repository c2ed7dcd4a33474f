"""``make screenshots``: a PNG of every view in a representative state.

Builds a scratch project (ShapesWorld data through the normal import, a short pretraining run
with previews and a saved model), opens the real Studio offscreen against a real backend,
walks through every view and wizard page, and grabs each one.

    python -m studio.screenshots OUTDIR [--size 1280x800]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

RUN = """kind = "pretrain"
name = "screenshot-run"
[data]
dataset = "shapesworld"
[model]
size = "tiny"
[[curriculum]]
name = "simple"
steps = 40
buckets = [[32, 32]]
complexity = [1, 2]
[[curriculum]]
name = "all"
steps = 40
buckets = [[32, 32]]
[optim]
batch_size = 16
warmup = 5
[schedule]
log_every = 2
sample_every = 40
checkpoint_every = 40
eval_images = 10
[preview.sampler]
steps = 6
width = 32
height = 32
"""


def backend(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "backend", *args], cwd=REPO, check=True, stdout=subprocess.DEVNULL)


def build_project(root: Path) -> Path:
    project = root / "screenshot-project"
    backend("project", "init", str(project))
    backend("world", "export", str(root / "shapes"), "--n", "600", "--defects")
    backend("import", str(root / "shapes"), "--project", str(project), "--dataset", "shapesworld")
    backend("curate", "--project", str(project), "--dataset", "shapesworld")
    backend("import", str(root / "shapes-subject"), "--project", str(project), "--dataset", "subject")
    (root / "run.toml").write_text(RUN)
    backend("run", str(root / "run.toml"), "--project", str(project))
    backend("models", "add-shipped", "--project", str(project))
    return project


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", default="1280x800")
    ap.add_argument("--project", type=Path, default=None, help="use this project instead of building one")
    ap.add_argument("--stop-after", default="", help="stop after the shot of this name (a quick look at one view)")
    args = ap.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("SIGNAL_STUDIO_HOME", tempfile.mkdtemp(prefix="signal-shots-home-"))
    args.out.mkdir(parents=True, exist_ok=True)
    project = args.project or build_project(Path(tempfile.mkdtemp(prefix="signal-shots-")))
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    from .main_window import MainWindow

    w, h = (int(v) for v in args.size.split("x"))
    win = MainWindow(QSettings(str(args.out / "studio.ini"), QSettings.IniFormat))
    win.resize(w, h)
    win.show()

    def pump(seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end:
            app.processEvents()
            time.sleep(0.01)

    def until(cond, timeout: float = 120.0) -> None:
        end = time.time() + timeout
        while not cond() and time.time() < end:
            pump(0.05)

    class Done(Exception):
        pass

    def shot(name: str, widget=None) -> None:
        pump(0.4)
        (widget or win).grab().save(str(args.out / f"{name}.png"))
        print(args.out / f"{name}.png")
        if name == args.stop_after:
            raise Done

    try:
        walk(args, win, shot, pump, until, project)
    except Done:
        pass
    finally:
        win.close()
        win.link.disconnect_backend(stop_process=True)
    return 0


def walk(args, win, shot, pump, until, project: Path) -> None:
    """Every view and wizard page, in the order a user meets them."""

    win.start.set_recent([str(project)])
    shot("01-start")
    win.show_tour()
    win.tour.go(1)
    shot("01b-tour", win.tour)
    win.tour.reject()
    win.choose_backend()  # what a bundle without a backend environment offers on its first start
    shot("01c-backend-choice", win.choice_dialog)
    win.choice_dialog.reject()
    win.open_project(str(project))
    until(lambda: win.stack.currentIndex() == 1)
    until(lambda: win.data_view.model.total > 0)
    pump(2.0)
    dv = win.data_view
    dv.grid.setCurrentIndex(dv.model.index(3))
    until(lambda: dv.big.pixmap() is not None and not dv.big.pixmap().isNull(), 20)
    shot("02-data")
    dv.set_flagged_filter(True)
    pump(2.0)
    shot("03-data-flagged")
    dv.set_flagged_filter(None)
    dv.show_mixture_tab()
    shot("04-data-mixture")
    win.show_stage("Pretrain")
    until(lambda: "minutes" in win.pretrain_page.next_step.text(), 20)
    shot("05-pretrain")
    win.new_pretrain()
    until(lambda: getattr(win, "wizard", None) is not None and win.wizard.isVisible(), 30)
    wiz = win.wizard
    names = ["data", "model", "allocation", "curriculum", "repa", "compute", "review"]
    for i, name in enumerate(names):
        if name == "allocation":
            until(lambda: bool(wiz.pages[2].curves), 20)
        if name == "compute":
            until(lambda: "minutes" in wiz.pages[5].estimate.text() or "minute" in wiz.pages[5].estimate.text(), 20)
        if name == "review":
            until(lambda: wiz.pages[6].valid, 20)
        shot(f"06-wizard-{i + 1}-{name}", wiz)
        if i < len(names) - 1:
            wiz.next()
            pump(0.5)
    wiz.reject()
    # a real family from a local folder (a tiny random SD3 stands in for SD3.5): the memory plan and the launch
    folder = Path(tempfile.mkdtemp(prefix="signal-shots-sd3-")) / "tiny-sd3"
    backend("tiny-folder", "sd3", str(folder))
    old = win.wizard
    win.new_pretrain()
    until(lambda: win.wizard is not old and win.wizard.isVisible(), 30)
    wiz = win.wizard
    wiz.next()
    pump(0.5)
    model = wiz.pages[1]
    model.family.setCurrentIndex(model.family.findData("sd3"))
    model.init.setText(str(folder))
    shot("06b-wizard-sd3-model", wiz)
    for _ in range(4):
        wiz.next()
        pump(0.5)
    until(lambda: "GiB" in wiz.pages[5].memory.text(), 30)
    shot("06b-wizard-sd3-compute", wiz)
    # the same folder with a transformer of 8 G parameters (only its safetensors header, on a sparse file): the plan refuses
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    header = json.dumps({"w": {"dtype": "BF16", "shape": [8_000_000_000], "data_offsets": [0, 16_000_000_000]}}).encode()
    with open(weights, "wb") as fh:
        fh.write(struct.pack("<Q", len(header)) + header)
        fh.truncate(8 + len(header) + 16_000_000_000)
    wiz.pages[5].checkpointing.setChecked(True)
    until(lambda: "does not fit" in wiz.pages[5].memory.text(), 30)
    shot("06b-wizard-sd3-does-not-fit", wiz)
    wiz.reject()
    win.show_stage("Runs")
    until(lambda: win.runs.loss_points() > 0, 30)
    pump(1.5)
    shot("07-runs-loss")
    for tab in ("Loss by t", "Previews", "Log"):
        win.runs.tabs.setCurrentIndex([win.runs.tabs.tabText(i) for i in range(win.runs.tabs.count())].index(tab))
        tab = tab.lower().replace(" ", "-")
        if tab == "previews":
            until(lambda: win.runs.preview_count() > 0, 30)
        shot(f"07-runs-{tab}")
    win.show_stage("Playground")
    until(lambda: win.playground.model_a.count() > 0, 20)
    pg = win.playground
    pg.compare.setChecked(True)
    pg.prompts.setPlainText("a red circle\na blue square")
    pg.seeds.setText("0")
    pg.steps.setValue(8)
    until(lambda: pg.scorer.count() > 1, 20)
    pg.scorer.setCurrentIndex(1)
    pg.generate()
    until(lambda: pg.shown_images() >= 4, 240)
    until(lambda: bool(pg.rewards.get("B")), 60)
    shot("08-playground-compare")
    run_dir = next(j["run_dir"] for j in win.link.client.jobs() if j["kind"] == "pretrain")
    prompts = '["a red circle", "a blue square", "a yellow star", "two green triangles"]'
    job = win.link.client.create_job(f'kind = "pairs"\nmodel = "{run_dir}"\nprompts_from = "list"\nprompts = {prompts}\nimages_per_prompt = 4\n'
                                     '[sampler]\nsteps = 6\nwidth = 32\nheight = 32\n', "pairs")
    win.link.client.wait_job(job["id"], timeout=300)
    win.show_stage("Rate")
    rate = win.rate
    until(lambda: rate.current is not None, 60)
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    for key in (Qt.Key_Left, Qt.Key_Right, Qt.Key_Down):
        QTest.keyClick(rate, key)
        until(lambda: rate.current is not None, 20)
    pump(1.0)
    rate.reload_history()
    shot("09-rate-pairs")
    rate.mode.setCurrentIndex(rate.mode.findData("rank"))
    until(lambda: rate.rank.current is not None, 60)
    QTest.keyClick(rate, Qt.Key_3)
    shot("09-rate-ranking")
    win.show_stage("Align")
    al = win.align
    until(lambda: "minute" in al.estimate.text(), 60)
    shot("11-align-grpo")
    al.reward.showPopup()  # the rewards on offer: the rules, the relation weighted, and the project's reward models
    shot("11-align-grpo-rewards", al.reward.view().window())
    al.reward.hidePopup()
    al.method_buttons["dpo"].setChecked(True)
    pump(1.0)
    until(lambda: "minute" in al.estimate.text(), 30)
    shot("11-align-dpo")
    al.method_buttons["grpo"].setChecked(True)
    for path, value in (("steps", 6), ("grpo.group_size", 4), ("grpo.prompts_per_step", 2), ("grpo.sde_steps", 4), ("eval_images", 16),
                        ("eval_every", 2)):
        al.knobs[path][0].setValue(value)
    al.name.setText("grpo-screenshot")
    al.start()
    until(lambda: any(j["kind"] == "align" and j["state"] == "done" for j in win.link.client.jobs()), 300)
    win.runs.tabs.setCurrentIndex([win.runs.tabs.tabText(i) for i in range(win.runs.tabs.count())].index("Method"))
    pump(2.0)
    shot("12-runs-method-grpo")
    win.show_stage("Personalize")
    pz = win.personalize
    until(lambda: pz.strip.count() == 5 and "minute" in pz.estimate.text(), 60)
    pump(1.0)
    shot("13-personalize")
    for path, value in (("steps", 150), ("sample_every", 50), ("eval_images", 4)):
        pz.knobs[path].setValue(value)
    pz.class_count.setValue(24)
    pz.name.setText("sks-circle")
    pz.start()
    until(lambda: any(j["kind"] == "personalize" and j["state"] == "done" for j in win.link.client.jobs()), 600)
    win.runs.tabs.setCurrentIndex([win.runs.tabs.tabText(i) for i in range(win.runs.tabs.count())].index("Previews"))
    pump(2.0)
    shot("14-runs-personalize-previews")
    win.show_stage("Playground")
    until(lambda: pg.model_a.findData("models/sks-circle") >= 0, 30)
    pg.model_a.setCurrentIndex(pg.model_a.findData("models/sks-circle"))
    pg.model_b.setCurrentIndex(pg.model_b.findData("models/shapes-base"))
    pg.scorer.setCurrentIndex(0)
    pg.lora_scale.setValue(80)
    pg.prompts.setPlainText("a sks circle\na sks circle on a striped yellow background")
    pg.seeds.setText("0, 1")
    pg.steps.setValue(20)
    pg.generate()
    until(lambda: pg.shown_images() >= 8, 240)
    shot("15-playground-personalized")
    win.show_stage("Distill")
    dv = win.distill
    until(lambda: "minute" in dv.estimate.text(), 60)
    pump(1.0)
    shot("16-distill")
    dv.method_buttons["dmd"].setChecked(True)
    until(lambda: "fake-score network" in dv.estimate.text(), 60)
    pump(1.0)
    shot("16b-distill-dmd")
    dv.method_buttons["consistency"].setChecked(True)
    for path, value in (("consistency.steps", 150), ("eval_images", 16), ("sample_every", 50)):
        dv.knobs[path].setValue(value)
    dv.name.setText("student-4step")
    dv.start()
    until(lambda: any(j["kind"] == "distill" and j["state"] == "done" for j in win.link.client.jobs()), 600)
    win.runs.tabs.setCurrentIndex([win.runs.tabs.tabText(i) for i in range(win.runs.tabs.count())].index("Previews"))
    pump(2.0)
    shot("18-runs-distill-previews")
    win.show_stage("Distill")
    dv.method_buttons["dmd"].setChecked(True)
    dv.target.setCurrentIndex(dv.target.findData(1))
    for path, value in (("dmd.steps", 60), ("dmd.fake_updates", 3), ("eval_images", 16), ("sample_every", 30)):
        dv.knobs[path].setValue(value)
    dv.name.setText("student-dmd-1step")
    dv.start()
    until(lambda: sum(j["kind"] == "distill" and j["state"] == "done" for j in win.link.client.jobs()) == 2, 600)
    win.runs.tabs.setCurrentIndex([win.runs.tabs.tabText(i) for i in range(win.runs.tabs.count())].index("Method"))
    pump(2.0)
    shot("19-runs-method-dmd")
    win.show_stage("Playground")
    until(lambda: pg.model_a.findData("models/student-4step") >= 0, 30)
    pg.model_a.setCurrentIndex(pg.model_a.findData("models/student-4step"))
    pg.model_b.setCurrentIndex(pg.model_b.findData("models/shapes-base"))
    pg.lora_scale.setValue(100)
    pg.prompts.setPlainText("a red circle\ntwo green triangles")
    pg.seeds.setText("0, 1")
    pg.generate()
    until(lambda: pg.shown_images() >= 8 and bool(pg.latency.get("A")) and bool(pg.latency.get("B")), 240)
    shot("17-playground-distilled")
    win.resize(2560, 1440)
    win.show_stage("Runs")
    win.runs.tabs.setCurrentIndex(0)
    shot("10-runs-2560x1440")


if __name__ == "__main__":
    sys.exit(main())
