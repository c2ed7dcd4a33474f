"""Entry point of the ``signal-studio`` command."""

from __future__ import annotations

import argparse
import sys

STAGES = ("Data", "Pretrain", "Rate", "Align", "Personalize", "Distill", "Playground", "Runs")


def build_window():
    """The main window: a stage sidebar and one page per stage."""
    from PySide6.QtWidgets import QHBoxLayout, QLabel, QListWidget, QMainWindow, QStackedWidget, QWidget

    window = QMainWindow()
    window.setWindowTitle("Signal Studio")
    central = QWidget()
    layout = QHBoxLayout(central)
    sidebar = QListWidget()
    sidebar.addItems(STAGES)
    sidebar.setFixedWidth(160)
    pages = QStackedWidget()
    for stage in STAGES:
        label = QLabel(f"{stage}: this stage is not built yet.")
        label.setWordWrap(True)
        pages.addWidget(label)
    sidebar.currentRowChanged.connect(pages.setCurrentIndex)
    sidebar.setCurrentRow(0)
    layout.addWidget(sidebar)
    layout.addWidget(pages, 1)
    window.setCentralWidget(central)
    window.resize(1280, 800)
    return window


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="signal-studio", description="Signal Studio desktop application")
    parser.add_argument("--demo", action="store_true", help="open the embedded ShapesWorld demo project")
    args = parser.parse_args(argv)
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    window = build_window()
    window.show()
    del args
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
