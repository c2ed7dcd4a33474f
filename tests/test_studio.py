"""The real Studio (offscreen) against a real backend process it starts itself: create a project,
add ShapesWorld data, run a tiny pretraining through the wizard, watch the loss curve and a
preview arrive, stop the run, generate in the playground."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QInputDialog, QWizard
from pytestqt.exceptions import TimeoutError as QtTimeout

from studio.main_window import MainWindow


@pytest.fixture
def window(qtbot, tmp_path: Path):
    settings = QSettings(str(tmp_path / "studio.ini"), QSettings.IniFormat)
    w = MainWindow(settings)
    qtbot.addWidget(w)
    w.show()
    yield w
    w.link.disconnect_backend(stop_process=True)


def test_studio_end_to_end(qtbot, window: MainWindow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    w = window
    project = tmp_path / "studio-project"
    failures: list[tuple[str, str]] = []
    w.link.failed.connect(lambda message, details: failures.append((message, details)))
    w.open_project(str(project), True)
    try:
        qtbot.waitUntil(lambda: bool(failures) or w.stack.currentIndex() == 1, timeout=120_000)
    except QtTimeout as exc:  # say where it stuck: the status line and the backend's output so far
        raise AssertionError(f"no project page: status {w.statusBar().currentMessage()!r}, backend output {w.link._output[-3000:]!r}") from exc
    assert not failures, failures
    assert "studio-project" in w.windowTitle() and "CPU" in w.devices_label.text()
    assert (project / "project.db").exists()

    # Data: add a small ShapesWorld dataset through the button (Qt's input dialogs answered by a fake)
    w.show_stage("Data")
    monkeypatch.setattr(QInputDialog, "getInt", staticmethod(lambda *a, **k: (150, True)))
    monkeypatch.setattr(QInputDialog, "getText", staticmethod(lambda *a, **k: ("shapes", True)))
    qtbot.mouseClick(w.data_view.add_world, Qt.LeftButton)
    qtbot.waitUntil(lambda: w.data_view.model.total > 100, timeout=120_000)
    assert w.data_view.dataset_box.currentText() == "shapes"
    assert "rejected at import" in w.data_view.summary.text()
    w.data_view.search.setText("circle")
    qtbot.waitUntil(lambda: 0 < w.data_view.model.total < 100, timeout=10_000)
    w.data_view.search.setText("")

    # Pretrain through the wizard; the page shows the data it would train on and says there is no run yet
    w.show_stage("Pretrain")
    qtbot.waitUntil(lambda: "shapes" in w.pretrain_page.data_label.text(), timeout=20_000)
    assert "images (" in w.pretrain_page.data_label.text() and "single_object" in w.pretrain_page.data_label.text()
    assert w.pretrain_page.empty.isVisibleTo(w.pretrain_page) and not w.pretrain_page.runs.isVisibleTo(w.pretrain_page)
    qtbot.mouseClick(w.pretrain_page.new_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: getattr(w, "wizard", None) is not None and w.wizard.isVisible(), timeout=20_000)
    wiz = w.wizard
    data_page, model_page, alloc_page, curr_page, repa_page, compute_page, review_page = wiz.pages
    cats = {data_page.mix.item(r, 0).text() for r in range(data_page.mix.rowCount())}
    assert {"single_object", "counting", "colour_binding", "spatial", "background"} <= cats
    assert data_page.max_upscale.text() == "no limit"
    data_page.max_upscale.setValue(1.0)  # the 32 px scenes fill the 32 px bucket without enlarging
    wiz.next()
    model_page.radios["tiny"].setChecked(True)
    wiz.next()
    qtbot.waitUntil(lambda: bool(alloc_page.curves), timeout=20_000)
    # the wizard's limits and help come from the recipe schema the backend serves, not from a copy
    from backend.recipes.pretrain import TimestepDensity

    m_field = TimestepDensity.model_fields["m"]
    assert (alloc_page.m.minimum(), alloc_page.m.maximum()) == (m_field.metadata[0].ge, m_field.metadata[1].le)
    assert alloc_page.m.toolTip() == m_field.description
    alloc_page.shift.setCurrentIndex(alloc_page.shift.findData("fixed"))
    alloc_page.alpha.setValue(2.0)
    qtbot.waitUntil(lambda: all(abs(c["alpha"] - 2.0) < 1e-9 for c in alloc_page.curves.values()), timeout=20_000)
    wiz.next()
    while curr_page.table.rowCount() > 1:
        curr_page.table.setCurrentCell(1, 0)
        curr_page._remove()
    curr_page.table.cellWidget(0, 1).setValue(3000)
    curr_page.table.item(0, 2).setText("32x32")
    wiz.next()
    wiz.next()
    compute_page.batch.setValue(8)
    compute_page.sample_every.setValue(10)
    compute_page.ckpt_every.setValue(20)
    qtbot.waitUntil(lambda: "parameters" in compute_page.estimate.text(), timeout=20_000)
    wiz.next()
    qtbot.waitUntil(lambda: review_page.valid and "kind = \"pretrain\"" in review_page.text.toPlainText(), timeout=20_000)
    assert "alpha = 2.0" in review_page.text.toPlainText() and "max_upscale = 1.0" in review_page.text.toPlainText()
    review_page.name.setText("studio-tiny")
    assert wiz.button(QWizard.FinishButton).text() == "Start training"
    wiz.button(QWizard.FinishButton).click()
    qtbot.waitUntil(lambda: wiz.started_job is not None, timeout=20_000)
    job_id = wiz.started_job["id"]

    # Runs: the loss curve and a preview grid arrive while it runs
    qtbot.waitUntil(lambda: w.pages.currentWidget() is w.runs and w.runs.selected == job_id, timeout=20_000)
    qtbot.waitUntil(lambda: w.runs.loss_points() >= 3, timeout=240_000)
    qtbot.waitUntil(lambda: w.runs.preview_count() >= 1, timeout=240_000)
    assert w.runs.jobs[job_id]["state"] == "running"
    assert "running: #" in w.job_label.text()
    qtbot.mouseClick(w.runs.btn["stop"], Qt.LeftButton)
    qtbot.waitUntil(lambda: w.runs.jobs[job_id]["state"] == "stopped", timeout=120_000)
    assert w.runs.btn["resume"].isEnabled() and not w.runs.btn["stop"].isEnabled()
    # the Pretrain page lists the run; a double-click opens it in Runs
    w.show_stage("Pretrain")
    page = w.pretrain_page
    assert page.job_ids == [job_id] and page.runs.item(0, 1).text() == "stopped" and not page.empty.isVisibleTo(page)
    w.runs.select(-1)
    page._open_run(0, 0)
    assert w.pages.currentWidget() is w.runs and w.runs.selected == job_id

    # Playground: generate from the stopped run's latest checkpoint
    w.show_stage("Playground")
    qtbot.waitUntil(lambda: w.playground.model_a.count() >= 1, timeout=20_000)
    w.playground.prompts.setPlainText("a red circle")
    w.playground.seeds.setText("3")
    w.playground.steps.setValue(4)
    qtbot.mouseClick(w.playground.generate_btn, Qt.LeftButton)
    qtbot.waitUntil(lambda: w.playground.shown_images() == 1, timeout=180_000)
    assert "Done" in w.playground.status.text()


SIGNAL_FLOOD = r"""
import sys
from PySide6.QtCore import QCoreApplication, QTimer
from studio.tasks import Tasks

app = QCoreApplication([])
tasks = Tasks(threads=2)
got = []
before = (sys.getrefcount(None), sys.getrefcount(True))
for _ in range(20000):
    tasks.run(lambda: {"state": None, "ok": True}, done=got.append)
def check():
    if len(got) < 20000:
        return
    got.clear()
    after = (sys.getrefcount(None), sys.getrefcount(True))
    print(before[0] - after[0], before[1] - after[1])
    app.quit()
timer = QTimer()
timer.timeout.connect(check)
timer.start(20)
app.exec()
"""


def test_results_delivered_to_the_gui_thread_keep_python_refcounts_balanced():
    """Every backend reply and event reaches the GUI through a queued signal; a Qt binding that
    loses a reference per delivery (PySide6 6.12.0 does) aborts a streaming Studio in seconds."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", SIGNAL_FLOOD], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent, env={**__import__("os").environ, "QT_QPA_PLATFORM": "offscreen"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lost_none, lost_true = map(int, proc.stdout.split())
    assert lost_none < 100 and lost_true < 100, (lost_none, lost_true)


def test_a_backend_of_another_api_version_gets_one_clear_message(qtbot, window: MainWindow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The Studio compares the API schema hash the backend reports at attach with its own; a mismatch
    is one message naming both versions, and the Studio stays detached (no stream of route errors)."""
    import backend.service.client as client_module
    from backend.store import Project

    with Project.init(tmp_path / "p"):
        pass
    monkeypatch.setattr(client_module, "API_SCHEMA", "000000000000")  # as if this Studio were another release
    got: list[str] = []
    window.link.failed.connect(lambda message, details: got.append(message))
    window.open_project(str(tmp_path / "p"))
    qtbot.waitUntil(lambda: bool(got), timeout=120_000)
    assert "different versions of the API" in got[0] and "000000000000" in got[0]
    assert window.link.client is None and window.backend_label.text() == "no backend"
    from PySide6.QtWidgets import QMessageBox

    assert any("different versions" in b.text() for b in window.findChildren(QMessageBox))


def test_after_the_demo_data_the_studio_leads_on_and_a_data_job_shows_no_training_controls(qtbot, window: MainWindow, tmp_path: Path):
    """The demo's data job (here a small one, through the same path): while it runs, Runs shows its log
    and no Pause / Sample now / Save now; when it is done the status bar stops saying the data is being
    prepared and the Studio moves on to the Playground, naming the next steps."""
    from backend.store import Project

    with Project.init(tmp_path / "p"):
        pass
    window.open_project(str(tmp_path / "p"))
    qtbot.waitUntil(lambda: window.stack.currentIndex() == 1, timeout=120_000)
    window.backend_label.setText(window.backend_label.text() + " · preparing the demo data (rendering and importing ShapesWorld)…")
    window.link.call("create_job", 'kind = "world"\ndataset = "shapesworld"\nimages = 24\nresolution = [32, 32]\nsubject = false\n', "demo data",
                     done=window._demo_job_started)
    runs = window.runs
    qtbot.waitUntil(lambda: runs.selected is not None and runs.jobs.get(runs.selected, {}).get("kind") == "world", timeout=30_000)
    assert not runs.btn["pause"].isVisible() and not runs.btn["sample"].isEnabled() and runs.btn["stop"].isVisible()
    assert runs.tabs.tabText(runs.tabs.currentIndex()) == "Log" and not runs.tabs.isTabVisible(0)
    qtbot.waitUntil(lambda: window.page_names[window.sidebar.currentRow()] == "Playground", timeout=180_000)
    assert "preparing" not in window.backend_label.text() and "ready" in window.statusBar().currentMessage()


def test_the_studio_reconnects_by_itself_when_its_service_restarts(qtbot, window: MainWindow, tmp_path: Path):
    """The project's service stops and another starts (new port, new token) while the Studio is
    attached: the Studio finds it through the discovery file and attaches again, no action needed."""
    from backend.service.client import start_backend
    from backend.store import Project

    with Project.init(tmp_path / "p"):
        pass
    proc, client = start_backend(tmp_path / "p", log_path=tmp_path / "one.log")
    procs = [proc]
    try:
        window.open_project(str(tmp_path / "p"))
        qtbot.waitUntil(lambda: window.link.client is not None and window.link.client.url == client.url, timeout=60_000)
        qtbot.waitUntil(lambda: window.stream_label.text() == "live", timeout=30_000)
        client.close()
        proc.terminate()
        proc.wait(timeout=30)
        qtbot.waitUntil(lambda: window.stream_label.text() == "reconnecting…", timeout=30_000)
        proc2, client2 = start_backend(tmp_path / "p", log_path=tmp_path / "two.log")
        procs.append(proc2)
        qtbot.waitUntil(lambda: window.link.client is not None and window.link.client.url == client2.url
                        and window.stream_label.text() == "live", timeout=60_000)
        got: list = []
        window.link.call("datasets", done=got.append)
        qtbot.waitUntil(lambda: bool(got), timeout=20_000)
        assert got == [[]] and window.backend_label.text().startswith(f"backend {client2.url}")
        client2.close()
    finally:
        window.link.disconnect_backend()
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=30)


def test_a_bundled_studio_without_a_backend_environment_offers_the_ways_in_and_remembers_the_choice(
        qtbot, window: MainWindow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """From the desktop bundle (no engine inside) and no environment chosen, opening a project offers to
    create an environment, use one, or connect to a running backend, instead of failing to start; a bad
    path is refused with the reason; the chosen Python opens the project the user asked for and is
    remembered for the next start."""
    import sys

    import studio.backend_link as backend_link
    from backend.store import Project

    with Project.init(tmp_path / "p"):
        pass
    monkeypatch.setattr(backend_link, "FROZEN", True)
    monkeypatch.delenv("SIGNAL_STUDIO_PYTHON", raising=False)
    got: list[str] = []
    window.link.failed.connect(lambda message, details: got.append(message))
    window.link.python = None
    assert window.needs_backend_choice()
    window.open_project(str(tmp_path / "p"))
    qtbot.waitUntil(lambda: bool(got), timeout=10_000)
    assert got == ["This Studio has no backend environment yet."] and window.link.process is None
    dialog = window.choice_dialog
    qtbot.waitUntil(dialog.isVisible, timeout=5_000)
    assert {dialog.create_btn.text(), dialog.use_btn.text(), dialog.connect_btn.text()} == {"Create…", "Use it", "Connect"}
    dialog.python.setText(str(tmp_path))  # a folder, not a program
    dialog.use_btn.click()
    assert dialog.isVisible() and "folder" in dialog.problem.text() and window.link.process is None
    dialog.url.setText("127.0.0.1:8765")
    dialog.connect_btn.click()
    assert dialog.isVisible() and "http://" in dialog.problem.text()
    dialog.python.setText(sys.executable)
    dialog.use_btn.click()
    assert not dialog.isVisible()
    qtbot.waitUntil(lambda: window.stack.currentIndex() == 1, timeout=120_000)
    assert window.link.process is not None and window.link.process.program() == sys.executable
    assert window.settings.value("backend/python") == sys.executable and not window.needs_backend_choice()
    # the first window lets go of its backend before the next start: a second window built while the first
    # one's pool threads sit in HTTP reads once deadlocked the garbage collector (a test-only situation)
    window.link.disconnect_backend(stop_process=True)
    again = MainWindow(window.settings)  # the next start remembers it
    qtbot.addWidget(again)
    assert again.link.python == sys.executable and not again.needs_backend_choice()

def test_every_view_of_an_empty_project_says_what_to_do_next(qtbot, window: MainWindow, tmp_path: Path):
    """A new project has no data, model, pairs or runs: each view names the next step instead of an empty
    list, a disabled-looking form or a failed estimate, and nothing can be started that needs a model."""
    from backend.store import Project
    from studio.widgets import NO_MODEL

    with Project.init(tmp_path / "p"):
        pass
    window.open_project(str(tmp_path / "p"))
    qtbot.waitUntil(lambda: window.stack.currentIndex() == 1, timeout=120_000)
    for name in ("Align", "Personalize", "Distill", "Playground", "Rate", "Runs"):
        window.show_stage(name)
    forms = (window.align, window.personalize, window.distill)
    qtbot.waitUntil(lambda: all(f._built and f.estimate.text() == NO_MODEL for f in forms) and window.playground.status.text() == NO_MODEL,
                    timeout=60_000)
    for form in forms:
        assert not form.start_btn.isEnabled() and form.model.placeholderText() == "no model yet"
    assert not window.playground.generate_btn.isEnabled()
    qtbot.waitUntil(lambda: window.rate.progress.text() == "no pairs yet", timeout=20_000)
    assert "Generate pairs" in window.rate.prompt.text()
    assert "No runs yet" in window.runs.title.text() and "no data yet" in window.data_view.summary.text()
