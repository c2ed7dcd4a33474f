"""The stage registry drives the service and the Studio: a toy stage registered from outside the
package (``SIGNAL_STAGES``) is listed by the API, validated, run as a real job by a real worker,
and appears in the Studio's sidebar with a working page, with no edit anywhere else. The job
state machine refuses moves it does not allow and lets only one of two racing claims win."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings, Qt

from backend.service.client import BackendError, start_backend
from backend.store import Project, job_state
from studio.main_window import MainWindow
from studio.views.stage_page import StagePage

TOY = textwrap.dedent('''
    """A toy stage for the registry test: counts to ``count`` in its log."""
    from typing import Literal

    from pydantic import Field

    from backend.recipes import RecipeBase
    from backend.stages import Stage, register_stage


    class ToyRecipe(RecipeBase):
        """Count to a number."""

        kind: Literal["toy"] = "toy"
        count: int = Field(3, ge=1, le=10, description="How far to count")


    def run(project, recipe, run_dir, reporter, resume):
        for i in range(1, recipe.count + 1):
            reporter.log(f"toy counts {i}")
            reporter.progress(i, recipe.count)
        return {"state": "done", "counted": recipe.count}


    register_stage(Stage(kind="toy", title="Toy counter", page="Toy", order=50, recipe=ToyRecipe, runner="toy_stage:run",
                         produces="a log line per number", summary="Counts to a number.", evaluation="the last number logged"))
''')


@pytest.fixture
def toy_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    plugin = tmp_path / "plugins"
    plugin.mkdir()
    (plugin / "toy_stage.py").write_text(TOY)
    monkeypatch.setenv("SIGNAL_STAGES", "toy_stage")
    monkeypatch.setenv("PYTHONPATH", str(plugin))
    return plugin


def test_toy_stage_reaches_the_api_and_runs_as_a_job(toy_env: Path, tmp_path: Path):
    proc, client = start_backend(tmp_path / "proj", create=True)
    try:
        stages = {s["kind"]: s for s in client.stages()}
        assert {"world", "import", "pretrain", "sample", "toy"} <= set(stages)
        assert stages["toy"]["page"] == "Toy" and stages["toy"]["produces"] == "a log line per number"
        schema = client.recipe_schema("toy")
        assert schema["properties"]["count"]["maximum"] == 10
        default = client.default_recipe("toy")
        assert 'kind = "toy"' in default and "How far to count" in default
        with pytest.raises(BackendError) as err:
            client.create_job('kind = "toy"\ncount = 11\n')
        assert err.value.status == 422 and "count" in str(err.value.detail)
        job = client.create_job('kind = "toy"\ncount = 4\n', "toy run")
        end = client.wait_job(job["id"], timeout=120)
        assert end["state"] == "done", end
        text = client.log(job["id"])["text"]
        assert "toy counts 4" in text and "toy counts 5" not in text
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)


def test_toy_stage_gets_a_sidebar_page_in_the_studio(toy_env: Path, qtbot, tmp_path: Path):
    w = MainWindow(QSettings(str(tmp_path / "studio.ini"), QSettings.IniFormat))
    qtbot.addWidget(w)
    w.show()
    try:
        w.open_project(str(tmp_path / "proj"), True)
        qtbot.waitUntil(lambda: "Toy" in w.page_names, timeout=120_000)
        assert w.page_names.index("Pretrain") < w.page_names.index("Toy") < w.page_names.index("Playground")
        assert w.page_names[-1] == "Runs"
        w.show_stage("Toy")
        page = w.pages.currentWidget()
        assert isinstance(page, StagePage) and "Counts to a number." in page.about.text()
        qtbot.waitUntil(lambda: 'kind = "toy"' in page.editor.toPlainText(), timeout=30_000)
        page.editor.setPlainText('kind = "toy"\ncount = 12\n')
        qtbot.mouseClick(page.validate_btn, Qt.LeftButton)
        qtbot.waitUntil(lambda: "count" in page.issues.text(), timeout=30_000)
        page.editor.setPlainText('kind = "toy"\ncount = 2\n')
        qtbot.mouseClick(page.start_btn, Qt.LeftButton)
        qtbot.waitUntil(lambda: w.page_names[w.sidebar.currentRow()] == "Runs", timeout=30_000)
        client = w.link.client
        job = max(client.jobs(), key=lambda j: j["id"])
        assert job["kind"] == "toy"
        assert client.wait_job(job["id"], timeout=120)["state"] == "done"
    finally:
        w.link.disconnect_backend(stop_process=True)


def test_job_state_machine_allows_only_its_moves(tmp_path: Path):
    project = Project.init(tmp_path / "p")
    db = project.db
    job = job_state.create(db, kind="toy", name="t", recipe="")
    with pytest.raises(job_state.JobStateError):
        job_state.move(db, job, "done", only_from=("queued",))  # a queued job cannot be done
    assert job_state.move(db, job, "running", only_from=("queued",))
    assert not job_state.move(db, job, "running", only_from=("queued",))  # a second claim loses the race
    assert job_state.set_control(db, job, "pause")
    assert job_state.move(db, job, "paused", resumable=1)
    assert not job_state.set_control(db, job, "stop")  # only a running job takes a flag
    assert not job_state.move(db, job, "done")  # a paused job is not done without running again
    assert job_state.move(db, job, "queued", only_from=job_state.RESUMABLE_FROM)
    assert job_state.move(db, job, "running") and job_state.move(db, job, "done")
    with pytest.raises(job_state.JobStateError, match="is done"):
        job_state.require(db, job, "queued")
    assert db.execute("SELECT state, resumable FROM jobs WHERE id = ?", [job]).fetchone() == ("done", 1)
