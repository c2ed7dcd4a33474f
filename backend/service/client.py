"""Typed Python client of the backend API (used by the Studio, the CLI and tests). No torch.

``Client.discover`` finds a running service through its discovery file; ``start_backend``
starts one for a project and waits for it; ``Client.events`` iterates server-sent events.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .discovery import find_backends

# the API this client was written against (``app.api_schema``; tests/test_service.py keeps it current)
API_SCHEMA = "d25214ef036f"


def incompatibility(info: dict[str, Any], client_version: str) -> str | None:
    """Why a client of ``client_version`` cannot use the backend that answered ``info``, or None."""
    theirs = info.get("api_schema")
    if theirs == API_SCHEMA:
        return None
    return (f"This Studio ({client_version}, API {API_SCHEMA}) and the backend ({info.get('version', 'unknown version')}, API "
            f"{theirs or 'unknown'}) speak different versions of the API. Install the same signal-studio version for both "
            "(or let the Studio start its own backend for the project) and connect again.")


class BackendError(Exception):
    """The backend answered with an error; ``status`` and ``detail`` say what and why."""

    def __init__(self, status: int, detail: Any, method: str = "", path: str = ""):
        self.status = status
        self.detail = detail
        msg = detail.get("message", detail) if isinstance(detail, dict) else detail
        super().__init__(f"{method} {path}: {status} {msg}")


@dataclass
class Endpoint:
    url: str
    token: str
    pid: int | None = None
    project: str | None = None


class Client:
    def __init__(self, url: str, token: str, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.token = token
        # a TLS context loads the CA bundle (~100 ms, on the Studio's GUI thread when it attaches);
        # a plain-HTTP backend (loopback, or an SSH tunnel's local end) never uses it
        verify = self.url.startswith("https://")
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout, verify=verify)

    @classmethod
    def discover(cls, project: str | Path | None = None) -> Client | None:
        found = find_backends(str(project) if project else None)
        return cls(found[0]["url"], found[0]["token"]) if found else None

    def close(self) -> None:
        self.http.close()

    # --- plumbing ------------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise BackendError(0, f"cannot reach the backend at {self.url}: {exc}", method, path) from None
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise BackendError(r.status_code, detail, method, path)
        ctype = r.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            return r.json()
        if ctype.startswith("text/") or ctype.startswith("application/toml"):
            return r.text
        return r.content

    def get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        return self._call("POST", path, json=body)

    # --- project and data ---------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return self.get("/api/info")

    def datasets(self) -> list[dict[str, Any]]:
        return self.get("/api/datasets")

    def items(self, dataset: str, offset: int = 0, limit: int = 100, **filters: Any) -> dict[str, Any]:
        return self.get(f"/api/datasets/{dataset}/items", offset=offset, limit=limit, **filters)

    def item(self, item_id: int) -> dict[str, Any]:
        return self.get(f"/api/items/{item_id}")

    def image(self, digest: str) -> bytes:
        return self.get(f"/api/images/{digest}")

    def thumb(self, digest: str) -> bytes:
        return self.get(f"/api/thumbs/{digest}")

    def file(self, path: str) -> bytes:
        return self.get(f"/api/files/{path}")

    # --- recipes and jobs ---------------------------------------------------------------------

    def validate_recipe(self, text: str) -> dict[str, Any]:
        return self.post("/api/recipes/validate", {"text": text})

    def default_recipe(self, kind: str) -> str:
        return self.get(f"/api/recipes/default/{kind}")

    def mixture(self, dataset: str) -> dict[str, Any]:
        return self.get(f"/api/datasets/{dataset}/mixture")

    def set_caption(self, item_id: int, caption: str) -> dict[str, Any]:
        return self.post(f"/api/items/{item_id}/caption", {"caption": caption})

    def keep_item(self, item_id: int) -> dict[str, Any]:
        return self.post(f"/api/items/{item_id}/keeper")

    def curate(self, dataset: str) -> dict[str, Any]:
        return self.post(f"/api/datasets/{dataset}/curate", {})

    def builtin_recipe(self, name: str) -> str:
        return self.get(f"/api/recipes/builtin/{name}")

    def render_recipe(self, data: dict[str, Any]) -> str:
        return self.post("/api/recipes/render", {"data": data})

    def estimate_recipe(self, text: str) -> dict[str, Any]:
        return self.post("/api/recipes/estimate", {"text": text})

    def density(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.post("/api/allocation/density", body)

    def stages(self) -> list[dict[str, Any]]:
        return self.get("/api/stages")

    def recipe_schema(self, kind: str) -> dict[str, Any]:
        return self.get(f"/api/recipes/schema/{kind}")

    def jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        return self.get("/api/jobs", state=state)

    def create_job(self, recipe_text: str, name: str | None = None) -> dict[str, Any]:
        return self.post("/api/jobs", {"recipe": recipe_text, "name": name})

    def job(self, job_id: int) -> dict[str, Any]:
        return self.get(f"/api/jobs/{job_id}")

    def control(self, job_id: int, action: str) -> dict[str, Any]:
        return self.post(f"/api/jobs/{job_id}/{action}")

    def delete_job(self, job_id: int) -> dict[str, Any]:
        return self._call("DELETE", f"/api/jobs/{job_id}")

    def log(self, job_id: int, offset: int = 0) -> dict[str, Any]:
        return self.get(f"/api/jobs/{job_id}/log", offset=offset)

    def metrics(self, job_id: int, since_step: int = 0, stride: int = 1, keys: str | None = None) -> dict[str, list[list[float]]]:
        return self.get(f"/api/jobs/{job_id}/metrics", since_step=since_step, stride=stride, keys=keys)

    def samples(self, job_id: int, since_id: int = 0) -> list[dict[str, Any]]:
        return self.get(f"/api/jobs/{job_id}/samples", since_id=since_id)

    def wait_job(self, job_id: int, states: tuple[str, ...] = ("done", "failed", "stopped", "paused", "interrupted"), timeout: float = 600) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            job = self.job(job_id)
            if job["state"] in states:
                return job
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s")

    # --- ratings and models -------------------------------------------------------------------

    def create_pair(self, prompt: str, image_a: str, image_b: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.post("/api/comparisons", {"prompt": prompt, "image_a": image_a, "image_b": image_b, "meta": meta or {}})

    def next_pair(self, rater: str = "") -> dict[str, Any] | None:
        return self.get("/api/comparisons/next", rater=rater)

    def pair_queue(self, rater: str = "", count: int = 8, exclude: list[int] | None = None, repeat_rate: float = 0.0) -> list[dict[str, Any]]:
        return self.get("/api/comparisons/queue", rater=rater, count=count, exclude=",".join(map(str, exclude or [])), repeat_rate=repeat_rate)

    def submit(self, cid: int, choice: str, shown_left: str = "a", rater: str = "", decision_ms: int | None = None, repeat: bool = False) -> dict[str, Any]:
        return self.post(f"/api/comparisons/{cid}/choice", {"choice": choice, "shown_left": shown_left, "rater": rater, "decision_ms": decision_ms,
                                                            "repeat": repeat})

    def ranking_queue(self, rater: str = "", count: int = 4, exclude: list[str] | None = None) -> list[dict[str, Any]]:
        return self.get("/api/rankings/queue", rater=rater, count=count, exclude=list(exclude or []))

    def submit_ranking(self, group: str, ranked: list[str], shown: list[str], rater: str = "", decision_ms: int | None = None,
                       skip: bool = False) -> dict[str, Any]:
        return self.post("/api/rankings", {"group": group, "ranked": ranked, "shown": shown, "rater": rater, "decision_ms": decision_ms, "skip": skip})

    def undo(self, rater: str = "") -> dict[str, Any]:
        return self.post("/api/comparisons/undo", {"rater": rater})

    def undo_rating(self, rating_id: int) -> dict[str, Any]:
        return self.post(f"/api/ratings/{rating_id}/undo")

    def ratings(self, **filters: Any) -> list[dict[str, Any]]:
        return self.get("/api/ratings", **filters)

    def export_ratings(self, rater: str | None = None) -> dict[str, Any]:
        return self.post("/api/ratings/export", {"rater": rater})

    def import_ratings(self, data: bytes, name: str = "ratings.parquet", rater: str | None = None) -> dict[str, Any]:
        params = {"name": name, **({"rater": rater} if rater is not None else {})}
        return self._call("POST", "/api/ratings/import", params=params, content=data, headers={"Content-Type": "application/octet-stream"})

    def rating_stats(self, rater: str | None = None) -> dict[str, Any]:
        return self.get("/api/ratings/stats", rater=rater)

    def models(self) -> list[dict[str, Any]]:
        return self.get("/api/models")

    def lineage(self, model_id: int) -> list[dict[str, Any]]:
        return self.get(f"/api/models/{model_id}/lineage")

    # --- events -------------------------------------------------------------------------------

    def events(self, job: int | None = None, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Iterate server-sent events (blocking); stop by breaking out of the loop."""
        params = {"job": job} if job is not None else {}
        with self.http.stream("GET", "/api/events", params=params, timeout=httpx.Timeout(timeout or 30.0, read=timeout)) as r:
            if r.status_code >= 400:
                raise BackendError(r.status_code, r.read().decode(errors="replace"), "GET", "/api/events")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[6:])


def start_backend(project: str | Path, *, create: bool = False, timeout: float = 60.0, log_path: Path | None = None, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Client]:
    """Start ``signal-backend serve`` for ``project`` and wait until it answers."""
    project = Path(project).expanduser().resolve()
    cmd = [sys.executable, "-m", "backend", "serve", "--project", str(project)] + (["--create"] if create else [])
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT if log_path else subprocess.DEVNULL, env={**os.environ, **(env or {})},
                            cwd=str(Path(__file__).resolve().parents[2]))
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the backend exited with code {proc.returncode} while starting" + (f"; see {log_path}" if log_path else ""))
        for found in find_backends(str(project)):
            if found["pid"] == proc.pid:
                client = Client(found["url"], found["token"])
                try:
                    client.get("/api/health")
                    return proc, client
                except BackendError:
                    client.close()
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"the backend did not start within {timeout} s")


def demo_project_path() -> Path:
    """Where the per-user demo project lives (the Studio reaches backend paths only through here)."""
    from backend.paths import demo_project_dir

    return demo_project_dir()


def default_backend_env() -> Path:
    """Where the Studio offers to create the backend's own environment (a venv) by default."""
    from backend.paths import data_home

    return data_home() / "backend-env"
