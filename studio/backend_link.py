"""The Studio's one line to a backend: find it, start it, or connect to a remote one.

For a project it first looks for a running service through the discovery files; if none
serves the project, it starts ``signal-backend serve --project DIR`` as a QProcess, shows its
progress, and reports the process output if it fails to come up. A remote backend (an SSH
tunnel, say) is just a URL and a token.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal, Slot

from backend.service.client import BackendError, Client, find_backends, incompatibility

from . import __version__ as studio_version
from .tasks import STREAM_READ_S, EventStream, Tasks

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 90.0
FROZEN = bool(getattr(sys, "frozen", False))  # running from the desktop bundle (packaging/): no engine inside


def backend_python(configured: str | None = None) -> str | None:
    """The Python that runs the backend: ``SIGNAL_STUDIO_PYTHON``, else the one the user chose (File →
    Backend environment…), else this interpreter when the Studio runs from a source checkout or a
    venv; a bundled Studio has none of its own (it ships without torch), so None until one is chosen."""
    chosen = os.environ.get("SIGNAL_STUDIO_PYTHON") or configured
    if chosen:
        return chosen
    return None if FROZEN else sys.executable


NO_BACKEND = ("This Studio has no backend environment yet.",
              "The desktop bundle holds the Studio only; the engine (PyTorch and the rest) lives in a Python environment of its own. "
              "Either make one (File → Create a backend environment…), or choose the Python of an environment where "
              "signal-studio is installed (File → Backend environment…), or connect to a backend that is already running (File → Connect to a backend…).")


class BackendLink(QObject):
    status = Signal(str)  # progress text while connecting
    connected = Signal(object)  # /api/info dict
    failed = Signal(str, str)  # message, details
    event = Signal(object)  # a dict, passed through as is (no QVariantMap round trip)
    stream_state = Signal(bool)

    def __init__(self, tasks: Tasks, parent: QObject | None = None, python: str | None = None):
        super().__init__(parent)
        self.tasks = tasks
        self.python = python  # the backend environment the user chose, if any (see ``backend_python``)
        self.client: Client | None = None
        self.project: Path | None = None
        self.process: QProcess | None = None
        self.stream: EventStream | None = None
        self._attaching = 0  # counts attaches and disconnects: an answer to an older attach is dropped
        self._poll = QTimer(self)
        self._poll.setInterval(150)
        self._poll.timeout.connect(self._check_started)
        self._started_at = 0.0
        self._output = b""
        self.info: dict[str, Any] = {}
        # a lost stream: the service may have been restarted (new port and token); look for it again
        self._rediscover = QTimer(self)
        self._rediscover.setInterval(1000)
        self._rediscover.timeout.connect(self._look_again)

    # --- connecting ----------------------------------------------------------------------------

    def open_project(self, path: str | Path, create: bool = False) -> None:
        self.disconnect_backend()
        self.project = Path(path).expanduser().resolve()
        found = find_backends(str(self.project))
        if found:
            self.status.emit(f"Connecting to the running backend for {self.project.name}…")
            self._attach(found[0]["url"], found[0]["token"])
            return
        python = backend_python(self.python)
        if python is None:
            self.failed.emit(*NO_BACKEND)
            return
        self.status.emit(f"Starting the backend for {self.project.name}…")
        proc = QProcess(self)
        proc.setProcessChannelMode(QProcess.MergedChannels)
        proc.readyReadStandardOutput.connect(lambda: self._collect(proc))
        if not FROZEN:
            proc.setWorkingDirectory(str(REPO))  # a source checkout: its backend package is importable from here
        env = QProcessEnvironment.systemEnvironment()
        env.insert("PYTHONUNBUFFERED", "1")
        proc.setProcessEnvironment(env)
        args = ["-m", "backend", "serve", "--project", str(self.project)] + (["--create"] if create else [])
        self._output = b""
        proc.start(python, args)
        self.process = proc
        self._started_at = time.time()
        self._poll.start()

    def connect_remote(self, url: str, token: str) -> None:
        self.disconnect_backend()
        self.project = None
        self.status.emit(f"Connecting to {url}…")
        self._attach(url, token)

    def _collect(self, proc: QProcess) -> None:
        self._output += bytes(proc.readAllStandardOutput())

    def _check_started(self) -> None:
        proc = self.process
        if proc is None:
            self._poll.stop()
            return
        if proc.state() == QProcess.NotRunning:
            self._poll.stop()
            self._collect(proc)
            self.failed.emit("The backend stopped while starting.", self._output.decode(errors="replace") or "(no output)")
            self.process = None
            return
        pid = proc.processId()
        for found in find_backends(str(self.project)):
            if found["pid"] == pid:
                self._poll.stop()
                self._attach(found["url"], found["token"], starting=True)
                return
        waited = time.time() - self._started_at
        self.status.emit(f"Starting the backend for {self.project.name}… {waited:.0f} s")
        if waited > START_TIMEOUT_S:
            self._poll.stop()
            self._collect(proc)
            proc.kill()
            self.failed.emit(f"The backend did not start within {START_TIMEOUT_S:.0f} s.", self._output.decode(errors="replace"))

    def _attach(self, url: str, token: str, starting: bool = False) -> None:
        client = Client(url, token, timeout=30.0)
        self._attaching += 1
        attempt = self._attaching

        def ok(info: dict) -> None:
            if attempt != self._attaching:  # the user went elsewhere (or disconnected) while this one was asked
                client.close()
                return
            why = incompatibility(info, f"Signal Studio {studio_version}")
            if why is not None:  # one clear message, not a stream of errors from routes that differ
                client.close()
                self.failed.emit(why, f"backend at {url}: {info.get('version')} (API {info.get('api_schema')}), project {info.get('project')}")
                return
            self.client = client
            self.info = info
            self.stream = EventStream(lambda: Client(url, token, timeout=STREAM_READ_S), self)
            self.stream.event.connect(self.event)
            self.stream.connected.connect(self.stream_state)
            self.stream.connected.connect(self._stream_changed)
            self.stream.start()
            self.connected.emit(info)

        def bad(exc: BaseException, details: str) -> None:
            client.close()
            if attempt != self._attaching:
                return
            proc = self.process
            unreachable = isinstance(exc, BackendError) and exc.status == 0
            if starting and unreachable and proc is not None and proc.state() != QProcess.NotRunning and time.time() - self._started_at < START_TIMEOUT_S:
                # the discovery file can appear a moment before the server listens: poll again;
                # any other error (a refused token, a server fault) is reported at once
                self._poll.start()
                return
            self.failed.emit(f"Cannot use the backend at {url}: {exc}", details)

        self.tasks.run(client.info, done=ok, failed=bad)

    @Slot(bool)  # a slot of this object: queued onto the GUI thread, where its timer lives
    def _stream_changed(self, ok: bool) -> None:
        if ok:
            self._rediscover.stop()
        elif self.project is not None and not self._rediscover.isActive():
            self._rediscover.start()

    def _look_again(self) -> None:
        """Attach to the project's service again when it came back at another address or token."""
        if self.project is None or self.client is None:
            self._rediscover.stop()
            return
        for found in find_backends(str(self.project)):
            if (found["url"], found["token"]) != (self.client.url, self.client.token):
                self._rediscover.stop()
                url, token = found["url"], found["token"]
                self.status.emit(f"The backend for {self.project.name} restarted; reconnecting…")
                self.disconnect_backend()
                self._attach(url, token)
                return

    def disconnect_backend(self, stop_process: bool = False) -> None:
        self._attaching += 1
        self._rediscover.stop()
        if self.stream is not None:
            self.stream.stop()
            self.stream = None
        if self.client is not None:
            self.client.close()
            self.client = None
        if stop_process and self.process is not None:
            self.process.terminate()
            self.process.waitForFinished(5000)
        self.process = None if stop_process else self.process

    # --- calls ---------------------------------------------------------------------------------

    def call(self, method: str, *args: Any, done=None, failed=None, **kwargs: Any) -> None:
        """Run ``client.<method>(*args)`` off the GUI thread."""
        if self.client is None:
            if failed:
                failed(RuntimeError("not connected to a backend"), "")
            return
        self.tasks.run(getattr(self.client, method), *args, done=done, failed=failed, **kwargs)
