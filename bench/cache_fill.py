"""Filling a tensor cache: the shipped batched shard writes against writing every touched shard
after each chunk (``flush_s=0``, how the cache wrote before), same entries, one run.

Entries are shaped like the text cache's (fp16 token states 32 x 384, pooled 384, length), the
largest per item; the encoder is left out (random tensors), so this measures the cache alone.
For each size N: seconds to fill, and seconds for a new process to open, check and stack all N.

    .venv/bin/python bench/cache_fill.py [--sizes 2000 8000 16000] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import table

from backend.data.cache import TensorCache, cache_key


def entries(keys: list[str]) -> list[dict[str, torch.Tensor]]:
    return [{"states": torch.randn(32, 384).half(), "pooled": torch.randn(384).half(), "len": torch.tensor([7])} for _ in keys]


def fill(n: int, flush_s: float) -> tuple[float, float]:
    keys = [cache_key("text", f"caption {i}") for i in range(n)]
    root = Path(tempfile.mkdtemp(prefix="signal-cache-bench-"))
    t0 = time.perf_counter()
    TensorCache(root, "text", flush_s=flush_s).ensure(keys, entries)
    filled = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = TensorCache(root, "text")
    assert not again.missing(keys)
    again.stack(keys, "states")
    return filled, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 16000])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows, out = [], []
    for n in args.sizes:
        old, _ = fill(n, 0.0)
        new, reopen = fill(n, 20.0)
        out.append({"n": n, "per_chunk_writes_s": round(old, 2), "batched_writes_s": round(new, 2), "speedup": round(old / new, 1), "reopen_check_stack_s": round(reopen, 2)})
        rows.append([n, f"{old:.1f}", f"{new:.1f}", f"{old / new:.1f}x", f"{reopen:.1f}"])
        print(table(rows, ["entries", "per-chunk writes s", "batched s", "speed-up", "reopen+check+stack s"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"results": out, "torch_threads": torch.get_num_threads()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
