"""Project store: one folder, one SQLite database, content-addressed blobs."""

from .project import DiskFull, OutsideProjectError, Project, ProjectError, atomic_write_bytes, atomic_write_text, dumps

__all__ = ["DiskFull", "OutsideProjectError", "Project", "ProjectError", "atomic_write_bytes", "atomic_write_text", "dumps"]
