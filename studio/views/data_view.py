"""Data: a virtualised thumbnail grid over a dataset, filters, an inspector, the category mix.

The grid is a model/view pair: the model knows only the total count until rows are looked
at; pages of item rows and thumbnails are fetched lazily, off the GUI thread, for what is on
screen. 100k items scroll like 100.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

from PySide6.QtCore import QAbstractListModel, QModelIndex, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListView,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..tasks import Tasks
from ..widgets import heading, hint, pixmap_from_bytes, show_error, themed_plot

PAGE = 200
THUMB = 96


class ItemsModel(QAbstractListModel):
    """Rows = items matching the filters; pages and thumbnails arrive lazily."""

    ItemRole = Qt.UserRole + 1
    loaded = Signal(int)  # total

    def __init__(self, link, parent=None):
        super().__init__(parent)
        self.link = link
        self.thumb_tasks = Tasks(self, threads=4)
        self.dataset = ""
        self.filters: dict[str, Any] = {}
        self.total = 0
        self.pages: dict[int, list[dict]] = {}
        self.requested_pages: set[int] = set()
        self.thumbs: OrderedDict[str, QPixmap] = OrderedDict()
        self.requested_thumbs: set[str] = set()
        self.generation = 0
        self.placeholder = QPixmap(THUMB, THUMB)
        self.placeholder.fill(QColor(128, 128, 128, 40))

    def set_query(self, dataset: str, filters: dict[str, Any]) -> None:
        self.beginResetModel()
        self.generation += 1
        self.dataset, self.filters = dataset, {k: v for k, v in filters.items() if v not in (None, "", False) or k == "flagged" and v is False}
        self.total = 0
        self.pages.clear()
        self.requested_pages.clear()
        self.endResetModel()
        if dataset:
            self._fetch_page(0)

    def _fetch_page(self, page: int) -> None:
        if page in self.requested_pages or self.link.client is None:
            return
        self.requested_pages.add(page)
        gen = self.generation

        def done(res: dict) -> None:
            if gen != self.generation:
                return
            self.pages[page] = res["items"]
            if res["total"] != self.total:
                self.beginResetModel()
                self.total = res["total"]
                self.endResetModel()
                self.loaded.emit(self.total)
            else:
                first = page * PAGE
                self.dataChanged.emit(self.index(first), self.index(min(self.total, first + PAGE) - 1))

        def failed(exc, details) -> None:
            self.requested_pages.discard(page)

        self.link.call("items", self.dataset, page * PAGE, PAGE, done=done, failed=failed, **self.filters)

    def item(self, row: int) -> dict | None:
        page = self.pages.get(row // PAGE)
        if page is None:
            self._fetch_page(row // PAGE)
            return None
        idx = row % PAGE
        return page[idx] if idx < len(page) else None

    def _thumb(self, digest: str) -> QPixmap:
        pix = self.thumbs.get(digest)
        if pix is not None:
            self.thumbs.move_to_end(digest)
            return pix
        if digest not in self.requested_thumbs and self.link.client is not None:
            self.requested_thumbs.add(digest)
            client = self.link.client

            def done(data: bytes, digest=digest) -> None:
                self.requested_thumbs.discard(digest)
                self.thumbs[digest] = pixmap_from_bytes(data)
                while len(self.thumbs) > 5000:
                    self.thumbs.popitem(last=False)
                for page_no, rows in self.pages.items():
                    for i, it in enumerate(rows):
                        if it["hash"] == digest:
                            idx = self.index(page_no * PAGE + i)
                            self.dataChanged.emit(idx, idx, [Qt.DecorationRole])

            self.thumb_tasks.run(client.thumb, digest, done=done, failed=lambda e, d, digest=digest: self.requested_thumbs.discard(digest))
        return self.placeholder

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else self.total

    def data(self, index: QModelIndex, role: int = Qt.DisplayRole) -> Any:
        if not index.isValid():
            return None
        it = self.item(index.row())
        if role == Qt.DecorationRole:
            return self._thumb(it["hash"]) if it else self.placeholder
        if it is None:
            return "…" if role == Qt.DisplayRole else None
        if role == Qt.DisplayRole:
            text = it["caption"] or "(no caption)"
            return text if len(text) < 28 else text[:26] + "…"
        if role == Qt.ToolTipRole:
            flags = ", ".join(it["flags"]) or "none"
            return f"{it['caption']}\n{it['width']}x{it['height']} · {it['category'] or 'uncategorised'} · flags: {flags}"
        if role == Qt.ForegroundRole and it["flags"] and it["flags"] != ["chosen_keeper"]:
            return QColor(200, 80, 60)
        if role == self.ItemRole:
            return it
        return None


class DataView(QWidget):
    job_started = Signal(int)

    def __init__(self, link, parent: QWidget | None = None):
        super().__init__(parent)
        self.link = link
        self.datasets: list[dict] = []
        root = QVBoxLayout(self)
        top = QHBoxLayout()
        top.addWidget(heading("Data"))
        self.dataset_box = QComboBox()
        self.dataset_box.currentIndexChanged.connect(self._dataset_changed)
        top.addWidget(QLabel("Dataset"))
        top.addWidget(self.dataset_box)
        top.addStretch(1)
        self.add_world = QPushButton("Add ShapesWorld data…")
        self.add_world.clicked.connect(self._add_world)
        self.import_btn = QPushButton("Import folder…")
        self.import_btn.clicked.connect(self._import_folder)
        self.curate_btn = QPushButton("Curate")
        self.curate_btn.setToolTip("Flag duplicates, near duplicates and filtered items (nothing is deleted)")
        self.curate_btn.clicked.connect(self._curate)
        for b in (self.add_world, self.import_btn, self.curate_btn):
            top.addWidget(b)
        root.addLayout(top)
        self.summary = hint("Open a project to see its data.")
        root.addWidget(self.summary)

        filters = QHBoxLayout()
        self.category = QComboBox()
        self.category.addItem("All categories", "")
        self.flagged = QComboBox()
        self.flagged.addItem("All items", None)
        self.flagged.addItem("Curated view", False)
        self.flagged.addItem("Flagged only", True)
        self.min_side = QSpinBox()
        self.min_side.setRange(0, 8192)
        self.min_side.setSuffix(" px")
        self.min_side.setToolTip("Minimum width and height")
        self.search = QLineEdit()
        self.search.setPlaceholderText("Caption contains…")
        self.search.setClearButtonEnabled(True)
        for label, w in (("Category", self.category), ("Show", self.flagged), ("Min side", self.min_side)):
            filters.addWidget(QLabel(label))
            filters.addWidget(w)
        filters.addWidget(self.search, 1)
        root.addLayout(filters)
        self._debounce = QTimer(self, singleShot=True, interval=250)
        self._debounce.timeout.connect(self.refresh_items)
        for w in (self.category, self.flagged):
            w.currentIndexChanged.connect(lambda *_: self._debounce.start())
        self.min_side.valueChanged.connect(lambda *_: self._debounce.start())
        self.search.textChanged.connect(lambda *_: self._debounce.start())

        split = QSplitter(Qt.Horizontal)
        self.model = ItemsModel(link, self)
        self.model.loaded.connect(self._loaded)
        self.grid = QListView()
        self.grid.setViewMode(QListView.IconMode)
        self.grid.setResizeMode(QListView.Adjust)
        self.grid.setUniformItemSizes(True)
        self.grid.setLayoutMode(QListView.Batched)
        self.grid.setBatchSize(200)
        self.grid.setIconSize(QSize(THUMB, THUMB))
        self.grid.setGridSize(QSize(THUMB + 28, THUMB + 34))
        self.grid.setSpacing(4)
        self.grid.setMovement(QListView.Static)
        self.grid.setModel(self.model)
        self.grid.selectionModel().currentChanged.connect(self._inspect)
        split.addWidget(self.grid)

        side = QTabWidget()
        self.inspector = self._build_inspector()
        side.addTab(self.inspector, "Inspector")
        self.mix_plot = themed_plot("Category mixture (curated view)", "items")
        side.addTab(self.mix_plot, "Mixture")
        self.side_tabs = side
        split.addWidget(side)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([700, 420])
        root.addWidget(split, 1)
        self.current_item: dict | None = None

    def _build_inspector(self) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        self.big = QLabel("Select an image")
        self.big.setAlignment(Qt.AlignCenter)
        self.big.setMinimumHeight(256)
        lay.addWidget(self.big)
        form = QFormLayout()
        self.meta_label = QLabel("")
        self.meta_label.setWordWrap(True)
        form.addRow("Item", self.meta_label)
        self.caption_edit = QPlainTextEdit()
        self.caption_edit.setMaximumHeight(70)
        form.addRow("Caption", self.caption_edit)
        self.save_caption = QPushButton("Save caption")
        self.save_caption.clicked.connect(self._save_caption)
        self.keeper = QPushButton("Keep this one")
        self.keeper.setToolTip("Make this item the keeper of its duplicate cluster")
        self.keeper.clicked.connect(self._choose_keeper)
        row = QHBoxLayout()
        row.addWidget(self.save_caption)
        row.addWidget(self.keeper)
        form.addRow("", self._wrap(row))
        self.flags_label = QLabel("")
        self.flags_label.setWordWrap(True)
        form.addRow("Flags", self.flags_label)
        lay.addLayout(form)
        self.truth = QPlainTextEdit()
        self.truth.setReadOnly(True)
        self.truth.setPlaceholderText("Ground truth (ShapesWorld items carry their scene spec)")
        lay.addWidget(self.truth, 1)
        return w

    @staticmethod
    def _wrap(layout) -> QWidget:
        w = QWidget()
        w.setLayout(layout)
        return w

    # --- loading -------------------------------------------------------------------------------

    def reload(self) -> None:
        self.link.call("datasets", done=self._got_datasets)

    def _got_datasets(self, datasets: list[dict]) -> None:
        self.datasets = datasets
        current = self.dataset_box.currentText()
        self.dataset_box.blockSignals(True)
        self.dataset_box.clear()
        for ds in datasets:
            self.dataset_box.addItem(ds["name"])
        if current in [d["name"] for d in datasets]:
            self.dataset_box.setCurrentText(current)
        self.dataset_box.blockSignals(False)
        if not datasets:
            self.summary.setText("This project has no data yet: <b>Add ShapesWorld data…</b> or <b>Import folder…</b>.")
            self.model.set_query("", {})
            return
        self._dataset_changed()

    def _dataset(self) -> dict | None:
        name = self.dataset_box.currentText()
        return next((d for d in self.datasets if d["name"] == name), None)

    def _dataset_changed(self, *_: Any) -> None:
        ds = self._dataset()
        if ds is None:
            return
        cat = self.category.currentData()
        self.category.blockSignals(True)
        self.category.clear()
        self.category.addItem("All categories", "")
        for c, n in ds["categories"].items():
            self.category.addItem(f"{c} ({n})", c)
        idx = self.category.findData(cat)
        self.category.setCurrentIndex(max(0, idx))
        self.category.blockSignals(False)
        self.summary.setText(
            f"<b>{ds['items']}</b> items · <b>{ds['items'] - ds['flagged']}</b> in the curated view · "
            f"{ds['flagged']} flagged · {ds['rejects']} files rejected at import"
        )
        self.refresh_items()
        self.link.call("mixture", ds["name"], done=self._show_mixture)

    def refresh_items(self) -> None:
        ds = self._dataset()
        filters = {"category": self.category.currentData() or None, "flagged": self.flagged.currentData(),
                   "min_width": self.min_side.value() or None, "min_height": self.min_side.value() or None,
                   "caption": self.search.text().strip() or None}
        self.model.set_query(ds["name"] if ds else "", filters)

    def _loaded(self, total: int) -> None:
        pass

    def _show_mixture(self, mix: dict) -> None:
        import pyqtgraph as pg

        self.mix_plot.clear()
        cats = list(mix)
        heights = [mix[c]["items"] for c in cats]
        bars = pg.BarGraphItem(x=list(range(len(cats))), height=heights, width=0.6, brush=(80, 140, 220))
        self.mix_plot.addItem(bars)
        self.mix_plot.getAxis("bottom").setTicks([[(i, c) for i, c in enumerate(cats)]])

    # --- inspector -----------------------------------------------------------------------------

    def _inspect(self, current: QModelIndex, _previous: QModelIndex) -> None:
        it = self.model.data(current, ItemsModel.ItemRole)
        self.current_item = it
        if not it:
            return
        self.meta_label.setText(f"#{it['id']} · {it['width']}x{it['height']} · {it['mode']} · {it['category'] or 'uncategorised'}\n{it['source_path']}")
        self.caption_edit.setPlainText(it["caption"])
        self.flags_label.setText(", ".join(it["flags"]) or "none (in the curated view)")
        self.link.call("image", it["hash"], done=self._show_big)
        self.link.call("item", it["id"], done=self._show_truth)

    def _show_big(self, data: bytes) -> None:
        pix = pixmap_from_bytes(data)
        side = max(128, min(self.big.width(), 320))
        self.big.setPixmap(pix.scaled(side, side, Qt.KeepAspectRatio, Qt.FastTransformation))

    def _show_truth(self, item: dict) -> None:
        meta = item.get("meta") or {}
        self.truth.setPlainText(json.dumps(meta.get("spec", meta), indent=1) if meta else "")

    def _save_caption(self) -> None:
        it = self.current_item
        if not it:
            return
        text = self.caption_edit.toPlainText()
        self.link.call("set_caption", it["id"], text, done=lambda r: self.refresh_items(),
                       failed=lambda e, d: show_error(self, "The caption was not saved.", str(e), details=d))

    def _choose_keeper(self) -> None:
        it = self.current_item
        if it:
            self.link.call("keep_item", it["id"], done=lambda r: self.reload(),
                           failed=lambda e, d: show_error(self, "Could not change the keeper.", str(e), details=d))

    # --- actions -------------------------------------------------------------------------------

    def _start(self, recipe: str, name: str) -> None:
        def ok(job: dict) -> None:
            self.job_started.emit(job["id"])

        self.link.call("create_job", recipe, name, done=ok,
                       failed=lambda e, d: show_error(self, f"Could not start '{name}'.", str(e), "Check the recipe and try again.", d))

    def _add_world(self) -> None:
        n, ok = QInputDialog.getInt(self, "Add ShapesWorld data", "Number of scenes:", 4000, 10, 200000, 500)
        if ok:
            name, ok = QInputDialog.getText(self, "Add ShapesWorld data", "Dataset name:", text="shapesworld")
            if ok and name:
                self._start(f'kind = "world"\ndataset = "{name}"\nimages = {n}\n', f"add {name}")

    def _import_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Import a folder of images and captions")
        if folder:
            name, ok = QInputDialog.getText(self, "Import folder", "Dataset name:", text="imported")
            if ok and name:
                self._start(f'kind = "import"\ndataset = "{name}"\nsources = [{json.dumps(folder)}]\ncategory_from = "folder"\n', f"import {name}")

    def _curate(self) -> None:
        ds = self._dataset()
        if ds:
            self.link.call("curate", ds["name"], done=lambda r: self.reload(),
                           failed=lambda e, d: show_error(self, "Curation failed.", str(e), details=d))

    def set_flagged_filter(self, value: bool | None) -> None:
        self.flagged.setCurrentIndex({None: 0, False: 1, True: 2}[value])

    def show_mixture_tab(self) -> None:
        self.side_tabs.setCurrentIndex(1)

