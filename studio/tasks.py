"""Every backend call off the GUI thread: ``Tasks.run(fn, ..., done=, failed=)``.

Calls run in a QThreadPool; results come back as queued signals on the GUI thread, so the
window never freezes on the network. ``EventStream`` follows the backend's server-sent
events in a thread of its own and reconnects when the stream drops.

Qt aborts the whole process when a running QThread is destroyed. A stream told to stop while its
thread sits in a read of a backend that does not answer (busy, or shutting down) cannot be joined at
once: ``stop`` then hands the thread to ``_STOPPING``, unparented, so deleting the window does not
destroy it; its reads are bounded (``STREAM_READ_S``), so it ends soon after, and the interpreter
waits for it at exit.
"""

from __future__ import annotations

import atexit
import threading
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThread, QThreadPool, Signal


class _Relay(QObject):
    done = Signal(object)
    failed = Signal(object, str)


class _Task(QRunnable):
    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict, relay: _Relay):
        super().__init__()
        self.fn, self.args, self.kwargs, self.relay = fn, args, kwargs, relay
        self.setAutoDelete(True)

    def run(self) -> None:
        relay, self.relay = self.relay, None  # the GUI thread owns the relay; this thread only emits through it
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:  # delivered to the GUI as an error, never raised in a pool thread
            relay.failed.emit(exc, traceback.format_exc())
            return
        relay.done.emit(result)


class Tasks(QObject):
    """Runs callables in a thread pool and calls back on the GUI thread."""

    error = Signal(str, str)  # message, details: for calls without their own error handler

    def __init__(self, parent: QObject | None = None, threads: int = 4):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(threads)
        self.pending = 0

    def run(self, fn: Callable[..., Any], *args: Any, done: Callable[[Any], None] | None = None,
            failed: Callable[[BaseException, str], None] | None = None, **kwargs: Any) -> None:
        # parented to this object, so the relay (a QObject of the GUI thread) is destroyed on the GUI thread
        # by deleteLater once its signal is handled, never by the last reference dropping in a pool thread
        relay = _Relay(self)
        self.pending += 1

        def finish() -> None:
            self.pending -= 1
            relay.deleteLater()

        def on_done(result: Any) -> None:
            finish()
            if done:
                done(result)

        def on_failed(exc: BaseException, details: str) -> None:
            finish()
            if failed:
                failed(exc, details)
            else:
                self.error.emit(str(exc), details)

        relay.done.connect(on_done)
        relay.failed.connect(on_failed)
        self.pool.start(_Task(fn, args, kwargs, relay))

    def wait(self, ms: int = 30000) -> bool:
        return self.pool.waitForDone(ms)


STREAM_READ_S = 15.0  # the service sends a keep-alive every 5 s: three missed ones mean the connection is dead
_STOPPING: list[EventStream] = []  # stopped streams whose thread has not ended yet (see the module docstring)


class EventStream(QThread):
    """Follows ``/api/events`` and emits each event as a dict on the GUI thread."""

    event = Signal(object)  # a dict, passed through as is (no QVariantMap round trip)
    connected = Signal(bool)

    def __init__(self, make_client: Callable[[], Any], parent: QObject | None = None):
        super().__init__(parent)
        self.make_client = make_client
        self._stop = threading.Event()
        self._client = None

    def run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._client = self.make_client()
                self._client.info()  # making a client connects nothing: only a service that answers counts as live
                if self._stop.is_set():
                    break
                self.connected.emit(True)
                backoff = 0.5
                for ev in self._client.events(timeout=STREAM_READ_S):
                    if self._stop.is_set():
                        break
                    self.event.emit(ev)
            except Exception:
                if self._stop.is_set():
                    break
                self.connected.emit(False)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                if self._client is not None:
                    try:
                        self._client.close()
                    except Exception:
                        pass
                    self._client = None

    def stop(self, wait_ms: int = 2000) -> None:
        """Ask the thread to end and wait up to ``wait_ms``; a thread still in a read is kept alive elsewhere."""
        self._stop.set()
        client = self._client
        if client is not None:
            try:
                client.close()
            except Exception:
                pass
        if not self.wait(wait_ms):
            self.setParent(None)  # deleting the old owner must not destroy a running thread
            _STOPPING.append(self)
        _STOPPING[:] = [t for t in _STOPPING if not t.isFinished()]


@atexit.register
def _wait_for_stopping() -> None:
    for thread in list(_STOPPING):
        thread.wait(int(STREAM_READ_S * 1000) + 5000)
