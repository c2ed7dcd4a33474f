"""Service latency and throughput, against a real backend process on loopback.

1. Event latency: a separate writer process inserts metric rows into project.db the way a
   worker does (one small transaction per row, stamped with time.time()); a client follows
   /api/events; latency = arrival at the client - the row's timestamp. Reports p50/p95/max.
2. Rating throughput: submissions of choices per second through the API, one keep-alive
   client, then four in parallel.

    .venv/bin/python bench/service.py [--seconds 10] [--rate 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import REPO

WRITER = r"""
import sys, time
from backend.store.project import connect
db = connect(__import__("pathlib").Path(sys.argv[1]) / "project.db")
job, rate, seconds = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
end = time.time() + seconds
step = 0
while time.time() < end:
    step += 1
    with db.conn:
        db.execute("INSERT INTO metrics (job_id, step, key, value, time) VALUES (?, ?, 'loss', 1.0, ?)", [job, step, time.time()])
    time.sleep(1.0 / rate)
print(step)
"""


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=50.0, help="metric rows per second from the writer")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    from backend.recipes import default_recipe, dumps_recipe
    from backend.service.client import start_backend
    from backend.store import Project

    root = Path(tempfile.mkdtemp(prefix="signal-bench-svc-"))
    with Project.init(root / "proj") as p:
        job = int(p.db["jobs"].insert({"kind": "pretrain", "name": "bench", "recipe": dumps_recipe(default_recipe("pretrain")), "state": "done"}).last_pk)
    proc, client = start_backend(root / "proj", log_path=root / "service.log")
    try:
        latencies: list[float] = []
        stop = threading.Event()

        def follow() -> None:
            for ev in client.events(timeout=None):
                now = time.time()
                if ev.get("type") == "metrics":
                    latencies.extend(now - row[3] for row in ev["rows"])
                if stop.is_set():
                    break

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        time.sleep(1.0)
        w = subprocess.run([sys.executable, "-c", WRITER, str(root / "proj"), str(job), str(args.rate), str(args.seconds)],
                           cwd=REPO, capture_output=True, text=True, check=True)
        time.sleep(1.0)
        stop.set()
        written = int(w.stdout.strip())
        ms = [v * 1000 for v in latencies]

        pairs = [client.create_pair("a red circle", "ab" * 32, "cd" * 32, {"bench": i})["id"] for i in range(3000)]
        t0 = time.perf_counter()
        n1 = 0
        for cid in pairs[:1000]:
            client.submit(cid, "a", rater="bench", decision_ms=500)
            n1 += 1
        single = n1 / (time.perf_counter() - t0)
        from backend.service.client import Client

        chunks = [pairs[1000 + k * 500 : 1000 + (k + 1) * 500] for k in range(4)]

        def submit_all(ids: list[int]) -> None:
            c = Client(client.url, client.token)
            for cid in ids:
                c.submit(cid, "b", rater="bench4", decision_ms=400)
            c.close()

        t0 = time.perf_counter()
        threads = [threading.Thread(target=submit_all, args=(ch,)) for ch in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        parallel = 2000 / (time.perf_counter() - t0)
        judged = client.get("/api/comparisons", judged=True)["total"]
        result = {
            "metric_rows_written": written, "metric_rows_received": len(ms),
            "event_latency_ms": {"p50": round(statistics.median(ms), 1), "p95": round(pct(ms, 0.95), 1), "max": round(max(ms), 1)},
            "ratings_per_s": {"one_client": round(single, 1), "four_clients": round(parallel, 1)},
            "ratings_kept": judged,
        }
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
