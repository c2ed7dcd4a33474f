"""A short, skippable tour from the start page: what a project is, the stages, the demo project,
where results show. Shown once on the first start (remembered in the settings) and from the start
page's "Take the tour" at any time; Esc or "Skip" closes it."""

from __future__ import annotations

from PySide6.QtWidgets import QDialog, QHBoxLayout, QLabel, QPushButton, QStackedWidget, QVBoxLayout, QWidget

PAGES = [
    ("A project is a folder",
     "Everything you make lives in one folder: <b>project.db</b> (datasets, runs, ratings, models and their lineage, in "
     "SQLite), the images, the caches and every run's checkpoints and log. Copy the folder and you copy the project. "
     "The Studio starts a backend for it on this machine (the engine runs there, never in the window)."),
    ("The stages, in order",
     "<b>Data</b> curates a dataset (duplicates, broken files, captions). <b>Pretrain</b> trains a base model from scratch. "
     "<b>Rate</b> shows image pairs to judge with the keyboard; a <b>reward model</b> learns your judgements. "
     "<b>Align</b> tunes the model on them (DPO, Flow-GRPO, ReFL, SFT). <b>Personalize</b> teaches it a subject from a few "
     "pictures. <b>Distill</b> makes a 1-4 step student. <b>Playground</b> compares any two models side by side; "
     "<b>Runs</b> shows every job's curves, previews and log."),
    ("The demo project",
     "“Open the demo project” renders ShapesWorld, a small world of coloured shapes with exact captions, imports it and "
     "gives you a shipped base model that draws it — so every stage runs on this CPU in minutes, and every score can be "
     "checked exactly (ShapesEval counts the objects in each picture)."),
    ("Where results show",
     "A started job opens in <b>Runs</b>: its loss, its method's own curves, its previews beside the starting model, its log; "
     "pause, resume or stop it there. Every model a stage saves appears in the <b>Playground</b> and as a starting point of "
     "the next stage, with the model it came from. Ratings and checkpoints survive a crash or a killed job."),
]


class Tour(QDialog):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Signal Studio — a short tour")
        self.resize(620, 320)
        lay = QVBoxLayout(self)
        self.pages = QStackedWidget()
        for title, text in PAGES:
            page = QWidget()
            pl = QVBoxLayout(page)
            head = QLabel(f"<h2>{title}</h2>")
            body = QLabel(text)
            body.setWordWrap(True)
            pl.addWidget(head)
            pl.addWidget(body)
            pl.addStretch(1)
            self.pages.addWidget(page)
        lay.addWidget(self.pages, 1)
        row = QHBoxLayout()
        self.where = QLabel("")
        self.skip = QPushButton("Skip")
        self.back = QPushButton("Back")
        self.next = QPushButton("Next")
        self.next.setDefault(True)
        self.skip.clicked.connect(self.reject)
        self.back.clicked.connect(lambda: self.go(-1))
        self.next.clicked.connect(lambda: self.go(+1))
        row.addWidget(self.where)
        row.addStretch(1)
        for b in (self.skip, self.back, self.next):
            row.addWidget(b)
        lay.addLayout(row)
        self.go(0)

    def go(self, delta: int) -> None:
        i = self.pages.currentIndex() + delta
        if i >= self.pages.count():
            self.accept()
            return
        self.pages.setCurrentIndex(max(0, i))
        last = self.pages.currentIndex() == self.pages.count() - 1
        self.back.setEnabled(self.pages.currentIndex() > 0)
        self.next.setText("Done" if last else "Next")
        self.where.setText(f"{self.pages.currentIndex() + 1} / {self.pages.count()}")
