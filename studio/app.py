"""Entry point of the ``signal-studio`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def icon_path() -> Path | None:
    """The 256 px icon: beside the modules in a bundle (PyInstaller's data folder), under resources/ in a checkout."""
    base = Path(getattr(sys, "_MEIPASS", Path(__file__).resolve().parent.parent))
    path = base / "resources" / "icons" / "signal-studio-256.png"
    return path if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="signal-studio", description="Signal Studio desktop application")
    parser.add_argument("--demo", action="store_true", help="open the embedded ShapesWorld demo project")
    parser.add_argument("--project", default=None, help="open this project folder")
    parser.add_argument("--screenshot", default=None, help=argparse.SUPPRESS)  # save the start page to this PNG and quit (the bundle's smoke test)
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
    icon = icon_path()
    if icon is not None:
        from PySide6.QtGui import QIcon

        app.setWindowIcon(QIcon(str(icon)))
    window = MainWindow()
    window.show()
    if args.screenshot:
        from PySide6.QtCore import QTimer

        def grab() -> None:
            window.grab().save(args.screenshot)
            page = window.stack.currentWidget()
            print(f"shown: {page.objectName() or type(page).__name__} of {window.windowTitle()!r}, "
                  f"backend {'to choose' if window.needs_backend_choice() else 'ready'}", flush=True)
            app.quit()

        QTimer.singleShot(1500, grab)
        return app.exec()
    if not (args.project or args.demo):
        from PySide6.QtCore import QTimer

        if not window.settings.value("tour/seen", False, type=bool):
            QTimer.singleShot(300, window.show_tour)  # the first start: four short pages, skippable (then the backend choice)
        elif window.needs_backend_choice():
            QTimer.singleShot(300, window.choose_backend)  # a bundle with no backend environment chosen yet
    if args.project:
        window.open_project(args.project)
    elif args.demo:
        window.open_demo()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
