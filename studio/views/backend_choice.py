"""The first-run choice of where the engine runs, for a Studio that has none of its own.

The desktop bundle ships the Studio without PyTorch, so before it can open a project it needs a
backend: a new environment made here (File → Create a backend environment…), the Python of one the
user already has, or a backend that is already running (here or through an SSH tunnel). This dialog
puts the three side by side, checks what it can before accepting (the Python exists and runs; the URL
looks like one), and hands the choice to the main window, which remembers it.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QDialog,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..widgets import hint


def python_problem(path: str) -> str | None:
    """Why this path cannot be a backend environment's Python, or None when it can be tried."""
    if not path:
        return "Choose the Python of an environment where signal-studio is installed."
    p = Path(path).expanduser()
    if not p.exists():
        return f"There is no file at {p}."
    if p.is_dir():
        return f"{p} is a folder; choose the Python inside it (bin/python, or Scripts\\python.exe on Windows)."
    if not os.access(p, os.X_OK):
        return f"{p} is not a program this user may run."
    return None


def url_problem(url: str) -> str | None:
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
        return "The URL starts with http:// and names a host and port, e.g. http://127.0.0.1:8765."
    return None


class BackendChoiceDialog(QDialog):
    """Create an environment, use one, or connect to a running backend; the window acts on the signal."""

    create_env = Signal()
    use_python = Signal(str)
    connect_to = Signal(str, str)  # url, token

    def __init__(self, parent: QWidget | None = None, python: str = "", url: str = ""):
        super().__init__(parent)
        self.setWindowTitle("Where does the engine run?")
        self.resize(640, 420)
        lay = QVBoxLayout(self)
        lay.addWidget(hint("This Studio holds the desktop program only. Training and sampling run in a backend: a Python "
                           "environment with signal-studio and PyTorch, on this machine or another. Choose one way; the Studio "
                           "remembers it (File menu to change it later)."))

        make = QGroupBox("1 · Make a new environment on this machine")
        ml = QHBoxLayout(make)
        ml.addWidget(hint("A venv with signal-studio and its engine, installed with pip; a few minutes, several GB."), 1)
        self.create_btn = QPushButton("Create…")
        self.create_btn.clicked.connect(self._create)
        ml.addWidget(self.create_btn)
        lay.addWidget(make)

        have = QGroupBox("2 · Use an environment I already have")
        hl = QHBoxLayout(have)
        self.python = QLineEdit(python)
        self.python.setPlaceholderText("…/bin/python of an environment where signal-studio is installed")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        self.use_btn = QPushButton("Use it")
        self.use_btn.clicked.connect(self._use)
        hl.addWidget(self.python, 1)
        hl.addWidget(browse)
        hl.addWidget(self.use_btn)
        lay.addWidget(have)

        remote = QGroupBox("3 · Connect to a backend that is already running")
        rf = QFormLayout(remote)
        rf.addRow(hint("Started with <tt>signal-backend serve --project DIR</tt>; from another machine, forward its port "
                       "(<tt>ssh -L 8765:127.0.0.1:PORT host</tt>) and paste the token from its discovery file."))
        self.url = QLineEdit(url or "http://127.0.0.1:8765")
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.Password)
        self.connect_btn = QPushButton("Connect")
        self.connect_btn.clicked.connect(self._connect)
        rf.addRow("URL", self.url)
        rf.addRow("Token", self.token)
        crow = QHBoxLayout()
        crow.addStretch(1)
        crow.addWidget(self.connect_btn)
        rf.addRow("", crow)
        lay.addWidget(remote)

        self.problem = QLabel("")
        self.problem.setStyleSheet("color: #b00020")
        self.problem.setWordWrap(True)
        lay.addWidget(self.problem)
        row = QHBoxLayout()
        row.addStretch(1)
        later = QPushButton("Not now")
        later.clicked.connect(self.reject)
        row.addWidget(later)
        lay.addLayout(row)

    def _create(self) -> None:
        self.accept()
        self.create_env.emit()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "The Python of an environment with signal-studio installed",
                                              self.python.text() or str(Path.home()))
        if path:
            self.python.setText(path)

    def _use(self) -> None:
        path = self.python.text().strip()
        if (why := python_problem(path)) is not None:
            self.problem.setText(why)
            return
        self.accept()
        self.use_python.emit(str(Path(path).expanduser()))

    def _connect(self) -> None:
        url, token = self.url.text().strip(), self.token.text().strip()
        if (why := url_problem(url)) is not None:
            self.problem.setText(why)
            return
        if not token:
            self.problem.setText("Paste the backend's token: every request without it is refused.")
            return
        self.accept()
        self.connect_to.emit(url, token)
