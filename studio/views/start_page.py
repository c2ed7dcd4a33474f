"""The start page: recent projects, new, open, the demo project, and a connection to a remote backend."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout, QWidget

from ..widgets import heading, hint


class StartPage(QWidget):
    open_project = Signal(str, bool)  # path, create
    open_demo = Signal()
    connect_remote = Signal()
    tour = Signal()

    def __init__(self, recent: list[str], parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("start page")
        outer = QHBoxLayout(self)
        outer.addStretch(1)
        col = QVBoxLayout()
        col.addStretch(1)
        title = heading("Signal Studio")
        font = title.font()
        font.setPointSize(font.pointSize() + 8)
        title.setFont(font)
        col.addWidget(title)
        col.addWidget(hint("Train a text-to-image flow-matching model end to end: curate, pretrain with a deliberate allocation "
                           "of signal, rate, tune, personalize, distill. Everything runs on this machine."))
        demo = QPushButton("Open the demo project (ShapesWorld)")
        demo.setDefault(True)
        demo.setMinimumHeight(44)
        demo.clicked.connect(self.open_demo.emit)
        col.addWidget(demo)
        col.addWidget(hint("The demo project renders the embedded ShapesWorld, imports it (with a few planted bad files, so you "
                           "see curation at work) and is ready to pretrain its base model from scratch on this CPU."))
        row = QHBoxLayout()
        new = QPushButton("New project…")
        new.clicked.connect(self._new)
        opn = QPushButton("Open project…")
        opn.clicked.connect(self._open)
        remote = QPushButton("Connect to a backend…")
        remote.clicked.connect(self.connect_remote.emit)
        tour = QPushButton("Take the tour")
        tour.setToolTip("Four short pages: what a project is, the stages, the demo project, where results show")
        tour.clicked.connect(self.tour.emit)
        for b in (new, opn, remote, tour):
            row.addWidget(b)
        col.addLayout(row)
        col.addWidget(QLabel("Recent projects"))
        self.recent = QListWidget()
        self.recent.itemActivated.connect(lambda item: self.open_project.emit(item.data(Qt.UserRole), False))
        col.addWidget(self.recent, 2)
        self.set_recent(recent)
        col.addStretch(1)
        box = QWidget()
        box.setLayout(col)
        box.setMaximumWidth(720)
        outer.addWidget(box, 4)
        outer.addStretch(1)

    def set_recent(self, recent: list[str]) -> None:
        self.recent.clear()
        for path in recent:
            item = QListWidgetItem(f"{Path(path).name}    —    {path}")
            item.setData(Qt.UserRole, path)
            if not (Path(path) / "project.db").exists():
                item.setText(item.text() + "   (missing)")
                item.setFlags(item.flags() & ~Qt.ItemIsEnabled)
            self.recent.addItem(item)
        if not recent:
            self.recent.addItem("No recent projects yet.")
            self.recent.item(0).setFlags(Qt.NoItemFlags)

    def _new(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose an empty folder for the new project")
        if folder:
            self.open_project.emit(folder, True)

    def _open(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a project folder (it holds project.db)")
        if folder:
            self.open_project.emit(folder, False)
