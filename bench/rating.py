"""Rating speed: a key press to the next pair painted, and a submitted judgement to its row committed.

The real Studio (offscreen) rates 300 pairs with the keyboard against a real backend, once with
nothing else running (the baseline of this run) and once while a training job streams metrics and
preview images into the same window. A key press is timed from the key event to the Rate page
repainted with the next pair (``repaint()`` paints synchronously); the rater waits 150 ms between
judgements, as a fast person would, which is when the prefetch refills. Submissions are timed as
the round trip of ``POST /api/comparisons/{id}/choice`` (it answers after the row is committed),
300 of them, idle and while training. Targets: key → paint p95 ≤ 50 ms, submit → commit p95 ≤ 20 ms.

    .venv/bin/python bench/rating.py [--ratings 300] [--json bench/results/rating.json]

Measured 2026-12-02 (bench/results/rating.json, 2 CPU cores, offscreen): key -> paint p95 6.2 ms idle,
8.9 ms while a training job streamed (1455 loss points); submit -> commit p95 4.3 ms idle, 8.8 ms while
training; all 300 judgements stored. (Its first runs stalled on a Studio bug it found: after a rename
the Rate page dropped every pair the previous rater had judged in the session; fixed.)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

from common import scratch_project, stream_recipe


def queue_pairs(project: Path, n: int) -> None:
    """``n`` pairs of world renders at 64 px, queued before the Studio opens the project."""
    from backend.store import Project, ratings
    from backend.world.arrays import render_scenes

    images, scenes = render_scenes(99, 0, 2 * n, size=(64, 64))
    with Project.open(project) as proj:
        hashes = []
        for im in images:
            buf = io.BytesIO()
            im.save(buf, "PNG")
            hashes.append(proj.put_blob(buf.getvalue(), "png"))
        for i in range(n):
            ratings.queue_pair(proj.db, f"scene {i}", hashes[2 * i], hashes[2 * i + 1], {})


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))], 2)


def summary(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": pct(values, 0.5), "p95_ms": pct(values, 0.95), "max_ms": round(max(values), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratings", type=int, default=300)
    ap.add_argument("--think-ms", type=float, default=150.0, help="the rater's pause between judgements")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    project = scratch_project(300, (32, 32))
    queue_pairs(project, 4 * args.ratings + 50)

    from PySide6.QtCore import QSettings, Qt
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(sys.argv[:1])
    from studio.main_window import MainWindow

    def pump(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.001)

    w = MainWindow(QSettings("/tmp/signal-bench-rating.ini", QSettings.IniFormat))
    w.resize(1400, 1000)
    w.show()
    w.open_project(str(project))
    deadline = time.time() + 120
    while (w.stack.currentIndex() != 1 or "Rate" not in w.page_names) and time.time() < deadline:
        pump(0.01)
    client = w.link.client
    w.show_stage("Rate")
    rate = w.rate

    def rate_keys(n: int, rater: str) -> list[float]:
        rate.rater.setText(rater)
        rate._rater_changed()
        keys = [Qt.Key_Left, Qt.Key_Right, Qt.Key_Down, Qt.Key_Left, Qt.Key_Right]
        times = []
        for i in range(n):
            while rate.current is None:
                pump(0.005)
            pump(args.think_ms / 1000)
            before = rate.current["id"]
            t0 = time.perf_counter()
            QTest.keyClick(rate, keys[i % len(keys)])
            while rate.current is None or rate.current["id"] == before:  # the next pair was not prefetched: wait for it
                app.processEvents()
            rate.repaint()
            times.append(1000 * (time.perf_counter() - t0))
        return times

    def submit_round_trips(n: int, rater: str) -> list[float]:
        times: list[float] = []
        while len(times) < n:
            for pair in client.pair_queue(rater, count=min(100, n - len(times))):  # the queue route serves at most 100 at once
                t0 = time.perf_counter()
                client.submit(pair["id"], "a", pair["left"], rater, 500)
                times.append(1000 * (time.perf_counter() - t0))
                pump(0.01)
        return times

    result: dict = {"ratings": args.ratings, "think_ms": args.think_ms}
    result["idle"] = {"key_to_paint": summary(rate_keys(args.ratings, "idle-keys")), "submit_to_commit": summary(submit_round_trips(args.ratings, "idle-api"))}
    job = client.create_job(stream_recipe("rating-bench-stream"), "rating-bench-stream")
    while len(client.metrics(job["id"]).get("loss", [])) < 3:
        pump(0.1)
    result["training"] = {"key_to_paint": summary(rate_keys(args.ratings, "busy-keys")), "submit_to_commit": summary(submit_round_trips(args.ratings, "busy-api"))}
    result["training"]["loss_points_streamed"] = len(client.metrics(job["id"]).get("loss", []))
    client.control(job["id"], "stop")
    client.wait_job(job["id"], timeout=120)
    stored = client.rating_stats("busy-keys")["rated"]
    result["training"]["judgements_stored"] = stored
    w.close()
    w.link.disconnect_backend(stop_process=True)
    for phase in ("idle", "training"):
        for what in ("key_to_paint", "submit_to_commit"):
            result[phase][what]["ratio_to_idle_p95"] = round(result[phase][what]["p95_ms"] / max(1e-6, result["idle"][what]["p95_ms"]), 2)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
