"""The HTTP API (FastAPI). Every route requires the bearer token; Host must be the bound host.

Files are only ever served by content hash or by a project-relative path checked by
``Project.resolve`` (no ``..``, no absolute paths, no symlinks out of the project).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from backend import __version__

from .devices import devices
from .events import EventHub
from .routes_curation import router as curation_router
from .routes_data import router as data_router
from .routes_jobs import router as jobs_router
from .routes_rating import router as rating_router
from .routes_stages import router as stages_router
from .runner import JobRunner
from .state import ServiceState

_bearer = HTTPBearer(auto_error=False)


def _state(request: Request) -> ServiceState:
    return request.app.state.service


async def require_token(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """401 without credentials, 403 with a wrong token (constant-time comparison)."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(creds.credentials.encode(), _state(request).token.encode()):
        raise HTTPException(403, "wrong token")


def allowed_hosts(state: ServiceState) -> set[str]:
    hosts = {state.host, "127.0.0.1", "localhost", "[::1]"} if state.host in ("127.0.0.1", "localhost", "::1") else {state.host}
    return hosts | {f"{h}:{state.port}" for h in hosts}


class HostGuard:
    """Pure ASGI middleware: refuse requests whose Host is not the bound host (DNS rebinding)."""

    def __init__(self, app, allowed: set[str]):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            if host not in self.allowed:
                await JSONResponse({"detail": f"host {host!r} not allowed"}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def api_schema(app: FastAPI) -> str:
    """A short hash of the API's routes (method and path of every ``/api`` route): what a client was
    written against. ``client.API_SCHEMA`` holds the value the Studio expects (a test keeps them equal)."""
    import hashlib

    routes = sorted(f"{m} {r.path}" for r in app.routes if getattr(r, "path", "").startswith("/api") for m in sorted(getattr(r, "methods", None) or []))
    return hashlib.sha1("\n".join(routes).encode()).hexdigest()[:12]


def create_app(state: ServiceState, *, start_runner: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        hub = EventHub(state.project_root)
        await hub.start()
        state.hub = hub
        if start_runner:
            state.runner = JobRunner(state.project_root, slots=state.slots)
            state.runner.start()
        try:
            yield
        finally:
            await hub.stop()
            if state.runner:
                state.runner.shutdown()

    app = FastAPI(title="Signal Studio backend", version=__version__, docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.service = state

    app.add_middleware(HostGuard, allowed=allowed_hosts(state))

    auth = [Depends(require_token)]
    app.include_router(data_router, prefix="/api", dependencies=auth)
    app.include_router(jobs_router, prefix="/api", dependencies=auth)
    app.include_router(rating_router, prefix="/api", dependencies=auth)
    app.include_router(curation_router, prefix="/api", dependencies=auth)
    app.include_router(stages_router, prefix="/api", dependencies=auth)

    @app.get("/api/openapi.json", dependencies=auth, include_in_schema=False)
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/api/info", dependencies=auth)
    def info() -> dict[str, Any]:
        """Service version, project, counts, devices and the runner's slots."""
        proj = state.project()
        counts = {t: state.db()[t].count for t in ("datasets", "items", "jobs", "samples", "comparisons", "models")}
        return {
            "version": __version__,
            "api_schema": api_schema(app),
            "project": str(state.project_root),
            "name": state.project_root.name,
            "counts": counts,
            "migrations": proj.applied_migrations(),
            "devices": devices(),
            "runner": state.runner.status() if state.runner else None,
        }

    @app.get("/api/events", dependencies=auth)
    async def events(request: Request, job: int | None = None) -> StreamingResponse:
        """Server-sent events: job, metrics, sample and comparisons events as JSON lines."""
        hub: EventHub = state.hub
        queue = hub.subscribe()

        async def stream():
            try:
                yield "retry: 1000\n\n"
                while True:
                    if await request.is_disconnected():
                        break
                    try:
                        ev = await asyncio.wait_for(queue.get(), timeout=5.0)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if job is not None and ev.get("job") not in (job, None) and not (ev["type"] == "job" and ev["job"]["id"] == job):
                        continue
                    yield f"event: {ev['type']}\ndata: {json.dumps(ev)}\n\n"
            finally:
                hub.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/api/files/{path:path}", dependencies=auth)
    def project_file(path: str) -> FileResponse:
        """A file inside the project (logs, cards, exports); anything outside is refused."""
        from backend.store import OutsideProjectError

        try:
            target = state.project().resolve(path)
            if target.name == "project.db" or target.suffix in (".db-wal", ".db-shm"):
                raise HTTPException(403, "the database is not served as a file")
            if not target.is_file():
                raise HTTPException(404, f"no file {path}")
        except OutsideProjectError as exc:
            raise HTTPException(403, str(exc)) from None
        except OSError:  # a name the file system cannot hold (over 255 bytes a component, ...): no such file
            raise HTTPException(404, f"no file {path[:200]}") from None
        return FileResponse(target)

    @app.exception_handler(ValueError)
    async def value_error(_request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/api/health", dependencies=auth, response_class=PlainTextResponse)
    def health() -> str:
        return "ok"

    return app
