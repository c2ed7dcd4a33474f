"""The job runner: a queue in SQLite, one slot per device, each job in its own child process.

Jobs never run inside the service: a crash, OOM or kill of a job leaves the service and the
GUI alone. Control is a flag on the job row that the worker polls; a stop that is not obeyed
within ``stop_timeout`` becomes a kill. On start the runner adopts workers that outlived a
previous service and marks jobs whose process is gone as interrupted (resumable when a
checkpoint exists), so nobody has to edit the database by hand.

Once a job has run, the runner keeps one *standby* worker, started while no job runs: a process
that has already imported torch, diffusers and the stages (about 5 s on a 2-core machine, most of
a small Playground job) and waits on a pipe for the next job's id. A job is still its own process; it just starts warm. The
standby ends with the service (its pipe closes); ``SIGNAL_STANDBY_WORKER=0`` turns it off.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from backend.jobs import now_iso, standby_command, worker_command
from backend.store import job_state
from backend.store.project import connect

LIVE = ("running",)


def _is_our_worker(pid: int, job_id: int, project: Path) -> bool:
    try:
        cmd = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    # a standby worker's command line names no job, only its project: the pid the job row holds ties them
    return "worker" in cmd and (("--standby" in cmd and str(project) in cmd) or ("--job" in cmd and str(job_id) in cmd))


class JobRunner:
    def __init__(self, project_root: Path, slots: int = 1, stop_timeout: float = 60.0, poll: float = 0.2, standby: bool | None = None):
        self.root = Path(project_root)
        self.slots = slots
        self.stop_timeout = stop_timeout
        self.poll = poll
        self.children: dict[int, subprocess.Popen] = {}
        self.adopted: dict[int, int] = {}  # job id -> pid of a worker started by an earlier service
        self.stop_requested: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.db = None
        self.standby_enabled = os.environ.get("SIGNAL_STANDBY_WORKER", "1") != "0" if standby is None else standby
        self.standby: subprocess.Popen | None = None
        self.standby_failures = 0  # standbys that ended before they were given a job: after three, jobs start cold
        self.launched = 0

    # --- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self.db = connect(self.root / "project.db")
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop scheduling; running workers keep going (they are adopted by the next service)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self.standby is not None:  # it holds no job: nothing is lost
            self.standby.kill()
            self.standby.wait(timeout=30)
            self.standby = None

    def recover(self) -> list[int]:
        """Adopt live workers of earlier services; mark jobs whose process died as interrupted."""
        changed = []
        for job_id, pid in self.db.execute("SELECT id, pid FROM jobs WHERE state IN ('running')").fetchall():
            if pid and psutil.pid_exists(pid) and _is_our_worker(pid, job_id, self.root):
                self.adopted[job_id] = pid
                continue
            self._mark_interrupted(job_id, "the worker process is gone (service restart or crash)")
            changed.append(job_id)
        return changed

    # --- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # the runner must survive anything a job does
                print(f"[runner] {type(exc).__name__}: {exc}", file=sys.stderr)
            self._stop.wait(self.poll)

    def tick(self) -> None:
        self._reap()
        self._escalate_stops()
        self._start_queued()
        self._keep_standby()

    def _reap(self) -> None:
        for job_id, proc in list(self.children.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.children[job_id]
            self.stop_requested.pop(job_id, None)
            state = self.db.execute("SELECT state FROM jobs WHERE id = ?", [job_id]).fetchone()
            if state and state[0] in LIVE:
                why = f"worker exited with code {code}" if code >= 0 else f"worker killed by signal {-code}"
                self._mark_interrupted(job_id, why)
        for job_id, pid in list(self.adopted.items()):
            if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                del self.adopted[job_id]
                state = self.db.execute("SELECT state FROM jobs WHERE id = ?", [job_id]).fetchone()
                if state and state[0] in LIVE:
                    self._mark_interrupted(job_id, "adopted worker ended without a final state")

    def _escalate_stops(self) -> None:
        now = time.time()
        for job_id, _control in self.db.execute("SELECT id, control FROM jobs WHERE state = 'running' AND control IN ('stop', 'pause')").fetchall():
            first = self.stop_requested.setdefault(job_id, now)
            if now - first > self.stop_timeout:
                self.kill(job_id)

    def _running_count(self) -> int:
        return len(self.children) + len(self.adopted)

    def _start_queued(self) -> None:
        while self._running_count() < self.slots:
            row = self.db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
            if row is None:
                return
            self.launch(int(row[0]))

    # --- actions ---------------------------------------------------------------------------------

    def launch(self, job_id: int) -> None:
        from backend.recipes import loads_recipe

        row = self.db.execute("SELECT recipe, run_dir FROM jobs WHERE id = ?", [job_id]).fetchone()
        recipe = loads_recipe(row[0])
        run_dir = self.root / (row[1] or f"runs/job-{job_id:05d}")
        run_dir.mkdir(parents=True, exist_ok=True)
        log = open(run_dir / "worker.log", "ab")
        cmd = worker_command(self.root, job_id, getattr(recipe, "compute", None))
        started = self.db.execute("SELECT started FROM jobs WHERE id = ?", [job_id]).fetchone()[0]
        # claim the job: only a job still queued may start
        if not job_state.move(self.db, job_id, "running", only_from=("queued",), control=None, error=None, heartbeat=time.time(), started=started or now_iso()):
            log.close()
            return
        proc = self._hand_to_standby(job_id, run_dir / "worker.log") if cmd[1:4] == ["-m", "backend", "worker"] else None
        if proc is None:
            proc = subprocess.Popen(cmd, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, env=self.job_env(), start_new_session=True)
        log.close()
        self.launched += 1
        with self.db.conn:
            self.db.execute("UPDATE jobs SET pid = ? WHERE id = ?", [proc.pid, job_id])
        self.children[job_id] = proc

    cwd = str(Path(__file__).resolve().parents[2])

    @staticmethod
    def job_env() -> dict[str, str]:
        # jobs run at a lower CPU priority than the service and the Studio: on a small machine a
        # training job that competes as an equal starves the window (stalls of 100 ms and more)
        return {"SIGNAL_JOB_NICE": "5", **os.environ, "PYTHONUNBUFFERED": "1"}

    def _keep_standby(self) -> None:
        """A warm worker ready for the next job, once this service has run one (a service that runs no job
        spends nothing on it). Started only while no job runs: its imports beside a running job slowed
        that job's sampling five-fold on 2 cores (torch's threads of two processes fighting over them)."""
        if self.standby is not None and self.standby.poll() is not None:
            self.standby_failures += 1
            self.standby = None
        if (not self.standby_enabled or self.standby is not None or self.launched == 0 or self.standby_failures >= 3 or self._stop.is_set()
                or self._running_count() > 0):
            return
        log = open(self.root / "cache" / "standby-worker.log", "wb") if (self.root / "cache").is_dir() else subprocess.DEVNULL
        self.standby = subprocess.Popen(standby_command(self.root), cwd=self.cwd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                                        env=self.job_env(), start_new_session=True)
        if log is not subprocess.DEVNULL:
            log.close()

    def _hand_to_standby(self, job_id: int, log: Path) -> subprocess.Popen | None:
        """The standby worker, now running ``job_id`` with its output in ``log``; None when there is none alive."""
        proc, self.standby = self.standby, None
        if proc is None or proc.poll() is not None:
            return None
        try:
            proc.stdin.write(f"{job_id} {log}\n".encode())
            proc.stdin.close()
        except OSError:  # it died as the job came: start the job cold
            proc.kill()
            proc.wait(timeout=30)
            return None
        return proc

    def kill(self, job_id: int) -> bool:
        """SIGKILL the job's process group; the job becomes interrupted (resumable if checkpointed)."""
        pid = self.children[job_id].pid if job_id in self.children else self.adopted.get(job_id)
        if pid is None:
            return False
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if job_id in self.children:
            self.children[job_id].wait(timeout=30)
        return True

    def _mark_interrupted(self, job_id: int, why: str) -> None:
        run_dir = self.db.execute("SELECT run_dir FROM jobs WHERE id = ?", [job_id]).fetchone()[0]
        resumable = bool(run_dir) and (self.root / run_dir / "checkpoints" / "latest").exists()
        job_state.move(self.db, job_id, "interrupted", only_from=("running",), pid=None, resumable=int(resumable), error=why, ended=now_iso(), control=None)

    def status(self) -> dict[str, Any]:
        standby = self.standby.pid if self.standby is not None and self.standby.poll() is None else None
        return {"slots": self.slots, "running": sorted(list(self.children) + list(self.adopted)), "standby_pid": standby}

