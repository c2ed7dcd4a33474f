"""Studio parts tested on their own: reused preview tiles, a settled plot range, the Playground's size,
the backend link's handling of a refused token while a backend starts."""

from __future__ import annotations

import pytest
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QLabel

from studio.views.playground import Playground
from studio.views.runs_view import nice_ceiling, settled_range
from studio.widgets import TileGrid


def test_tile_grid_reuses_tiles_and_keeps_pictures_when_growing(qtbot):
    grid = TileGrid(cols=2, side=16)
    qtbot.addWidget(grid)
    first = grid.reset(["a", "b"])
    pix = QPixmap(16, 16)
    pix.fill()
    first[0].set_pixmap(pix)
    kept = list(first)
    grid.ensure(3)
    assert grid.tiles[:2] == kept and len(grid.tiles) == 3
    assert grid.tiles[0]._pix is not None  # ensure() leaves pictures alone
    again = grid.reset(["c"])
    assert again == kept[:1] and again[0].label.text() == "c"
    assert again[0]._pix is None  # reset() empties the tiles it keeps


def test_plot_range_settles_instead_of_following_every_point():
    assert [nice_ceiling(x) for x in (0.3, 7, 10, 10.5, 260, 5001)] == [1, 10, 10, 20, 500, 10000]
    r = settled_range(1.0, 2.0, None)
    assert r[0] < 1.0 and r[1] > 2.0
    assert settled_range(1.1, 1.9, r) is None  # inside and filling most of it: no change
    assert settled_range(1.0, 2.5, r) is not None  # data left the range
    smaller = settled_range(1.4, 1.5, r)  # the loss fell into a small band: zoom in
    assert smaller is not None and smaller[1] - smaller[0] < 0.5


def test_playground_samples_at_the_size_the_picked_model_trained_at(qtbot):
    pg = Playground(link=None)
    qtbot.addWidget(pg)
    assert pg.size.currentText() == "64x64"
    models = [{"id": 1, "name": "old", "path": "models/old", "card": {}},
              {"id": 2, "name": "new", "path": "models/new", "card": {"size": [96, 128]}}]
    jobs = [{"id": 5, "kind": "pretrain", "name": "r", "run_dir": "runs/job-00005", "step": 3, "size": [48, 48]}]
    pg._fill(models, jobs)
    assert pg.model_a.currentData() == "models/new" and pg.size.currentText() == "96x128"
    pg.model_a.setCurrentIndex(pg.model_a.findData("models/old"))  # no size on its card: left as it is
    assert pg.size.currentText() == "96x128"
    pg.size.setCurrentText("32x32")
    pg.model_a.setCurrentIndex(pg.model_a.findData("models/new"))
    assert pg.size.currentText() == "96x128"
    pg.size.setCurrentText("32x32")  # the user's pick survives a refresh of the same lists
    pg._fill(models, jobs)
    assert pg.model_a.currentData() == "models/new" and pg.size.currentText() == "32x32"
    pg.model_a.setCurrentIndex(pg.model_a.findData("runs/job-00005"))  # a run's latest checkpoint: its recipe's size
    assert pg.size.currentText() == "48x48"


def test_backend_link_reports_a_refused_token_at_once_while_starting(qtbot, tmp_path):
    """While a backend starts, only 'cannot reach it yet' is worth polling again; a refused token is final."""
    import sys
    import time

    from PySide6.QtCore import QProcess

    from backend.service.client import start_backend
    from studio.backend_link import BackendLink
    from studio.tasks import Tasks

    proc, client = start_backend(tmp_path / "proj", create=True)
    link = BackendLink(Tasks())
    waiting = QProcess()  # stands for the backend process the link started: alive all along
    try:
        waiting.start(sys.executable, ["-c", "import time; time.sleep(60)"])
        assert waiting.waitForStarted(10_000)
        link.project, link.process, link._started_at = tmp_path / "proj", waiting, time.time()
        with qtbot.waitSignal(link.failed, timeout=15_000) as got:
            link._attach(client.url, "not-the-token", starting=True)
        assert "wrong token" in got.args[0]
    finally:
        link._poll.stop()
        waiting.kill()
        waiting.waitForFinished(5_000)
        client.close()
        proc.terminate()
        proc.wait(10)


def test_runs_view_shows_strict_score_its_error_and_the_shape_control(qtbot):
    from studio.views.runs_view import RunsView

    rv = RunsView(link=None)
    qtbot.addWidget(rv)
    rv.selected = 7
    rv._got_metrics(7, {"loss": [[10, 0.9], [20, 0.8]],
                        "shapes_eval/overall": [[10, 0.05], [20, 0.125]],
                        "shapes_eval/se/overall": [[20, 0.021]],
                        "shapes_eval/single_object": [[10, 0.2], [20, 0.53]],
                        "shapes_eval/se/single_object": [[20, 0.072]],
                        "shapes_eval/lenient/single_object": [[20, 0.81]],
                        "shapes_eval/swap_control": [[20, 0.31]],
                        "shapes_eval/counting": [[20, 0.03]],
                        "shapes_eval/extra_objects/single_object": [[20, 0.91]]})
    text, tip = rv.eval_label.text(), rv.eval_label.toolTip()
    assert text == "ShapesEval (strict) 0.12 ± 0.02 @ 20 · single objects 0.53 ± 0.07 (91% with extra objects) · shape control +0.31", text
    assert "counting: 0.03" in tip and "single_object: 0.53 ± 0.07, lenient 0.81, extra objects in 91%" in tip
    assert "swap_control" not in tip  # the control is not mistaken for a category
    rv._got_metrics(7, {"shapes_eval/overall": [[30, 0.2]]})  # a newer evaluation without categories: no stale ones
    assert rv.eval_label.text() == "ShapesEval (strict) 0.20 @ 30" and "single_object" not in rv.eval_label.toolTip()


def test_recipe_schema_reads_limits_and_help_by_field_path():
    from backend.recipes import PretrainRecipe
    from studio.recipe_schema import OPEN_INT, RecipeSchema

    schema = RecipeSchema(PretrainRecipe.model_json_schema())
    assert schema.limits("allocation.timesteps.m") == (-5, 5)
    assert schema.limits("allocation.timesteps.s", step=0.01) == (0.01, 5)  # gt=0 moves in by a step
    assert schema.limits("optim.ema", step=1e-5)[1] == 1 - 1e-5  # lt=1
    assert schema.limits("curriculum.steps") == (1, OPEN_INT)  # a list's items; no upper limit set
    assert schema.limits("repa.until_step") == (1, OPEN_INT)  # Optional[int]
    assert "logit-normal location" in schema.description("allocation.timesteps.m")
    with pytest.raises(KeyError, match="no field 'optim.nope'"):
        schema.field("optim.nope")


def test_prefetched_items_leave_loading_in_the_backends_order():
    from studio.views.prefetch import ready_in_order

    loading = {1: {"id": 1, "n": 1}, 2: {"id": 2, "n": 2}, 3: {"id": 3, "n": 2}}
    complete = lambda item: item["n"] == 2  # noqa: E731
    assert ready_in_order(loading, complete) == [] and list(loading) == [1, 2, 3]  # 2 and 3 wait for 1
    loading[1]["n"] = 2
    assert [i["id"] for i in ready_in_order(loading, complete)] == [1, 2, 3] and not loading


def test_missing_xcb_libraries_are_named_before_qt_aborts(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """With Qt's X11 plugin chosen and a library it needs absent (the system's loader is the fake here),
    signal-studio stops before Qt starts and names the packages to install; offscreen never checks."""
    import ctypes.util

    from studio import app, system_check

    real = ctypes.util.find_library
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None if name == "xcb-icccm" else real(name) or f"lib{name}.so")
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    monkeypatch.setattr(system_check.sys, "platform", "linux")
    assert system_check.missing_xcb_libraries() == ["xcb-icccm"]
    assert app.main([]) == 3
    err = capsys.readouterr().err
    assert "libxcb-icccm" in err and "sudo apt install libxcb-icccm4" in err and "sudo dnf install xcb-util-wm" in err
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert not system_check.uses_xcb()


def test_the_tour_pages_through_and_is_remembered_once_seen(qtbot, tmp_path):
    from PySide6.QtCore import QSettings

    from studio.main_window import MainWindow

    w = MainWindow(QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    qtbot.addWidget(w)
    assert not w.settings.value("tour/seen", False, type=bool)
    w.show_tour()
    tour = w.tour
    assert tour.where.text() == "1 / 4" and not tour.back.isEnabled()
    for _ in range(3):
        tour.next.click()
    assert tour.where.text() == "4 / 4" and tour.next.text() == "Done" and "Runs" in tour.pages.currentWidget().findChildren(QLabel)[1].text()
    tour.back.click()
    assert tour.where.text() == "3 / 4"
    tour.skip.click()
    assert not tour.isVisible() and w.settings.value("tour/seen", False, type=bool)



def test_a_bundle_first_start_goes_from_the_tour_to_where_the_engine_runs(qtbot, tmp_path, monkeypatch):
    """The bundle's first start (no engine inside, none chosen): closing the tour offers the three ways to
    a backend; "Create…" opens the environment dialog; a connection is remembered (its URL, not the token)."""
    from PySide6.QtCore import QSettings

    import studio.backend_link as backend_link
    from studio.main_window import MainWindow

    monkeypatch.setattr(backend_link, "FROZEN", True)
    monkeypatch.delenv("SIGNAL_STUDIO_PYTHON", raising=False)
    w = MainWindow(QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    qtbot.addWidget(w)
    w.show()
    assert w.needs_backend_choice()
    w.show_tour()
    w.tour.skip.click()
    qtbot.waitUntil(lambda: hasattr(w, "choice_dialog") and w.choice_dialog.isVisible(), timeout=5_000)
    w.choice_dialog.create_btn.click()
    qtbot.waitUntil(lambda: hasattr(w, "env_dialog") and w.env_dialog.isVisible(), timeout=5_000)
    assert not w.choice_dialog.isVisible()
    w.env_dialog.reject()
    w.choose_backend()
    d = w.choice_dialog
    d.url.setText("http://127.0.0.1:9")  # nothing listens there: the attempt fails, the choice is still remembered
    d.token.setText("")
    d.connect_btn.click()
    assert d.isVisible() and "token" in d.problem.text()
    d.token.setText("secret-token")
    failed: list[str] = []
    w.link.failed.connect(lambda message, details: failed.append(message))
    d.connect_btn.click()
    qtbot.waitUntil(lambda: bool(failed), timeout=40_000)
    assert "127.0.0.1:9" in failed[0]
    assert w.settings.value("backend/remote_url") == "http://127.0.0.1:9" and not w.needs_backend_choice()
    w.settings.sync()
    assert "secret-token" not in (tmp_path / "s.ini").read_text()
    w.choose_backend()
    assert w.choice_dialog.url.text() == "http://127.0.0.1:9"


def _tiny_wheel(folder) -> str:
    """A minimal wheel (the package index is outside the project: the install must not need it)."""
    import zipfile

    name = "signal_probe-0.1-py3-none-any.whl"
    files = {"signal_probe.py": "ANSWER = 42\n",
             "signal_probe-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: signal-probe\nVersion: 0.1\n",
             "signal_probe-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files["signal_probe-0.1.dist-info/RECORD"] = "".join(f"{k},,\n" for k in files) + "signal_probe-0.1.dist-info/RECORD,,\n"
    with zipfile.ZipFile(folder / name, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
    return str(folder / name)


def test_the_backend_environment_is_created_from_the_studio_with_its_log(qtbot, tmp_path):
    """File → Create a backend environment…: a venv, then pip installing the given source, each step in
    the log; the new environment's Python is what backends start with from then on (remembered). A step
    that fails stops with its output in the log."""
    import subprocess

    from PySide6.QtCore import QSettings

    from studio.main_window import MainWindow

    w = MainWindow(QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    qtbot.addWidget(w)
    w.create_backend_env(pip_args=["--no-index", "--no-deps"])
    dlg = w.env_dialog
    dlg.folder.setText(str(tmp_path / "env"))
    dlg.source.setText(str(tmp_path / "missing.whl"))
    dlg.start()
    qtbot.waitUntil(lambda: "failed" in dlg.step.text(), timeout=120_000)
    assert "Installing signal-studio" in dlg.step.text() and dlg.create_btn.isEnabled() and "missing.whl" in dlg.log.toPlainText()
    assert w.link.python is None
    dlg.source.setText(_tiny_wheel(tmp_path))
    dlg.start()
    qtbot.waitUntil(lambda: dlg.step.text().startswith("Done"), timeout=120_000)
    py = str(tmp_path / "env" / "bin" / "python")
    assert w.link.python == py and w.settings.value("backend/python") == py
    assert "$ " in dlg.log.toPlainText() and "Successfully installed signal-probe" in dlg.log.toPlainText()
    assert subprocess.run([py, "-c", "import signal_probe; print(signal_probe.ANSWER)"], capture_output=True, text=True).stdout.strip() == "42"
