"""The page a stage gets when the Studio has no view of its own for it.

The backend's stage registry says what each kind of job is; this page shows that, the stage's
commented default recipe to edit, and buttons to validate it and start a job. A stage added to
the backend therefore has a working place in the Studio before anyone writes its wizard.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QVBoxLayout, QWidget

from ..widgets import heading, hint, show_error


class StagePage(QWidget):
    job_started = Signal(object)

    def __init__(self, link, page: str, stages: list[dict], parent: QWidget | None = None):
        super().__init__(parent)
        self.link = link
        self.page = page
        self.stages = {s["kind"]: s for s in stages}
        lay = QVBoxLayout(self)
        lay.addWidget(heading(page))
        self.about = hint("")
        lay.addWidget(self.about)
        row = QHBoxLayout()
        self.kind = QComboBox()
        for s in stages:
            self.kind.addItem(s["title"], s["kind"])
        self.kind.setVisible(len(stages) > 1)
        self.kind.currentIndexChanged.connect(self._kind_changed)
        row.addWidget(self.kind)
        self.default_btn = QPushButton("Default recipe")
        self.default_btn.setToolTip("Replace the text with the stage's commented default recipe")
        self.default_btn.clicked.connect(self.load_default)
        self.validate_btn = QPushButton("Validate")
        self.validate_btn.setShortcut("Ctrl+Shift+V")
        self.validate_btn.setToolTip("Check the recipe (Ctrl+Shift+V)")
        self.validate_btn.clicked.connect(self.validate)
        self.start_btn = QPushButton("Start job")
        self.start_btn.setShortcut("Ctrl+Return")
        self.start_btn.setToolTip("Queue a job with this recipe (Ctrl+Return)")
        self.start_btn.clicked.connect(self.start)
        for b in (self.default_btn, self.validate_btn, self.start_btn):
            row.addWidget(b)
        row.addStretch(1)
        lay.addLayout(row)
        self.editor = QPlainTextEdit()
        self.editor.setFont(QFontDatabase.systemFont(QFontDatabase.FixedFont))
        self.editor.setPlaceholderText("The recipe (TOML) loads from the backend…")
        lay.addWidget(self.editor, 1)
        self.issues = QLabel("")
        self.issues.setWordWrap(True)
        lay.addWidget(self.issues)
        self._kind_changed()

    def current(self) -> dict:
        return self.stages[self.kind.currentData()]

    def _kind_changed(self, *_: object) -> None:
        s = self.current()
        self.about.setText(f"<b>{s['title']}</b> — {s['summary']}<br>Produces: {s['produces']}"
                           + (f" · measured by: {s['evaluation']}" if s.get("evaluation") else ""))
        self.load_default()

    def load_default(self) -> None:
        self.link.call("default_recipe", self.kind.currentData(), done=self.editor.setPlainText,
                       failed=lambda e, d: self.issues.setText(f"No default recipe: {e}"))

    def validate(self) -> None:
        self.link.call("validate_recipe", self.editor.toPlainText(), done=self._show_validation)

    def _show_validation(self, result: dict) -> None:
        if result["valid"]:
            self.issues.setText(f"✓ a valid {result['kind']} recipe")
        else:
            self.issues.setText("<br>".join(f"<b>{i['path'] or 'recipe'}</b>: {i['reason']}" for i in result["issues"]))

    def start(self) -> None:
        self.link.call("create_job", self.editor.toPlainText(), None, done=self.job_started.emit,
                       failed=lambda e, d: show_error(self, f"The {self.page} job did not start.", str(e),
                                                      "Fix the fields named above (Validate lists them) and start again.", d))
