"""Import throughput (decode + hash + perceptual hash + thumbnail + rows), near-duplicate search
time, and peak memory against the number of images.

For each size N it exports N ShapesWorld images (mixed 32-128 px), imports them into a fresh
project with the default worker pool, runs curation (exact + near duplicates, filters), and
samples the resident memory of the importing process and its decode workers every 50 ms.

    .venv/bin/python bench/import.py [--sizes 2500 5000 10000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import psutil
from common import table


def tree_rss() -> int:
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(n: int, root: Path) -> dict:
    from backend.data.curate import curate
    from backend.data.importer import import_sources
    from backend.store import Project
    from backend.world.export import export_world

    export_world(root / f"w{n}", n, seed=5, subject=False)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss())
            time.sleep(0.05)

    base = tree_rss()
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    with Project.init(root / f"p{n}") as project:
        t0 = time.perf_counter()
        report = import_sources(project, "w", [root / f"w{n}"])
        import_s = time.perf_counter() - t0
        peak_import, peak[0] = peak[0], tree_rss()
        t0 = time.perf_counter()
        cur = curate(project, "w")
        curate_s = time.perf_counter() - t0
    stop.set()
    t.join()
    return {"images": n, "imported": report.imported, "import_s": round(import_s, 2), "images_per_s": round(n / import_s, 1),
            "curate_s": round(curate_s, 2), "near_clusters": len(cur.near_clusters), "exact_clusters": len(cur.exact_clusters),
            "peak_rss_mb": round(max(peak_import, peak[0]) / 2**20),
            "peak_import_mb": round(peak_import / 2**20), "peak_curate_mb": round(peak[0] / 2**20), "rss_before_mb": round(base / 2**20)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2500, 5000, 10000])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="signal-bench-import-"))
    results = [measure(n, root) for n in args.sizes]
    print(table([[r["images"], r["images_per_s"], r["import_s"], r["curate_s"], r["near_clusters"], r["peak_import_mb"], r["peak_curate_mb"], r["rss_before_mb"]]
                       for r in results],
                ["images", "images/s", "import s", "curate s", "near clusters", "peak MB import", "peak MB curate", "MB before"]))
    print(json.dumps({"cpu_cores": psutil.cpu_count(), "results": results}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
