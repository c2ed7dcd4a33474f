"""Runs: every job with its state; for the selected one live loss curves, loss per timestep
bin, the preview grid as samples arrive, the log, and the controls. Reattaches on reopen:
history comes from the API, new rows from the event stream."""

from __future__ import annotations

import json
import math

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QGraphicsItem,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSlider,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..widgets import TileGrid, alive, heading, hint, pixmap_from_bytes, show_error, themed_plot

LIVE = ("queued", "running")
# jobs that run the training loop: they have curves, previews and the pause / sample / save controls;
# the others (data, pairs, sampling, scoring) show their log and progress only
TRAINING_KINDS = ("pretrain", "align", "personalize", "distill", "reward")


# a method's own curves (see ``_draw_accuracy``); anything ending in "accuracy" joins the upper plot too
UPPER_KEYS = {"grpo/reward_mean": "rollout reward", "grpo/advantage_collapse": "advantage collapse", "grpo/clip_fraction": "clipped share",
              "shapes_eval/overall": "strict ShapesEval", "subject/fidelity": "subject fidelity", "subject/shown": "subject shown",
              "subject/context": "context prompts", "subject/class_strict": "class strict", "subject/leakage": "subject leakage"}
LOWER_KEYS = {"grpo/kl": "KL to reference", "dpo/reward_margin": "DPO reward margin", "dreambooth/instance_loss": "subject loss",
              "dreambooth/prior_loss": "prior loss",
              # distillation: DMD2's generator against its fake-score network, LADD's student against its discriminator, reflow's phases
              "loss/fake": "fake-score loss", "loss/dm": "distribution matching", "dmd/direction": "|real - fake| direction",
              "loss/gan": "GAN (generator)", "loss/disc": "discriminator loss", "loss/adv": "adversarial (student)",
              "loss/distill": "distillation term", "loss/reflow": "reflow loss", "loss/l2": "one-step L2", "loss/perceptual": "one-step perceptual",
              "distill/student_steps": "student steps"}
CURVE_NAMES = {**UPPER_KEYS, **LOWER_KEYS}


def settings_of(sample: dict) -> dict:
    raw = sample.get("settings") or {}
    return json.loads(raw) if isinstance(raw, str) else raw


def sample_kind(sample: dict) -> str:
    return str(settings_of(sample).get("kind", "preview"))


def ema_smooth(values: list[float], weight: float) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else weight * acc + (1 - weight) * v
        out.append(acc)
    return out


def _throttle(timer: QTimer) -> None:
    """Run a single-shot timer's slot once per interval however many events ask; restarting it on
    every event (a debounce) would put the work off for as long as events keep coming."""
    if not timer.isActive():
        timer.start()


def nice_ceiling(x: float) -> float:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that is at least ``x``."""
    if x <= 1:
        return 1.0
    exp = math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if m * 10**exp >= x:
            return float(m * 10**exp)
    return float(10 ** (exp + 1))


def settled_range(lo: float, hi: float, current: tuple[float, float] | None) -> tuple[float, float] | None:
    """A y range that changes only when the data leaves it or fills less than half of it.

    pyqtgraph's auto-range moves the axes with every new point, and re-laying out an axis is
    most of a plot repaint (~20 ms against ~3 ms with a settled range and cached axes)."""
    span = max(hi - lo, 1e-12)
    if current is not None:
        c_lo, c_hi = current
        if c_lo <= lo and hi <= c_hi and span >= 0.5 * (c_hi - c_lo):
            return None
    pad = 0.08 * span
    return lo - pad, hi + pad

# ShapesEval's categories, in its order (the Studio reads them from metric names, never from the backend)
EVAL_CATEGORIES = ("single_object", "counting", "colour_binding", "spatial", "background")


class RunsView(QWidget):
    jobs_changed = Signal(object)  # list; object: PySide converts no containers

    def __init__(self, link, parent: QWidget | None = None):
        super().__init__(parent)
        self.link = link
        self.jobs: dict[int, dict] = {}
        self.selected: int | None = None
        self.series: dict[str, list[list[float]]] = {}
        self.samples: list[dict] = []
        self.shown_step: int | None = None
        self.requested: set[int] = set()
        self.log_offset = 0
        root = QVBoxLayout(self)
        root.addWidget(heading("Runs"))
        split = QSplitter(Qt.Horizontal)
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["#", "Name", "Kind", "State", "Progress"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.NoEditTriggers)
        header = self.table.horizontalHeader()
        for col in (0, 2, 3, 4):  # short columns fit their text; the name takes the rest
            header.setSectionResizeMode(col, QHeaderView.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.Stretch)
        self.table.setWordWrap(False)
        self.table.setMinimumWidth(380)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        split.addWidget(self.table)

        detail = QWidget()
        dl = QVBoxLayout(detail)
        self.title = QLabel("Select a run")
        self.title.setWordWrap(True)
        dl.addWidget(self.title)
        buttons = QHBoxLayout()
        self.btn = {}
        for action, label, key in (("stop", "Stop", "Ctrl+."), ("pause", "Pause", "Ctrl+P"), ("resume", "Resume", "Ctrl+R"),
                                   ("sample", "Sample now", "Ctrl+Shift+S"), ("save", "Save now", "Ctrl+S")):
            b = QPushButton(label)
            b.setToolTip(f"{label} ({key})")
            b.clicked.connect(lambda _=False, a=action: self.control(a))
            QShortcut(QKeySequence(key), self, activated=lambda a=action: self.control(a))
            buttons.addWidget(b)
            self.btn[action] = b
        self.delete_btn = QPushButton("Delete")
        self.delete_btn.clicked.connect(self._delete)
        buttons.addStretch(1)
        buttons.addWidget(self.delete_btn)
        dl.addLayout(buttons)

        self.tabs = QTabWidget()
        loss_page = QWidget()
        ll = QVBoxLayout(loss_page)
        self.loss_plot = themed_plot("Training loss", "loss", "step")
        self.raw_curve = self.loss_plot.plot([], [], pen=(150, 150, 150, 90))
        self.smooth_curve = self.loss_plot.plot([], [], pen={"color": (40, 120, 230), "width": 2})
        for curve in (self.raw_curve, self.smooth_curve):  # long runs: draw what is in view, decimated
            curve.setClipToView(True)
            curve.setDownsampling(auto=True, method="peak")
        # the view follows the run in settled steps (see settled_range) with cached axes, until the
        # user pans or zooms; pyqtgraph's "A" button hands the view back to following
        self.loss_plot.disableAutoRange()
        for name in ("left", "bottom"):
            self.loss_plot.getAxis(name).setCacheMode(QGraphicsItem.DeviceCoordinateCache)
        self.loss_plot.getViewBox().sigRangeChangedManually.connect(self._stop_following)
        self._follow = True
        self._log_mode = False
        self._ranges: tuple[float, tuple[float, float]] | None = None
        ll.addWidget(self.loss_plot, 1)
        opts = QHBoxLayout()
        opts.addWidget(QLabel("Smoothing"))
        self.smoothing = QSlider(Qt.Horizontal)
        self.smoothing.setRange(0, 99)
        self.smoothing.setValue(80)
        self.smoothing.valueChanged.connect(self._redraw)
        opts.addWidget(self.smoothing, 1)
        self.log_scale = QCheckBox("Log scale")
        self.log_scale.toggled.connect(self._redraw)
        opts.addWidget(self.log_scale)
        ll.addLayout(opts)
        self.eval_label = QLabel("")  # its own row: with single objects and clutter it is long
        ll.addWidget(self.eval_label)
        self.tabs.addTab(loss_page, "Loss")
        self.bins_plot = themed_plot("Loss per timestep bin (latest)", "loss", "t (0 = clean, 1 = noise)")
        self.tabs.addTab(self.bins_plot, "Loss by t")
        self._bars = None
        # a method's own curves beside the loss: accuracies (a reward model's held-out and training
        # accuracy, DPO's implicit accuracy), Flow-GRPO's reward and advantage collapse, strict ShapesEval;
        # below them the unbounded ones (KL to the reference, DPO's reward margin)
        method = QWidget()
        ml = QVBoxLayout(method)
        self.acc_plot = themed_plot("Scores: accuracy, reward, ShapesEval, subject", "value", "step")
        self.acc_plot.addLegend(offset=(10, 10))
        self.kl_plot = themed_plot("KL, reward margin, the method's own losses", "value", "step")
        self.kl_plot.addLegend(offset=(10, 10))
        ml.addWidget(self.acc_plot, 3)
        ml.addWidget(self.kl_plot, 2)
        self._acc_curves: dict[str, object] = {}
        self.tabs.addTab(method, "Method")
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        self.grid = TileGrid(cols=4, side=112)
        # a distillation's teacher on the same prompts and seeds, drawn once at the start, under the student's previews
        self.teacher_label = hint("")
        self.teacher_grid = TileGrid(cols=4, side=112)
        inner = QWidget()
        il = QVBoxLayout(inner)
        il.setContentsMargins(0, 0, 0, 0)
        for wdg in (self.grid, self.teacher_label, self.teacher_grid):
            il.addWidget(wdg)
        il.addStretch(1)
        self.teacher_label.hide()
        self.teacher_samples = []
        scroll.setWidget(inner)
        pv = QWidget()
        pl = QVBoxLayout(pv)
        self.preview_label = hint("Preview grids appear here as the run samples its fixed prompts.")
        pl.addWidget(self.preview_label)
        pl.addWidget(scroll, 1)
        self.tabs.addTab(pv, "Previews")
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(5000)
        self.tabs.addTab(self.log, "Log")
        dl.addWidget(self.tabs, 1)
        split.addWidget(detail)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 5)
        split.setSizes([400, 900])
        root.addWidget(split, 1)
        self._log_timer = QTimer(self, interval=1000)
        self._log_timer.timeout.connect(self._poll_log)
        self._log_timer.start()
        # curves redraw at most 4 times a second: a plot repaint costs ~15 ms of the GUI thread
        self._redraw_timer = QTimer(self, singleShot=True, interval=250)
        self._redraw_timer.timeout.connect(self._redraw)
        # job events arrive with every progress tick; the table is refilled at most 5 times a second
        self._table_timer = QTimer(self, singleShot=True, interval=200)
        self._table_timer.timeout.connect(self._fill_table)
        self._update_buttons()

    # --- jobs ----------------------------------------------------------------------------------

    def reload(self) -> None:
        self.link.call("jobs", done=self._got_jobs)

    def _got_jobs(self, jobs: list[dict]) -> None:
        self.jobs = {j["id"]: j for j in jobs}
        self._fill_table()
        if self.selected is None and jobs:
            self.select(jobs[0]["id"])
        elif not jobs:
            self._update_title()  # an empty project: say how runs come about
        self.jobs_changed.emit(list(self.jobs.values()))

    def _fill_table(self) -> None:
        self.table.blockSignals(True)
        ids = sorted(self.jobs, reverse=True)
        self.table.setRowCount(len(ids))
        for r, jid in enumerate(ids):
            j = self.jobs[jid]
            progress = f"{100 * (j.get('progress') or 0):.0f}%" + (f" · {j['step']}/{j['total_steps']}" if j.get("total_steps") else "")
            for c, text in enumerate((str(jid), j.get("name") or "", j.get("kind") or "", j.get("state") or "", progress)):
                item = QTableWidgetItem(text)
                item.setData(Qt.UserRole, jid)
                self.table.setItem(r, c, item)
            if jid == self.selected:
                self.table.selectRow(r)
        self.table.blockSignals(False)
        self.table.resizeColumnToContents(0)

    def select(self, job_id: int) -> None:
        self.selected = job_id
        self.series = {}
        self._follow, self._ranges = True, None
        self.samples = []
        self.shown_step = None
        self.teacher_samples: list[dict] = []
        self.teacher_grid.reset([])
        self.teacher_label.hide()
        self.log.clear()
        self.log_offset = 0
        self.grid.reset([])
        self._fill_table()
        self._update_title()
        self.link.call("metrics", job_id, done=lambda m, jid=job_id: self._got_metrics(jid, m))
        self.link.call("samples", job_id, done=lambda s, jid=job_id: self._got_samples(jid, s))
        self._poll_log(force=True)

    def _selection_changed(self) -> None:
        items = self.table.selectedItems()
        if items:
            jid = items[0].data(Qt.UserRole)
            if jid != self.selected:
                self.select(jid)

    def _update_title(self) -> None:
        j = self.jobs.get(self.selected or -1)
        if not j:
            self.title.setText("Select a run" if self.jobs else "No runs yet. Start one from <b>Pretrain</b> (or its demo recipe), "
                               "<b>Align</b>, <b>Personalize</b> or <b>Distill</b>, or make pairs to rate in <b>Rate</b>; it shows up here "
                               "with its curves, previews and log.")
        else:
            err = f"<br><span style='color:#c0392b'>{j['error']}</span>" if j.get("error") else ""
            self.title.setText(f"<b>#{j['id']} {j.get('name') or ''}</b> · {j.get('kind')} · <b>{j.get('state')}</b> · step {j.get('step') or 0}"
                               f"{' / ' + str(j['total_steps']) if j.get('total_steps') else ''}{err}")
        self._update_buttons()

    def _update_buttons(self) -> None:
        j = self.jobs.get(self.selected or -1)
        state = j.get("state") if j else None
        running = state == "running"
        training = bool(j) and j.get("kind") in TRAINING_KINDS
        self.btn["stop"].setEnabled(state in ("running", "queued"))
        for a in ("pause", "sample", "save"):
            self.btn[a].setEnabled(running and training)
            self.btn[a].setVisible(training or not j)
        for i in range(self.tabs.count()):  # a data job has no curves or previews: its log is what there is to see
            self.tabs.setTabVisible(i, training or not j or self.tabs.tabText(i) == "Log")
        if j and not training and self.tabs.tabText(self.tabs.currentIndex()) != "Log":
            self.tabs.setCurrentIndex(next(i for i in range(self.tabs.count()) if self.tabs.tabText(i) == "Log"))
        self.btn["resume"].setEnabled(state in ("paused", "stopped", "interrupted", "failed"))
        self.delete_btn.setEnabled(bool(j) and not running)

    # --- events --------------------------------------------------------------------------------

    def on_event(self, ev: dict) -> None:
        kind = ev.get("type")
        if kind == "job":
            j = ev["job"]
            old = self.jobs.get(j["id"], {})
            self.jobs[j["id"]] = {**old, **j}
            _throttle(self._table_timer)
            if j["id"] == self.selected:
                self._update_title()
            self.jobs_changed.emit(list(self.jobs.values()))
        elif kind == "job_deleted":
            self.jobs.pop(ev["job"], None)
            _throttle(self._table_timer)
        elif kind == "metrics" and ev.get("job") == self.selected:
            for step, key, value, _t in ev["rows"]:
                self.series.setdefault(key, []).append([step, value])
            _throttle(self._redraw_timer)
        elif kind == "sample" and ev.get("job") == self.selected:
            self._add_samples([{"id": ev["id"], "step": ev["step"], "prompt": ev["prompt"], "seed": ev["seed"], "image_hash": ev["image"],
                                "settings": ev.get("settings") or {}}])

    def _got_metrics(self, job_id: int, metrics: dict) -> None:
        if job_id != self.selected:
            return
        for key, rows in metrics.items():  # history, merged with rows that streamed in meanwhile
            by_step = {int(s): v for s, v in rows}
            for s, v in self.series.get(key, []):
                by_step.setdefault(int(s), v)
            self.series[key] = [[s, by_step[s]] for s in sorted(by_step)]
        self._redraw()

    def _redraw(self) -> None:
        loss = self.series.get("loss", [])
        xs = [s for s, _ in loss]
        ys = [v for _, v in loss]
        log = self.log_scale.isChecked()
        if log != self._log_mode:
            self._log_mode, self._ranges = log, None  # the y range is in other units now
        self.loss_plot.setLogMode(y=log)
        if log:
            pairs = [(x, y) for x, y in zip(xs, ys) if y > 0]
            xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        self.raw_curve.setData(xs, ys)
        self.smooth_curve.setData(xs, ema_smooth(ys, self.smoothing.value() / 100.0))
        self._follow_range(xs, [math.log10(y) for y in ys] if log else ys)
        bins = sorted((int(k.split("/")[1]), v[-1][1]) for k, v in self.series.items() if k.startswith("loss_t/") and v)
        if bins:
            n = max(b for b, _ in bins) + 1
            bars = {"x": [(b + 0.5) / n for b, _ in bins], "height": [v for _, v in bins], "width": 0.8 / n}
            if self._bars is None:
                import pyqtgraph as pg

                self._bars = pg.BarGraphItem(**bars, brush=(230, 120, 40))
                self.bins_plot.addItem(self._bars)
            else:
                self._bars.setOpts(**bars)  # in place: no scene rebuild per redraw
        elif self._bars is not None:
            self.bins_plot.removeItem(self._bars)
            self._bars = None
        self._draw_accuracy()
        self._show_eval()

    def _draw_accuracy(self) -> None:
        """The method's curves: bounded ones (accuracies, rewards, shares, strict ShapesEval) on the upper
        plot, the KL and margins on the lower."""
        upper = sorted(k for k in self.series if k.endswith("accuracy") or k in UPPER_KEYS)
        lower = sorted(k for k in self.series if k in LOWER_KEYS)
        for key in list(self._acc_curves):
            if key not in upper and key not in lower:
                plot = self.acc_plot if key in UPPER_KEYS or key.endswith("accuracy") else self.kl_plot
                plot.removeItem(self._acc_curves.pop(key))
        for plot, keys in ((self.acc_plot, upper), (self.kl_plot, lower)):
            for i, key in enumerate(keys):
                rows = self.series[key]
                if key not in self._acc_curves:
                    color = [(40, 120, 230), (230, 120, 40), (60, 170, 90), (200, 60, 160), (120, 90, 200)][i % 5]
                    name = CURVE_NAMES.get(key, key.split("/")[-1].replace("_", " "))
                    # dots as well as the line: evaluations are sparse, and a first one is a single point
                    self._acc_curves[key] = plot.plot([], [], pen={"color": color, "width": 2}, name=name, symbol="o", symbolSize=6,
                                                      symbolBrush=color, symbolPen=None)
                self._acc_curves[key].setData([s for s, _ in rows], [v for _, v in rows])

    def _show_eval(self) -> None:
        """The latest ShapesEval: strict overall with its ±, single objects and the shape-swap control on
        the label; every category (strict ±, lenient, extra objects) in its tooltip."""
        evals = self.series.get("shapes_eval/overall")
        held = self.series.get("reward/heldout_accuracy")
        if held and not evals:
            ece = self.series.get("reward/heldout_ece") or [[0, float("nan")]]
            self.eval_label.setText(f"Reward model: held-out pairwise accuracy {held[-1][1]:.3f} (chance 0.5) · calibration error {ece[-1][1]:.3f} "
                                    f"@ step {held[-1][0]:.0f}")
            self.eval_label.setToolTip("Accuracy on judgements of prompts held out of training (ties left out); calibration error: "
                                       "mean gap between predicted preference probability and the judgements, over ten bins")
            return
        if not evals:
            self.eval_label.setText("")
            self.eval_label.setToolTip("")
            return
        step = evals[-1][0]

        def at(key: str) -> float | None:
            pts = self.series.get(key) or []
            return pts[-1][1] if pts and pts[-1][0] == step else None

        def pm(key: str) -> str:
            err = at(f"shapes_eval/se/{key}")
            return f" ± {err:.2f}" if err is not None else ""

        text = f"ShapesEval (strict) {evals[-1][1]:.2f}{pm('overall')} @ {int(step)}"
        single, extra = at("shapes_eval/single_object"), at("shapes_eval/extra_objects/single_object")
        if single is not None:
            text += f" · single objects {single:.2f}{pm('single_object')}" + (f" ({extra:.0%} with extra objects)" if extra is not None else "")
        control = at("shapes_eval/swap_control")
        if control is not None:
            text += f" · shape control {control:+.2f}"
        self.eval_label.setText(text)
        lines = []
        for c in EVAL_CATEGORIES:
            acc, lenient, extra = at(f"shapes_eval/{c}"), at(f"shapes_eval/lenient/{c}"), at(f"shapes_eval/extra_objects/{c}")
            if acc is not None:
                lines.append(f"{c}: {acc:.2f}{pm(c)}" + (f", lenient {lenient:.2f}" if lenient is not None else "")
                             + (f", extra objects in {extra:.0%}" if extra is not None else ""))
        self.eval_label.setToolTip("ShapesEval per category. Strict: the image holds exactly the promised objects and every check passes;\n"
                                   "lenient (GenEval's rule): the promised objects are found, clutter allowed. Shape control: strict minus\n"
                                   "the score against the same prompts with shapes swapped (0 = the model ignores shape).\n" + "\n".join(lines))

    def _stop_following(self, *_: object) -> None:
        self._follow = False

    def _follow_range(self, xs: list[float], ys: list[float]) -> None:
        vb = self.loss_plot.getViewBox()
        if any(vb.autoRangeEnabled()):  # the user pressed "A": follow again
            vb.disableAutoRange()
            self._follow, self._ranges = True, None
        if not self._follow or not xs:
            return
        x_hi = nice_ceiling(max(xs) * 1.05)
        y = settled_range(min(ys), max(ys), self._ranges[1] if self._ranges else None)
        if self._ranges is None or x_hi != self._ranges[0]:
            self.loss_plot.setXRange(0, x_hi, padding=0)
        if y is not None:
            self.loss_plot.setYRange(*y, padding=0)
        self._ranges = (x_hi, y or self._ranges[1])

    def _got_samples(self, job_id: int, samples: list[dict]) -> None:
        if job_id == self.selected:
            self._add_samples(samples)

    def _add_samples(self, samples: list[dict]) -> None:
        """Show the newest step's previews as they arrive, one by one.

        Tiles are made once and reused (a preview's images come in one event each; remaking the
        grid per event stalled the window), and each image is fetched once. Until a new step's
        image arrives, its tile keeps the previous step's picture of the same prompt and seed.
        """
        if not samples:
            return
        teacher = [s for s in samples if sample_kind(s) == "teacher"]
        if teacher:
            self._add_teacher(teacher)
        samples = [s for s in samples if sample_kind(s) != "teacher"]
        if not samples:
            return
        self.samples += samples
        latest = max(s["step"] or 0 for s in self.samples)
        shown = sorted((s for s in self.samples if (s["step"] or 0) == latest), key=lambda s: s["id"])
        if latest != self.shown_step:
            self.shown_step = latest
            self.requested = set()
            self.preview_label.setText(f"Preview at step {latest} (the weights it samples with: EMA when on; fixed prompts and seeds)")
        self.grid.ensure(len(shown))
        for tile, s in zip(self.grid.tiles, shown):
            tile.set_caption(f"{s['prompt']} · seed {s['seed']}")
            if s["id"] not in self.requested:
                self.requested.add(s["id"])
                self.link.call("image", s["image_hash"], done=lambda data, tile=tile: alive(tile) and tile.set_pixmap(pixmap_from_bytes(data)))

    def _add_teacher(self, samples: list[dict]) -> None:
        """The teacher's pictures of the preview prompts and seeds, to hold the student's against."""
        first = samples[0]
        meta = settings_of(first)
        start = len(self.teacher_samples)
        self.teacher_samples += samples
        self.teacher_label.setText(f"Teacher ({meta.get('steps')} steps, cfg {meta.get('cfg')}) on the same prompts and seeds — the student "
                                   "above samples at its own steps without guidance")
        self.teacher_label.show()
        self.teacher_grid.ensure(start + len(samples))
        for tile, s in zip(self.teacher_grid.tiles[start:], samples):
            tile.set_caption(f"teacher · {s['prompt']} · seed {s['seed']}")
            self.link.call("image", s["image_hash"], done=lambda data, tile=tile: alive(tile) and tile.set_pixmap(pixmap_from_bytes(data)))

    def _poll_log(self, force: bool = False) -> None:
        j = self.jobs.get(self.selected or -1)
        if not j or (not force and j.get("state") not in LIVE and self.log_offset > 0):
            return
        jid = j["id"]

        def done(res: dict) -> None:
            if jid == self.selected and res["text"]:
                self.log.appendPlainText(res["text"].rstrip("\n"))
                self.log_offset = res["next"]

        self.link.call("log", jid, self.log_offset, done=done, failed=lambda e, d: None)

    # --- actions -------------------------------------------------------------------------------

    def control(self, action: str) -> None:
        if self.selected is None or not self.btn[action].isEnabled():
            return
        self.link.call("control", self.selected, action, done=lambda j: self.on_event({"type": "job", "job": j}),
                       failed=lambda e, d: show_error(self, f"Could not {action} the run.", str(e), details=d))

    def _delete(self) -> None:
        if self.selected is None:
            return
        jid = self.selected
        self.selected = None
        self.link.call("delete_job", jid, done=lambda r: self.reload(),
                       failed=lambda e, d: show_error(self, "Could not delete the run.", str(e), details=d))

    def loss_points(self) -> int:
        return len(self.series.get("loss", []))

    def preview_count(self) -> int:
        return sum(1 for t in self.grid.tiles if t._pix is not None)

