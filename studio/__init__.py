"""Signal Studio desktop application (PySide6). Never imports torch; talks to the backend over HTTP."""

__version__ = "0.1.0"
