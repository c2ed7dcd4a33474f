"""Signal Studio backend: engine and service. Never imports Qt."""

__version__ = "0.1.0"
