"""How long a small job takes from the click to its pictures, with and without the standby worker.

A Playground click is a ``sample`` job (the shipped base, one prompt, two seeds, 4 steps, 64 px): on
a 2-core machine the worker's imports (torch, diffusers, the stages) are most of it. The service
keeps a *standby* worker with those imports done once a job has run and no job runs
(``backend/service/runner.py``). Measured as a person uses it: one job, a pause (reading the
pictures), then the next job, timed from ``POST /api/jobs`` to the job's end as the client sees it.
The same project and the same jobs run once with the standby off (``SIGNAL_STANDBY_WORKER=0``),
once with it on; the ratio is the figure, each side's median of ``--repeats`` jobs.

    .venv/bin/python bench/job_start.py [--repeats 4] [--pause 12] [--json bench/results/job_start.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import scratch_project, table

RECIPE = """kind = "sample"
model = "models/shapes-base"
prompts = ["a red circle left of a blue square"]
seeds = [0, 1]
out = "exports/bench-{tag}"
[sampler]
steps = 4
width = 64
height = 64
"""


def timed_jobs(project: Path, standby: bool, repeats: int, pause: float) -> list[float]:
    from backend.service.client import start_backend

    proc, client = start_backend(project, env={"SIGNAL_STANDBY_WORKER": "1" if standby else "0"})
    try:
        first = client.create_job(RECIPE.format(tag=f"first-{standby}"), "first")  # the session's first job starts cold either way
        assert client.wait_job(first["id"], timeout=600)["state"] == "done"
        seconds = []
        for i in range(repeats):
            time.sleep(pause)
            t0 = time.perf_counter()
            job = client.create_job(RECIPE.format(tag=f"{standby}-{i}"), f"timed {i}")
            end = client.wait_job(job["id"], timeout=600)
            seconds.append(time.perf_counter() - t0)
            assert end["state"] == "done", client.log(job["id"])["text"][-2000:]
            print(f"standby {'on ' if standby else 'off'} job {i}: {seconds[-1]:.2f} s", flush=True)
        return seconds
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--pause", type=float, default=12.0, help="seconds between jobs (the standby needs about 5 to load)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from backend.stages.world import install_shipped_base
    from backend.store import Project

    project = scratch_project(8, (64, 64))
    with Project.open(project) as p:
        install_shipped_base(p, log=lambda m: None)
    cold = timed_jobs(project, False, args.repeats, args.pause)
    warm = timed_jobs(project, True, args.repeats, args.pause)
    result = {"repeats": args.repeats, "pause_s": args.pause, "cold_s": cold, "warm_s": warm,
              "cold_median_s": statistics.median(cold), "warm_median_s": statistics.median(warm),
              "ratio_cold_over_warm": statistics.median(cold) / statistics.median(warm)}
    print(table([["off (a new worker per job)", f"{result['cold_median_s']:.2f}", " ".join(f"{x:.2f}" for x in cold)],
                 ["on (the standby runs it)", f"{result['warm_median_s']:.2f}", " ".join(f"{x:.2f}" for x in warm)]],
                ["standby worker", "median s, click to pictures", "each job"]))
    print(f"ratio cold / warm: {result['ratio_cold_over_warm']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
