"""Entry point of the ``signal-studio`` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="signal-studio", description="Signal Studio desktop application")
    parser.add_argument("--demo", action="store_true", help="open the embedded ShapesWorld demo project")
    parser.add_argument("--project", default=None, help="open this project folder")
    args = parser.parse_args(argv)
    from .system_check import missing_xcb_libraries, uses_xcb, xcb_advice

    if uses_xcb() and (missing := missing_xcb_libraries()):
        print(xcb_advice(missing), file=sys.stderr)  # instead of Qt's abort that names no library
        return 3
    from PySide6.QtWidgets import QApplication

    from .main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Signal Studio")
    app.setOrganizationName("SignalStudio")
    window = MainWindow()
    window.show()
    if args.project:
        window.open_project(args.project)
    elif args.demo:
        window.open_demo()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
