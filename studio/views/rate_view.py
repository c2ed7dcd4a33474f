"""Rate: judge image pairs with the keyboard, the front half of rate → reward → tune.

Keys: ← / → the left / right image is better, ↓ tie, ↑ both bad, space skip, Backspace undo.
The ranking mode (``rank_panel.py``) orders three or more images of one prompt with the number keys.
Which image is shown on which side is randomised per pair by the backend and stored with the
judgement, with the decision time. The next pairs and their images are fetched ahead of time, so a
key press paints the next pair at once; submissions go out in the background, and an undo of a
judgement whose submission has not come back yet is applied as soon as it does. Pairs come from
``pairs`` jobs (the "Generate pairs…" form); the history below lists judgements with filters and a
per-rating undo.
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..widgets import alive, heading, hint, pixmap_from_bytes, show_error
from .playground import ModelPicker
from .prefetch import ready_in_order
from .rank_panel import RankPanel

PREFETCH = 6  # pairs held ready (images loaded) ahead of the one shown
CHOICE_LABEL = {"a": "a", "b": "b", "tie": "tie", "both_bad": "both bad", "skip": "skip"}
SIDE = 384  # pixels per shown image
RANK_KEYS = {**{getattr(Qt, f"Key_{n}"): n for n in range(1, 9)}, Qt.Key_Space: "skip", Qt.Key_Backspace: "undo"}


class PairsDialog(QDialog):
    """What to generate: a model (or two), where the prompts come from, how many."""

    def __init__(self, models: list[dict], jobs: list[dict], parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Generate pairs to rate")
        form = QFormLayout(self)
        self.model = ModelPicker()
        self.model.fill(models, jobs)
        self.model_b = ModelPicker()
        self.model_b.fill(models, jobs)
        self.model_b.insertItem(0, "— none: pairs of the first model at different seeds —", "")
        self.model_b.setCurrentIndex(0)
        self.source = QComboBox()
        self.source.addItem("ShapesEval prompts (the detector can judge them)", "eval")
        self.source.addItem("My prompts (one per line)", "list")
        self.prompts = QPlainTextEdit()
        self.prompts.setPlaceholderText("a red circle\ntwo blue squares")
        self.prompts.setMaximumHeight(90)
        self.count = QSpinBox()
        self.count.setRange(1, 10_000)
        self.count.setValue(24)
        self.per = QSpinBox()
        self.per.setRange(2, 8)
        self.per.setValue(2)
        self.per.setToolTip("One model: k images per prompt give k(k-1)/2 pairs. Two models: k seeds per prompt, one pair each.")
        form.addRow("Model", self.model)
        form.addRow("Against", self.model_b)
        form.addRow("Prompts", self.source)
        form.addRow("", self.prompts)
        form.addRow("Number of prompts", self.count)
        form.addRow("Images per prompt", self.per)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.button(QDialogButtonBox.Ok).setText("Generate")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def recipe(self) -> str:
        def q(s: str) -> str:
            return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

        lines = ['kind = "pairs"', f"model = {q(self.model.currentData() or '')}", f"model_b = {q(self.model_b.currentData() or '')}",
                 f'prompts_from = "{self.source.currentData()}"', f"max_prompts = {self.count.value()}", f"images_per_prompt = {self.per.value()}"]
        if self.source.currentData() == "list":
            prompts = [p.strip() for p in self.prompts.toPlainText().splitlines() if p.strip()]
            lines.append("prompts = [" + ", ".join(q(p) for p in prompts) + "]")
        size = self.model.sizes.get(self.model.currentData() or "")
        if size:
            w, h = size.split("x")
            lines += ["[sampler]", f"width = {w}", f"height = {h}"]
        return "\n".join(lines) + "\n"


class ImagePanel(QLabel):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setFixedSize(SIDE, SIDE)
        self.setAlignment(Qt.AlignCenter)
        self.setStyleSheet("background: #222; color: #aaa; border-radius: 6px;")

    def show_pixmap(self, pm) -> None:
        self.setPixmap(pm.scaled(SIDE, SIDE, Qt.KeepAspectRatio, Qt.FastTransformation))  # crisp pixels for small images


class RateView(QWidget):
    job_started = Signal(object)

    def __init__(self, link, settings: QSettings | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.link = link
        self.settings = settings or QSettings("SignalStudio", "Studio")
        self.queue: deque[dict] = deque()  # pairs with their pixmaps, ready to show
        self.loading: dict[int, dict] = {}  # pairs whose images are on the way, in the order the backend queued them
        self.current: dict | None = None
        self.shown_at = 0.0
        self.submitted: list[dict] = []  # {"pair", "rating_id", "undo"} newest last
        self.broken: set[int] = set()  # pairs whose images did not load: not fetched again this session
        self.fetching = False
        self.generation = 0  # bumped by every reload: replies to older fetches are dropped
        self.exhausted = False
        self.setFocusPolicy(Qt.StrongFocus)  # the arrow keys are the rating keys

        lay = QVBoxLayout(self)
        top = QHBoxLayout()
        top.addWidget(heading("Rate"))
        top.addStretch(1)
        top.addWidget(QLabel("Rater"))
        self.rater = QLineEdit(str(self.settings.value("rater", "")))
        self.rater.setPlaceholderText("your name")
        self.rater.setMaximumWidth(140)
        self.rater.editingFinished.connect(self._rater_changed)
        top.addWidget(self.rater)
        self.repeats = QCheckBox("Slip in repeats")
        self.repeats.setToolTip("Now and then show a pair you judged before (the other way round), to measure how consistent the ratings are")
        self.repeats.setChecked(self.settings.value("rate_repeats", "false") == "true")
        self.repeats.toggled.connect(lambda on: self.settings.setValue("rate_repeats", "true" if on else "false"))
        top.addWidget(self.repeats)
        self.generate_btn = QPushButton("Generate pairs…")
        self.generate_btn.clicked.connect(self.generate_pairs)
        top.addWidget(self.generate_btn)
        self.reward_btn = QPushButton("Train a reward model")
        self.reward_btn.setToolTip("Learn this rater's preference from the judgements so far (held-out accuracy in Runs)")
        self.reward_btn.clicked.connect(self.train_reward)
        top.addWidget(self.reward_btn)
        lay.addLayout(top)

        row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setFormat("%v rated of %m")
        row.addWidget(self.progress, 1)
        self.tally = QLabel("")
        self._tally = {"a": 0, "b": 0, "tie": 0, "both_bad": 0, "skip": 0}  # as of the last figures, plus this session's key presses
        self._figures: list[str] = []  # position bias and repeat agreement from the backend
        row.addWidget(self.tally, 2)
        lay.addLayout(row)

        mode = QHBoxLayout()
        mode.addWidget(QLabel("Mode"))
        self.mode = QComboBox()
        self.mode.addItem("Pairs: which of two is better (← → ↓ ↑)", "pairs")
        self.mode.addItem("Ranking: order all images of a prompt (number keys)", "rank")
        self.mode.setFocusPolicy(Qt.NoFocus)
        self.mode.currentIndexChanged.connect(self._mode_changed)
        mode.addWidget(self.mode)
        mode.addStretch(1)
        lay.addLayout(mode)
        self.rank = RankPanel(link, self.rater_name)
        self.rank.ranked.connect(self._count)
        self.rank.hide()
        lay.addWidget(self.rank)
        self.pair_area = QWidget()
        pair_lay = QVBoxLayout(self.pair_area)
        pair_lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.pair_area)

        self.prompt = QLabel("")
        font = self.prompt.font()
        font.setPointSize(font.pointSize() + 6)
        self.prompt.setFont(font)
        self.prompt.setAlignment(Qt.AlignCenter)
        self.prompt.setWordWrap(True)
        pair_lay.addWidget(self.prompt)
        images = QHBoxLayout()
        images.addStretch(1)
        self.left = ImagePanel()
        self.right = ImagePanel()
        images.addWidget(self.left)
        images.addSpacing(16)
        images.addWidget(self.right)
        images.addStretch(1)
        pair_lay.addLayout(images)

        keys = QHBoxLayout()
        keys.addStretch(1)
        self.buttons: dict[str, QPushButton] = {}
        self.keymap: dict[int, str] = {}
        for key, label, what in (("left", "← Left is better", Qt.Key_Left), ("tie", "↓ Tie", Qt.Key_Down), ("both_bad", "↑ Both bad", Qt.Key_Up),
                                 ("skip", "Space  Skip", Qt.Key_Space), ("right", "Right is better →", Qt.Key_Right), ("undo", "⌫ Undo", Qt.Key_Backspace)):
            b = QPushButton(label)
            b.setFocusPolicy(Qt.NoFocus)
            b.clicked.connect(lambda _=False, k=key: self.press(k))
            keys.addWidget(b)
            self.buttons[key] = b
            self.keymap[what] = key
        keys.addStretch(1)
        pair_lay.addLayout(keys)
        self.status = hint("")
        lay.addWidget(self.status)

        lay.addWidget(QLabel("<b>Rating history</b>"))
        filters = QHBoxLayout()
        self.filter_prompt = QLineEdit()
        self.filter_prompt.setPlaceholderText("prompt contains…")
        self.filter_prompt.editingFinished.connect(self.reload_history)
        self.filter_choice = QComboBox()
        self.filter_choice.addItem("any choice", "")
        for c, text in CHOICE_LABEL.items():
            self.filter_choice.addItem(text, c)
        self.filter_choice.currentIndexChanged.connect(self.reload_history)
        self.filter_model = QLineEdit()
        self.filter_model.setPlaceholderText("model…")
        self.filter_model.editingFinished.connect(self.reload_history)
        self.undo_selected = QPushButton("Undo selected")
        self.undo_selected.clicked.connect(self._undo_selected)
        self.export_btn = QPushButton("Export…")
        self.export_btn.setToolTip("Write your judgements as Pick-a-Pic-style parquet into the project's exports/")
        self.export_btn.clicked.connect(self.export)
        self.import_btn = QPushButton("Import…")
        self.import_btn.setToolTip("Add pairs and judgements from a Pick-a-Pic-style parquet file (all or nothing)")
        self.import_btn.clicked.connect(self.import_file)
        for w in (self.filter_prompt, self.filter_model, self.filter_choice, self.undo_selected, self.export_btn, self.import_btn):
            filters.addWidget(w)
        lay.addLayout(filters)
        self.history = QTableWidget(0, 5)
        self.history.setHorizontalHeaderLabels(["#", "Prompt", "Choice", "Image shown left", "Decision"])
        self.history.horizontalHeader().setStretchLastSection(True)
        for col, width in ((0, 60), (1, 360), (2, 150), (3, 140)):
            self.history.setColumnWidth(col, width)
        self.history.setSelectionBehavior(QTableWidget.SelectRows)
        self.history.setEditTriggers(QTableWidget.NoEditTriggers)
        self.history.setMaximumHeight(170)
        lay.addWidget(self.history)
        self._show(None)

    def keyPressEvent(self, event) -> None:  # noqa: N802
        """The rating keys, while the page (not a text field or the history table) has the focus."""
        if self.ranking():
            key = RANK_KEYS.get(event.key())
        else:
            key = self.keymap.get(event.key())
        if key is None or event.modifiers() & (Qt.ControlModifier | Qt.AltModifier):
            super().keyPressEvent(event)
            return
        if self.ranking():
            self.rank.press(key)
            if key == "undo" or len(self.rank.sent) % 10 == 0:
                self.reload_stats()
        else:
            self.press(key)

    def ranking(self) -> bool:
        return self.mode.currentData() == "rank"

    def _mode_changed(self) -> None:
        self.pair_area.setVisible(not self.ranking())
        self.rank.setVisible(self.ranking())
        self.reload()  # neither mode keeps images the other may have judged meanwhile
        self.setFocus()

    # --- the queue --------------------------------------------------------------------------------

    def rater_name(self) -> str:
        return self.rater.text().strip()

    def _rater_changed(self) -> None:
        self.settings.setValue("rater", self.rater_name())
        self.reload()

    def reload(self) -> None:
        """Start over from the backend's queue (another rater, new pairs)."""
        if self.link.client is None:
            return
        self.queue.clear()
        self.loading.clear()
        self.broken.clear()
        self.current = None
        self.exhausted = False
        # a fetch still in flight asked for the previous rater's queue: its reply is dropped, and
        # this reload fetches at once instead of waiting for it (it used to stall a rename)
        self.generation += 1
        self.fetching = False
        self._show(None)
        if self.ranking():
            self.rank.reload()
        else:
            self._fill()
        self.reload_stats()
        self.reload_history()

    def _held(self) -> list[int]:
        """Pairs the backend must not hand out again: shown, waiting, loading, or judged with the judgement still on its way."""
        ids = [p["id"] for p in self.queue] + list(self.loading) + [e["pair"]["id"] for e in self.submitted if e["rating_id"] is None]
        ids += sorted(self.broken)
        if self.current:
            ids.append(self.current["id"])
        return ids

    def _fill(self) -> None:
        if self.fetching or self.link.client is None or len(self.queue) + len(self.loading) >= PREFETCH:
            return
        self.fetching = True
        rate = 0.1 if self.repeats.isChecked() else 0.0
        gen = self.generation
        self.link.call("pair_queue", self.rater_name(), PREFETCH, self._held(), rate, done=lambda pairs: self._fetched(pairs, gen),
                       failed=lambda exc, details: self._fetch_failed(exc, details, gen))

    def _fetch_failed(self, exc, details, generation: int) -> None:
        if generation != self.generation:
            return
        self.fetching = False
        self.status.setText(f"Could not fetch pairs: {exc}")

    def _fetched(self, pairs: list[dict], generation: int) -> None:
        if not alive(self) or generation != self.generation:
            return  # asked before a reload (another rater, new pairs): the reload's own fetch answers
        self.fetching = False
        # a pair this rater judged a moment ago may come back in a reply sent before the judgement landed;
        # another rater's judgements (before a rename) do not take a pair out of this rater's queue
        who = self.rater_name()
        held = set(self._held()) | {e["pair"]["id"] for e in self.submitted if e["rater"] == who}
        fresh = [p for p in pairs if p["id"] not in held or p.get("repeat")]
        self.exhausted = not fresh
        for pair in fresh:
            pair["pixmaps"] = {}
            self.loading[pair["id"]] = pair
            for key in ("image_a", "image_b"):
                self.link.call("image", pair[key], done=lambda data, p=pair, k=key: self._image(p, k, data),
                               failed=lambda e, d, p=pair: self._image_failed(p, e))
        if self.current is None and not fresh and not self.queue:
            self._show(None)

    def _image(self, pair: dict, key: str, data: bytes) -> None:
        if self.loading.get(pair["id"]) is not pair or not alive(self):
            return  # dropped by a reload (possibly fetched again since, as another object)
        pair["pixmaps"][key] = pixmap_from_bytes(data)
        self._queue_loaded()

    def _queue_loaded(self) -> None:
        """Move pairs whose images have both arrived into the queue, in the backend's order: images load
        in parallel, and a later pair's arriving first must not jump the queue (the oldest pair first)."""
        ready = ready_in_order(self.loading, lambda pair: len(pair["pixmaps"]) == 2)
        self.queue.extend(ready)
        if ready:
            if self.current is None:
                self._advance()
            self._fill()

    def _image_failed(self, pair: dict, exc) -> None:
        self.loading.pop(pair["id"], None)
        self.broken.add(pair["id"])
        self.status.setText(f"Pair #{pair['id']}: an image could not be loaded ({exc}); it stays in the queue.")
        self._queue_loaded()  # the pairs behind it need not wait for it

    def _advance(self) -> None:
        self._show(self.queue.popleft() if self.queue else None)
        self._fill()

    def _show(self, pair: dict | None) -> None:
        self.current = pair
        for b in self.buttons.values():
            b.setEnabled(pair is not None or b is self.buttons["undo"])
        if pair is None:
            self.left.clear()
            self.right.clear()
            waiting = self.fetching or self.loading
            self.prompt.setText("Loading the next pair…" if waiting else "No pairs to rate. Generate pairs, or wait for a pairs job to finish.")
            self.left.setText("")
            self.right.setText("")
            return
        left_key, right_key = ("image_a", "image_b") if pair["left"] == "a" else ("image_b", "image_a")
        self.left.show_pixmap(pair["pixmaps"][left_key])
        self.right.show_pixmap(pair["pixmaps"][right_key])
        self.prompt.setText(pair["prompt"] + ("  (seen before)" if pair.get("repeat") else ""))
        self.shown_at = time.perf_counter()

    # --- judging ----------------------------------------------------------------------------------

    def press(self, key: str) -> None:
        if key == "undo":
            self.undo_last()
            return
        pair = self.current
        if pair is None:
            return
        if key in ("left", "right"):
            choice = pair["left"] if key == "left" else ("b" if pair["left"] == "a" else "a")
        else:
            choice = key
        ms = int(1000 * (time.perf_counter() - self.shown_at))
        entry = {"pair": pair, "rating_id": None, "undo": False, "choice": choice, "rater": self.rater_name()}
        self.submitted.append(entry)
        self.link.call("submit", pair["id"], choice, pair["left"], self.rater_name(), ms, bool(pair.get("repeat")),
                       done=lambda r, e=entry: self._submitted(e, r), failed=lambda exc, d, e=entry: self._submit_failed(e, exc, d))
        self._advance()
        self._count(+1, choice)

    def _submitted(self, entry: dict, result: dict) -> None:
        entry["rating_id"] = result["id"]
        if entry["undo"]:
            self.link.call("undo_rating", result["id"], done=lambda _: self.reload_stats())
        elif len(self.submitted) % 10 == 0:
            self.reload_stats()

    def _submit_failed(self, entry: dict, exc, details: str) -> None:
        if entry in self.submitted:
            self.submitted.remove(entry)
        self.queue.appendleft(entry["pair"])
        self._count(-1, entry["choice"])
        show_error(self, "A rating was not saved.", str(exc), "The pair is back in the queue; rate it again.", details)

    def undo_last(self) -> None:
        """Take back the latest judgement of this session: shown again at once, undone in the backend."""
        if not self.submitted:
            self.status.setText("Nothing to undo in this session (the history below can undo older ratings).")
            return
        entry = self.submitted.pop()
        if entry["rating_id"] is not None:
            self.link.call("undo_rating", entry["rating_id"], done=lambda _: (self.reload_stats(), self.reload_history()))
        else:
            entry["undo"] = True  # applied when its submission comes back
        if self.current is not None:
            self.queue.appendleft(self.current)
        self._show(entry["pair"])
        self._count(-1, entry["choice"])
        self.status.setText(f"Undid your {CHOICE_LABEL[entry['choice']]} on “{entry['pair']['prompt']}”; rate it again.")

    def _count(self, delta: int, choice: str | None = None) -> None:
        """The bar and the tally move with each key press; the backend's figures replace them every few ratings."""
        self.progress.setValue(max(0, self.progress.value() + delta))
        if choice in self._tally:
            self._tally[choice] = max(0, self._tally[choice] + delta)
            self._show_tally()

    def _show_tally(self) -> None:
        t = self._tally
        parts = [f"a/b picks {t['a'] + t['b']}", f"tie {t['tie']}", f"both bad {t['both_bad']}", f"skipped {t['skip']}"]
        self.tally.setText(" · ".join(parts + self._figures))

    # --- figures and history ----------------------------------------------------------------------

    def reload_stats(self) -> None:
        if self.link.client is not None:
            who = self.rater_name()
            self.link.call("rating_stats", who, done=lambda s: self._stats(s, who))

    def _stats(self, s: dict, who: str) -> None:
        if not alive(self) or who != self.rater_name():  # an answer for the rater before a rename
            return
        self.progress.setMaximum(max(1, s["pairs"]))
        self.progress.setValue(s["rated"])
        self.progress.setFormat("%v rated of %m" if s["pairs"] else "no pairs yet")
        self._tally = {k: int(s["tally"].get(k, 0)) for k in self._tally}
        self._figures = []
        if s["left_share"] is not None:
            self._figures.append(f"left picked {100 * s['left_share']:.0f}% of {s['left_n']}")
        if s["agreement"] is not None:
            self._figures.append(f"agreement on {s['repeats']} repeats {100 * s['agreement']:.0f}%")
        self._show_tally()

    def reload_history(self) -> None:
        if self.link.client is None:
            return
        filters = {"rater": self.rater_name(), "prompt": self.filter_prompt.text().strip() or None,
                   "model": self.filter_model.text().strip() or None, "choice": self.filter_choice.currentData() or None, "limit": 200}
        self.link.call("ratings", done=self._history, **filters)

    def _history(self, rows: list[dict]) -> None:
        if not alive(self):
            return
        self.history.setRowCount(len(rows))
        for r, row in enumerate(rows):
            picked = row["choice"]
            if picked in ("a", "b"):  # the side the rater saw it on, and which image it was
                picked = f"{'left' if picked == row['shown_left'] else 'right'} (image {picked})"
            cells = [str(row["id"]), row["prompt"], CHOICE_LABEL.get(picked, picked) + (" (repeat)" if row["is_repeat"] else ""),
                     row["shown_left"], f"{row['decision_ms'] or 0} ms"]
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.UserRole, row["id"])
                self.history.setItem(r, c, item)

    def _undo_selected(self) -> None:
        rows = sorted({i.row() for i in self.history.selectedItems()})
        for r in rows:
            rid = self.history.item(r, 0).data(Qt.UserRole)
            self.submitted = [e for e in self.submitted if e["rating_id"] != rid]
            self.link.call("undo_rating", rid, done=lambda _: (self.reload_history(), self.reload_stats(), self._refill()))

    def _refill(self) -> None:
        self.exhausted = False
        self._fill()

    # --- export and import ---------------------------------------------------------------------

    def export(self) -> None:
        self.link.call("export_ratings", self.rater_name() or None, done=self._exported,
                       failed=lambda e, d: show_error(self, "The ratings were not exported.", str(e), "", d))

    def _exported(self, report: dict) -> None:
        left = ", ".join(f"{n} {CHOICE_LABEL[k]}" for k, n in report["left_out"].items() if n)
        self.status.setText(f"Exported {report['rows']} judgements to {report['path']} in the project" + (f" (left out: {left})" if left else ""))

    def import_file(self, path: str | None = None) -> None:
        if not path:
            path, _ = QFileDialog.getOpenFileName(self, "Import ratings", "", "Parquet (*.parquet)")
        if not path:
            return
        data = Path(path).read_bytes()
        self.link.call("import_ratings", data, Path(path).name, done=self._imported,
                       failed=lambda e, d: show_error(self, "Nothing was imported.", str(getattr(e, "detail", e)),
                                                      "The file must be a Pick-a-Pic-style parquet file (caption, jpg_0, jpg_1, label_0, label_1).", d))

    def _imported(self, result: dict) -> None:
        self.status.setText(f"Imported {result['imported']} judgements from {Path(result['path']).name}")
        self.reload_stats()
        self.reload_history()

    # --- generating pairs -------------------------------------------------------------------------

    def generate_pairs(self) -> None:
        if self.link.client is None:
            return
        self.link.call("models", done=lambda models: self.link.call("jobs", done=lambda jobs: self._pairs_dialog(models, jobs)))

    def _pairs_dialog(self, models: list[dict], jobs: list[dict]) -> None:
        self.dialog = PairsDialog(models, jobs, self)
        if self.dialog.exec() != QDialog.Accepted:
            return
        self.link.call("create_job", self.dialog.recipe(), "pairs", done=self.job_started.emit,
                       failed=lambda e, d: show_error(self, "The pairs job did not start.", str(e), "Check the model and the prompts.", d))

    def train_reward(self) -> None:
        if self.link.client is None:
            return
        who = self.rater_name()
        recipe = 'kind = "reward"\n' + (f"rater = {json.dumps(who)}\n" if who else "")  # a JSON string is a TOML basic string
        self.link.call("create_job", recipe, f"reward ({who or 'all raters'})", done=self.job_started.emit,
                       failed=lambda e, d: show_error(self, "The reward model did not start.", str(getattr(e, "detail", e)),
                                                      "Rate more pairs first (at least 20 with a preference).", d))

    def on_event(self, ev: dict) -> None:
        """New pairs arrive while a pairs job runs: fetch them if the queue ran dry."""
        if ev.get("type") != "comparisons":
            return
        if self.ranking():
            if self.rank.current is None:
                self.rank.fill()
        elif self.exhausted or self.current is None:
            self._refill()
