"""The event stream's thread against a backend that does not answer in time.

Qt aborts the process when a running QThread is destroyed, so this runs a small Studio-side script in a
subprocess: an abort there fails the test instead of taking the test worker down (which is how a CI run
once died, with the stream's thread still in ``client.info()`` while the previous test's window was
deleted). The backend is a loopback socket that accepts and answers nothing, closing each connection
after a while: a service that is busy or shutting down, from the outside."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import socket, threading, time
    import shiboken6
    from PySide6.QtCore import QCoreApplication, QObject
    from backend.service.client import Client
    import studio.tasks as tasks

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    accepted = threading.Event()

    def silent_backend():
        while True:
            conn, _ = srv.accept()
            accepted.set()
            threading.Timer(HOLD_S, conn.close).start()  # answers nothing, then drops the connection

    threading.Thread(target=silent_backend, daemon=True).start()
    url = "http://127.0.0.1:%d" % srv.getsockname()[1]
    app = QCoreApplication([])
    owner = QObject()  # the Studio's BackendLink, which a closed window deletes
    seen = []
    stream = tasks.EventStream(lambda: Client(url, "token", timeout=30.0), owner)
    stream.connected.connect(seen.append)
    stream.start()
    assert accepted.wait(20), "the stream never connected"
    time.sleep(0.3)  # the thread now sits in its first request
    stream.stop(wait_ms=200)
    print("running after stop", stream.isRunning(), "kept", len(tasks._STOPPING), flush=True)
    del stream
    shiboken6.delete(owner)  # what deleting the window does to its children
    app.processEvents()
    tasks._STOPPING[0].wait(30000)
    app.processEvents()
    print("ended", tasks._STOPPING[0].isFinished(), "connected signals", seen, flush=True)
""")


def run_script(hold_s: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"HOLD_S = {hold_s}\n" + SCRIPT], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})


def test_a_stream_stopped_in_a_hung_read_survives_its_owner_being_deleted():
    """The stop returns while the thread still waits on the silent backend; deleting the owner then must not
    destroy the running thread (Qt would abort), and the thread ends by itself once the read fails, without
    reporting a connection change to a Studio that has already let it go."""
    done = run_script(hold_s=2.0)
    assert done.returncode == 0, f"rc {done.returncode}: {done.stderr[-2000:]}"
    assert "Destroyed while thread" not in done.stderr
    assert "running after stop True kept 1" in done.stdout, done.stdout  # the case the fix is for did happen
    assert "ended True connected signals []" in done.stdout, done.stdout
