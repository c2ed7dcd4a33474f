"""``signal-backend project`` and ``demo`` from a user's shell."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli


def test_project_init_and_info(tmp_path: Path):
    out = run_cli("project", "init", str(tmp_path / "proj"), check=True)
    assert "created project" in out.stdout
    info = json.loads(run_cli("project", "info", str(tmp_path / "proj"), check=True).stdout)
    assert info["counts"]["items"] == 0 and info["migrations"]
    again = run_cli("project", "init", str(tmp_path / "proj"))
    assert again.returncode == 2 and "already holds a project" in again.stderr
    none = run_cli("project", "info", str(tmp_path / "missing"))
    assert none.returncode == 2 and "not a Signal Studio project" in none.stderr
