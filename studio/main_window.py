"""The main window: start page, then a stage sidebar over the views; status bar and menus."""

from __future__ import annotations

from PySide6.QtCore import QSettings, QTimer
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from backend.service.client import demo_project_path

from .backend_link import NO_BACKEND, BackendLink, backend_python
from .tasks import Tasks
from .views.align_view import AlignView
from .views.data_view import DataView
from .views.distill_view import DistillView
from .views.personalize_view import PersonalizeView
from .views.playground import Playground
from .views.pretrain_wizard import PretrainWizard
from .views.rate_view import RateView
from .views.runs_view import RunsView
from .views.stage_page import StagePage
from .views.start_page import StartPage
from .widgets import heading, hint, show_error

# the Studio's own views; every other page comes from the backend's stage registry (/api/stages)
VIEWS = ("Data", "Pretrain", "Rate", "Align", "Personalize", "Distill", "Playground", "Runs")
MAX_RECENT = 10


class PretrainPage(QWidget):
    """The stage's home: start a run, the project's pretraining runs (double-click opens one in Runs),
    the data a run would train on, and the last base model with its strict score."""

    def __init__(self, window: MainWindow):
        super().__init__()
        self.window = window
        lay = QVBoxLayout(self)
        lay.addWidget(heading("Pretrain"))
        lay.addWidget(hint("Train a flow-matching model (UNet or MMDiT) from scratch, deciding where the training signal goes: timestep density, "
                           "resolution shift per bucket, curriculum stages, category mixture and REPA."))
        row = QHBoxLayout()
        self.new_btn = QPushButton("New pretraining run…")
        self.new_btn.setShortcut("Ctrl+Shift+N")
        self.new_btn.setToolTip("New pretraining run (Ctrl+Shift+N)")
        self.new_btn.clicked.connect(window.new_pretrain)
        self.demo_btn = QPushButton("Pretrain the demo base model")
        self.demo_btn.clicked.connect(window.start_demo_recipe)
        row.addWidget(self.new_btn)
        row.addWidget(self.demo_btn)
        row.addStretch(1)
        lay.addLayout(row)
        self.next_step = hint("")
        lay.addWidget(self.next_step)
        self.data_label = hint("")
        lay.addWidget(self.data_label)
        self.result_label = hint("")
        lay.addWidget(self.result_label)
        lay.addWidget(QLabel("<b>Pretraining runs of this project</b>"))
        self.runs = QTableWidget(0, 4)
        self.runs.setHorizontalHeaderLabels(["run", "state", "step", "progress"])
        self.runs.horizontalHeader().setSectionResizeMode(0, QHeaderView.Stretch)
        self.runs.setEditTriggers(QAbstractItemView.NoEditTriggers)
        self.runs.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.runs.verticalHeader().setVisible(False)
        self.runs.cellDoubleClicked.connect(self._open_run)
        lay.addWidget(self.runs, 1)
        self.empty = hint("No pretraining run yet: start one above (the demo recipe trains the shipped base's recipe on this project's "
                          "ShapesWorld data), or use the shipped base in the Playground right away.")
        lay.addWidget(self.empty)
        lay.addStretch(1)  # with no run yet (the table hidden), the page's lines stay together at the top
        self.job_ids: list[int] = []

    def on_jobs(self, jobs: list[dict]) -> None:
        mine = sorted((j for j in jobs if j.get("kind") == "pretrain"), key=lambda j: -j["id"])
        self.job_ids = [j["id"] for j in mine]
        self.runs.setRowCount(len(mine))
        for r, j in enumerate(mine):
            step = f"{j.get('step') or 0}" + (f" / {j['total_steps']}" if j.get("total_steps") else "")
            for c, text in enumerate([f"#{j['id']} {j.get('name') or ''}", str(j.get("state")), step, f"{100 * (j.get('progress') or 0):.0f} %"]):
                self.runs.setItem(r, c, QTableWidgetItem(text))
        self.runs.setVisible(bool(mine))
        self.empty.setVisible(not mine)

    def on_data(self, datasets: list[dict]) -> None:
        if not datasets:
            self.data_label.setText("Data: none yet — add ShapesWorld scenes or import a folder in <b>Data</b> first.")
            return
        self.data_label.setText("Data a run trains on: " + " · ".join(
            f"<b>{d['name']}</b> {d['items']} images ({', '.join(f'{k} {v}' for k, v in sorted(d['categories'].items()))})" for d in datasets))

    def on_models(self, models: list[dict]) -> None:
        bases = [m for m in models if m.get("kind") == "base"]
        if not bases:
            self.result_label.setText("")
            return
        m = bases[-1]
        ev = m.get("card", {}).get("shapes_eval") or {}
        score = f" · strict ShapesEval {ev['overall']:.3f}" if "overall" in ev else ""
        self.result_label.setText(f"Last base model: <b>{m['name']}</b> ({m['path']}){score} — try it in the Playground.")

    def _open_run(self, row: int, _col: int) -> None:
        if 0 <= row < len(self.job_ids):
            self.window.show_stage("Runs")
            self.window.runs.select(self.job_ids[row])


class ConnectDialog(QDialog):
    def __init__(self, parent: QWidget | None = None, url: str = ""):
        super().__init__(parent)
        self.setWindowTitle("Connect to a backend")
        form = QFormLayout(self)
        self.url = QLineEdit(url or "http://127.0.0.1:8765")
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.Password)
        form.addRow(hint("A backend on another machine: forward its port through SSH "
                         "(<tt>ssh -L 8765:127.0.0.1:PORT host</tt>) and paste the token from its discovery file."))
        form.addRow("URL", self.url)
        form.addRow("Token", self.token)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)


class MainWindow(QMainWindow):
    def __init__(self, settings: QSettings | None = None):
        super().__init__()
        self.settings = settings or QSettings("SignalStudio", "Studio")
        self.setWindowTitle("Signal Studio")
        self.tasks = Tasks(self)
        self.tasks.error.connect(lambda msg, details: show_error(self, "A backend call failed.", msg, "", details))
        self.link = BackendLink(self.tasks, self, python=self.settings.value("backend/python") or None)
        self.link.status.connect(self._status_text)
        self.link.connected.connect(self._connected)
        self.link.failed.connect(self._failed)
        self.link.event.connect(self._event)
        self.link.stream_state.connect(lambda ok: self.stream_label.setText("live" if ok else "reconnecting…"))
        self.demo_pending = False
        self.pending_project: str | None = None  # opened before a backend environment was chosen

        self.stack = QStackedWidget()
        self.start = StartPage(self._recent())
        self.start.open_project.connect(self.open_project)
        self.start.open_demo.connect(self.open_demo)
        self.start.tour.connect(self.show_tour)
        self.start.connect_remote.connect(self.connect_dialog)
        self.stack.addWidget(self.start)

        work = QWidget()
        wl = QHBoxLayout(work)
        wl.setContentsMargins(0, 0, 0, 0)
        self.sidebar = QListWidget()
        self.sidebar.setFixedWidth(150)
        self.pages = QStackedWidget()
        self.data_view = DataView(self.link)
        self.data_view.job_started.connect(self._job_started)
        self.pretrain_page = PretrainPage(self)
        self.playground = Playground(self.link)
        self.runs = RunsView(self.link)
        self.runs.jobs_changed.connect(self._jobs_changed)
        self.rate = RateView(self.link, self.settings)
        self.rate.job_started.connect(self._job_started)
        self.align = AlignView(self.link)
        self.align.job_started.connect(self._job_started)
        self.personalize = PersonalizeView(self.link)
        self.personalize.job_started.connect(self._job_started)
        self.distill = DistillView(self.link)
        self.distill.job_started.connect(self._job_started)
        self.views: dict[str, QWidget] = {"Data": self.data_view, "Pretrain": self.pretrain_page, "Rate": self.rate, "Align": self.align,
                                          "Personalize": self.personalize, "Distill": self.distill,
                                          "Playground": self.playground, "Runs": self.runs}
        self.page_names: list[str] = []
        self.sidebar.currentRowChanged.connect(self._stage_changed)
        wl.addWidget(self.sidebar)
        wl.addWidget(self.pages, 1)
        self.stack.addWidget(work)
        self.setCentralWidget(self.stack)

        self.backend_label = QLabel("no backend")
        self.devices_label = QLabel("")
        self.job_label = QLabel("")
        self.stream_label = QLabel("")
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(160)
        self.progress.setVisible(False)
        sb = self.statusBar()
        for w in (self.backend_label, self.devices_label, self.job_label):
            sb.addWidget(w)
        sb.addPermanentWidget(self.progress)
        sb.addPermanentWidget(self.stream_label)
        self._menus()
        self._set_pages(list(VIEWS))
        self.resize(1280, 800)
        geometry = self.settings.value("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        saved = self.settings.value("stage", "Data")
        self.sidebar.setCurrentRow(self.page_names.index(saved) if saved in self.page_names else 0)

    # --- menus and shortcuts ----------------------------------------------------------------------

    def _menus(self) -> None:
        file = self.menuBar().addMenu("&File")
        for label, key, fn in (("New project…", QKeySequence.New, self.start._new), ("Open project…", QKeySequence.Open, self.start._open),
                               ("Open the demo project", "Ctrl+D", self.open_demo), ("Connect to a backend…", "Ctrl+K", self.connect_dialog),
                               ("Backend environment…", "", self.choose_backend),
                               ("Create a backend environment…", "", self.create_backend_env),
                               ("Start page", "Ctrl+Home", lambda: self.stack.setCurrentIndex(0)), ("Quit", QKeySequence.Quit, self.close)):
            act = QAction(label, self)
            act.setShortcut(key)
            act.triggered.connect(fn)
            file.addAction(act)
        self.view_menu = self.menuBar().addMenu("&View")

    def _set_pages(self, names: list[str]) -> None:
        """Lay out the sidebar, the page stack and the View menu (Ctrl+1…) in this order."""
        current = self.page_names[self.sidebar.currentRow()] if 0 <= self.sidebar.currentRow() < len(self.page_names) else None
        self.sidebar.blockSignals(True)
        self.sidebar.clear()
        while self.pages.count():
            self.pages.removeWidget(self.pages.widget(0))
        self.page_names = names
        self.view_menu.clear()
        for i, name in enumerate(names):
            item = QListWidgetItem(name)
            item.setToolTip(f"{name} (Ctrl+{i + 1})" if i < 9 else name)
            self.sidebar.addItem(item)
            self.pages.addWidget(self.views[name])
            act = QAction(name, self)
            if i < 9:
                act.setShortcut(f"Ctrl+{i + 1}")
            act.triggered.connect(lambda _=False, name=name: self.show_stage(name))
            self.view_menu.addAction(act)
        refresh = QAction("Refresh", self)
        refresh.setShortcut(QKeySequence.Refresh)
        refresh.triggered.connect(self.refresh)
        self.view_menu.addAction(refresh)
        self.sidebar.blockSignals(False)
        row = names.index(current) if current in names else 0
        self.sidebar.setCurrentRow(row)
        self.pages.setCurrentIndex(row)

    def _stages(self, stages: list[dict]) -> None:
        """Pages from the backend's stage registry, in its order: a page the Studio has no view for
        gets the generic recipe page; Runs stays last."""
        by_page: dict[str, list[dict]] = {}
        for st in sorted(stages, key=lambda s: s["order"]):
            by_page.setdefault(st["page"], []).append(st)
        for page, members in by_page.items():
            if page not in self.views:
                view = StagePage(self.link, page, members)
                view.job_started.connect(self._job_started)
                self.views[page] = view
        names = [p for p in by_page if p != "Runs"] + [v for v in VIEWS if v not in by_page and v != "Runs"] + ["Runs"]
        self._set_pages(names)

    def show_stage(self, name: str) -> None:
        if self.stack.currentIndex() == 1 and name in self.page_names:
            self.sidebar.setCurrentRow(self.page_names.index(name))

    def _stage_changed(self, row: int) -> None:
        self.pages.setCurrentIndex(row)
        name = self.page_names[row] if 0 <= row < len(self.page_names) else ""
        if name == "Playground" and self.link.client:
            self.playground.reload()
        if name == "Align" and self.link.client:
            self.align.reload()
        if name == "Personalize" and self.link.client:
            self.personalize.reload()
        if name == "Distill" and self.link.client:
            self.distill.reload()
        if name == "Rate" and self.link.client:
            if self.rate.current is None:
                self.rate.reload()
            self.rate.setFocus()

    # --- projects ---------------------------------------------------------------------------------

    def _recent(self) -> list[str]:
        value = self.settings.value("recent", [])
        return [v for v in (value if isinstance(value, list) else [value]) if v]

    def _remember(self, path: str) -> None:
        recent = [path] + [p for p in self._recent() if p != path]
        self.settings.setValue("recent", recent[:MAX_RECENT])
        self.start.set_recent(recent[:MAX_RECENT])

    def open_project(self, path: str, create: bool = False) -> None:
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.link.open_project(path, create)

    def open_demo(self) -> None:
        self.demo_pending = True
        self.open_project(str(demo_project_path()), True)

    def show_tour(self) -> None:
        from .views.tour import Tour

        self.tour = Tour(self)
        self.tour.finished.connect(self._tour_done)
        self.tour.open()

    def _tour_done(self, *_: object) -> None:
        self.settings.setValue("tour/seen", True)
        if self.needs_backend_choice() and self.link.client is None:
            self.choose_backend()  # the bundle's first start: after the tour, where the engine runs

    def create_backend_env(self, venv_args: list[str] | None = None, pip_args: list[str] | None = None) -> None:
        from .views.backend_env import BackendEnvDialog

        self.env_dialog = BackendEnvDialog(self, venv_args, pip_args)
        self.env_dialog.created.connect(self._use_backend_python)
        self.env_dialog.open()

    def needs_backend_choice(self) -> bool:
        """A Studio with no backend environment of its own (the desktop bundle) and none chosen yet."""
        return backend_python(self.link.python) is None and self.settings.value("backend/choice", "") != "remote"

    def choose_backend(self) -> None:
        """Create an environment, use one, or connect to a running backend (the first-run choice, remembered)."""
        from .views.backend_choice import BackendChoiceDialog

        self.choice_dialog = BackendChoiceDialog(self, self.link.python or "", self.settings.value("backend/remote_url", "") or "")
        self.choice_dialog.create_env.connect(lambda: self.create_backend_env())
        self.choice_dialog.use_python.connect(self._use_backend_python)
        self.choice_dialog.connect_to.connect(self._connect_remote)
        self.choice_dialog.open()

    def _use_backend_python(self, path: str) -> None:
        self.link.python = path
        self.settings.setValue("backend/python", path)
        self.settings.setValue("backend/choice", "python")
        self.statusBar().showMessage(f"Backends start with {path}", 10_000)
        pending, self.pending_project = self.pending_project, None
        if pending:  # the project the user tried to open before there was an environment
            self.open_project(pending)

    def _connect_remote(self, url: str, token: str) -> None:
        self.settings.setValue("backend/choice", "remote")
        self.settings.setValue("backend/remote_url", url)  # the token is not stored: it changes with each service start
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.link.connect_remote(url, token)

    def connect_dialog(self) -> None:
        dlg = ConnectDialog(self, self.settings.value("backend/remote_url", "") or "")
        if dlg.exec() == QDialog.Accepted:
            self._connect_remote(dlg.url.text().strip(), dlg.token.text().strip())

    def _status_text(self, text: str) -> None:
        self.backend_label.setText(text)

    def _failed(self, message: str, details: str) -> None:
        self.progress.setVisible(False)
        self.backend_label.setText("no backend")
        if message == NO_BACKEND[0]:  # a bundled Studio before its backend environment is chosen: offer the ways in
            self.pending_project = str(self.link.project) if self.link.project else None
            self.choose_backend()
            return
        show_error(self, message, "The Studio could not use a backend for this project.",
                   "Check that the folder is a project (or create one), then try again; the backend's output is under Details.", details)

    def _connected(self, info: dict) -> None:
        self.progress.setVisible(False)
        url = self.link.client.url if self.link.client else ""
        self.backend_label.setText(f"backend {url} · project {info['name']}")
        self.devices_label.setText(" · ".join(d["name"] for d in info.get("devices", [])))
        self.setWindowTitle(f"Signal Studio — {info['name']}")
        if self.link.project:
            self._remember(str(self.link.project))
        self.stack.setCurrentIndex(1)
        self.link.call("stages", done=self._stages)
        self.refresh()
        if self.demo_pending:
            self.demo_pending = False
            self.link.call("datasets", done=self._demo_data)

    def _demo_data(self, datasets: list[dict]) -> None:
        if not any(d["name"] == "shapesworld" for d in datasets):
            self.backend_label.setText(self.backend_label.text() + " · preparing the demo data (rendering and importing ShapesWorld)…")
            self.link.call("create_job", 'kind = "world"\ndataset = "shapesworld"\nimages = 6000\nresolution = [64, 64]\nbase_model = true\n', "demo data",
                           done=self._demo_job_started)

    def _demo_job_started(self, job: dict) -> None:
        self.demo_job = job["id"]
        self._job_started(job)

    def _demo_job_ended(self, job: dict) -> None:
        """The demo data is in (or failed): the status bar stops saying it is being prepared and the
        Studio leads on, to the Playground with the shipped base, the next step named."""
        self.demo_job = None
        self.backend_label.setText(self.backend_label.text().split(" · preparing the demo data")[0])
        if job["state"] != "done":
            show_error(self, "Preparing the demo data failed.", job.get("error") or "", "Its log is in Runs; open the demo project again to retry.")
            return
        self.data_view.reload()
        self.playground.reload()
        self.show_stage("Playground")
        self.statusBar().showMessage("The demo data and the shipped base model are ready: try a prompt here, then pretrain your own base "
                                     "(Pretrain) or rate pairs (Rate).", 30_000)

    def refresh(self) -> None:
        if self.link.client is None:
            return
        self.data_view.reload()
        self.runs.reload()
        self.playground.reload()
        self.link.call("datasets", done=self.pretrain_page.on_data, failed=lambda e, d: None)
        self.link.call("models", done=self.pretrain_page.on_models, failed=lambda e, d: None)
        self.link.call("builtin_recipe", "demo_pretrain", done=self._demo_estimate, failed=lambda e, d: None)

    def _demo_estimate(self, text: str) -> None:
        self.demo_recipe = text
        self.link.call("estimate_recipe", text, failed=lambda e, d: None,
                       done=lambda est: self.pretrain_page.next_step.setText(
                           f"Next step: <b>pretrain the demo base model</b> — {est['params'] / 1e6:.1f}M parameters, {est['steps']} steps, "
                           f"about {est['seconds'] / 60:.0f} minutes on this machine."))

    # --- jobs -------------------------------------------------------------------------------------

    def new_pretrain(self) -> None:
        if self.link.client is None:
            return

        def open_wizard(datasets: list[dict]) -> None:
            if not datasets:
                show_error(self, "This project has no data yet.", "A pretraining run needs a dataset.", "Add ShapesWorld data or import a folder in Data.")
                return
            self.link.call("default_recipe", "pretrain", done=lambda text: self.link.call(
                "recipe_schema", "pretrain", done=lambda schema: self._wizard(datasets, text, schema)))

        self.link.call("datasets", done=open_wizard)

    def _wizard(self, datasets: list[dict], default: str, schema: dict) -> None:
        self.wizard = PretrainWizard(self.link, datasets, default, self.link.info.get("devices", []), schema, self,
                                     on_started=lambda job: self._job_started(job), start_from=getattr(self, "demo_recipe", None))
        self.wizard.open()

    def start_demo_recipe(self) -> None:
        text = getattr(self, "demo_recipe", None)
        if text:
            self.link.call("create_job", text, "demo-base", done=self._job_started,
                           failed=lambda e, d: show_error(self, "The demo run did not start.", str(e), details=d))

    def _job_started(self, job: dict | int) -> None:
        job_id = job["id"] if isinstance(job, dict) else job
        self.runs.reload()
        QTimer.singleShot(300, lambda: self.runs.select(job_id))
        if not (isinstance(job, dict) and job.get("name", "").startswith("playground")):
            self.show_stage("Runs")

    def _jobs_changed(self, jobs: list[dict]) -> None:
        self.personalize.on_jobs(jobs)
        self.pretrain_page.on_jobs(jobs)
        running = [j for j in jobs if j.get("state") == "running"]
        if running:
            j = running[0]
            self.job_label.setText(f"running: #{j['id']} {j.get('name')} {100 * (j.get('progress') or 0):.0f}%")
        else:
            self.job_label.setText("no job running")

    def _event(self, ev: dict) -> None:
        self.runs.on_event(ev)
        self.playground.on_event(ev)
        self.rate.on_event(ev)
        if ev.get("type") == "job" and ev["job"]["id"] == getattr(self, "demo_job", None) and ev["job"]["state"] in ("done", "failed", "stopped"):
            self._demo_job_ended(ev["job"])
        elif ev.get("type") == "job" and ev["job"]["state"] == "done" and ev["job"].get("kind") in ("world", "import"):
            self.data_view.reload()
            self.link.call("datasets", done=self.pretrain_page.on_data, failed=lambda e, d: None)
        if ev.get("type") == "job" and ev["job"]["state"] == "done" and ev["job"].get("kind") in ("pretrain", "align", "personalize", "distill"):
            self.playground.reload()
            self.link.call("models", done=self.pretrain_page.on_models, failed=lambda e, d: None)

    # --- closing ----------------------------------------------------------------------------------

    def closeEvent(self, event) -> None:  # noqa: N802
        self.settings.setValue("geometry", self.saveGeometry())
        row = self.sidebar.currentRow()
        self.settings.setValue("stage", self.page_names[row] if 0 <= row < len(self.page_names) else "Data")
        self.link.disconnect_backend()
        super().closeEvent(event)

