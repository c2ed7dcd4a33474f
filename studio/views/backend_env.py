"""Create the backend's environment from the Studio: a venv with signal-studio and its engine.

The desktop bundle holds the Studio only (no torch); its backends run with the Python of an
environment of their own. This dialog makes one — ``python -m venv`` then ``pip install`` of a
signal-studio checkout or wheel — with each command's output in a log and a step counter, and hands
the new environment's Python to the Studio, which remembers it. Nothing is downloaded beyond what
pip fetches for the install itself, and a failed step stops with its output kept in the log.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from PySide6.QtCore import QProcess, Signal
from PySide6.QtWidgets import (
    QDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from backend.service.client import default_backend_env

from ..widgets import hint

SOURCE = Path(__file__).resolve().parents[2]  # a checkout: the folder with pyproject.toml


def env_python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


class BackendEnvDialog(QDialog):
    created = Signal(str)  # the new environment's Python

    def __init__(self, parent: QWidget | None = None, venv_args: list[str] | None = None, pip_args: list[str] | None = None):
        super().__init__(parent)
        self.setWindowTitle("Create the backend environment")
        self.resize(720, 460)
        self.venv_args, self.pip_args = venv_args or [], pip_args or []
        lay = QVBoxLayout(self)
        lay.addWidget(hint("The engine (PyTorch and the rest) runs in a Python environment of its own. This makes one: a venv in "
                           "the folder below, with signal-studio installed from a checkout or a wheel. It takes a few minutes "
                           "and several GB (PyTorch)."))
        form = QFormLayout()
        base = shutil.which("python3.11") or shutil.which("python3") or ("" if getattr(sys, "frozen", False) else sys.executable)
        self.base = QLineEdit(base)
        self.base.setToolTip("The Python (3.11) the environment is made from")
        self.folder = QLineEdit(str(default_backend_env()))
        self.source = QLineEdit(str(SOURCE) if (SOURCE / "pyproject.toml").exists() else "")
        self.source.setPlaceholderText("a signal-studio checkout (folder with pyproject.toml) or a .whl file")
        form.addRow("Python", self.base)
        form.addRow("Environment folder", self.folder)
        form.addRow("Install from", self.source)
        lay.addLayout(form)
        self.step = QLabel("")
        lay.addWidget(self.step)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        lay.addWidget(self.log, 1)
        row = QHBoxLayout()
        row.addStretch(1)
        self.create_btn = QPushButton("Create")
        self.create_btn.setDefault(True)
        self.create_btn.clicked.connect(self.start)
        close = QPushButton("Close")
        close.clicked.connect(self.reject)
        row.addWidget(self.create_btn)
        row.addWidget(close)
        lay.addLayout(row)
        self.proc: QProcess | None = None
        self.steps: list[tuple[str, str, list[str]]] = []

    def start(self) -> None:
        base, folder, source = self.base.text().strip(), Path(self.folder.text().strip()).expanduser(), self.source.text().strip()
        problem = ("Choose the Python the environment is made from." if not base else
                   "Say where to install signal-studio from (a checkout or a wheel)." if not source else
                   f"{source} is neither a signal-studio checkout nor a wheel." if not (Path(source) / "pyproject.toml").exists()
                   and not source.endswith(".whl") else "")
        if problem:
            self.step.setText(problem)
            return
        self.folder_path = folder
        py = str(env_python(folder))
        self.steps = [("Creating the venv", base, ["-m", "venv", *self.venv_args, str(folder)]),
                      ("Installing signal-studio and its engine", py, ["-m", "pip", "install", *self.pip_args, source])]
        self.total = len(self.steps)
        self.create_btn.setEnabled(False)
        self._next()

    def _next(self) -> None:
        if not self.steps:
            py = str(env_python(self.folder_path))
            self.step.setText(f"Done: backends will start with {py}")
            self.log.appendPlainText(f"\nthe environment is ready: {py}")
            self.created.emit(py)
            return
        title, program, args = self.steps.pop(0)
        self.step.setText(f"Step {self.total - len(self.steps)} of {self.total}: {title}…")
        self.log.appendPlainText(f"$ {program} {' '.join(args)}")
        proc = QProcess(self)
        proc.setProcessChannelMode(QProcess.MergedChannels)
        proc.readyReadStandardOutput.connect(lambda: self.log.appendPlainText(bytes(proc.readAllStandardOutput()).decode(errors="replace").rstrip()))
        proc.finished.connect(lambda code, _status: self._finished(title, code))
        proc.errorOccurred.connect(lambda err: self._finished(title, -1) if err == QProcess.FailedToStart else None)
        self.proc = proc
        proc.start(program, args)

    def _finished(self, title: str, code: int) -> None:
        if code != 0:
            self.step.setText(f"{title} failed (exit code {code}); its output is in the log. Nothing else was changed.")
            self.create_btn.setEnabled(True)
            self.steps = []
            return
        self._next()
