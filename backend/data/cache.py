"""Content-addressed tensor caches (latents, text embeddings, encoder features).

On a CPU, encoding captions and images every step costs more than the training step itself,
so each input is encoded once. A cache lives in a *namespace* that names the encoder's
identity (``latents-<vae id>``): another encoder means another namespace. Inside it, keys are
hashes of the inputs (image content hash + bucket, or caption text), so changing an input
changes its key and only that entry is computed again. Entries are grouped into 256 shard
files by key prefix and written atomically in safetensors (never pickled).
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SEP = "|"


def cache_key(*parts: str) -> str:
    return hashlib.sha256(SEP.join(parts).encode("utf-8")).hexdigest()[:32]


def file_fingerprint(path: Path) -> str:
    """Identity of a weights file: its size plus the hash of its first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(-(1 << 20), 2)
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


class TensorCache:
    """A folder of shard files mapping key -> {name: tensor}.

    A shard file is rewritten whole, so ``ensure`` writes the shards it touched at most every
    ``flush_s`` seconds and once at the end, not after every chunk: writing after every chunk made
    filling a cache quadratic (8000 caption entries took 28 s, nearly all of it rewriting shards).
    A killed job loses at most the last ``flush_s`` seconds of entries (computed again next time);
    an exception from ``compute`` (a corrupt image) still writes every entry computed before it.
    """

    def __init__(self, root: Path, namespace: str, flush_s: float = 20.0):
        self.dir = Path(root) / namespace
        self.dir.mkdir(parents=True, exist_ok=True)
        self.flush_s = flush_s
        self._shards: dict[str, dict[str, torch.Tensor]] = {}
        self._index: dict[str, dict[str, list[str]]] = {}  # shard -> key -> its tensor names
        self.computed = 0  # entries computed by this instance (for reports and tests)

    def _shard_path(self, shard: str) -> Path:
        return self.dir / f"{shard}.safetensors"

    def _load_shard(self, shard: str) -> dict[str, torch.Tensor]:
        if shard not in self._shards:
            path = self._shard_path(shard)
            self._shards[shard] = load_file(str(path)) if path.exists() else {}
            index: dict[str, list[str]] = defaultdict(list)
            for name in self._shards[shard]:
                key, _, field = name.partition(SEP)
                index[key].append(field)
            self._index[shard] = dict(index)
        return self._shards[shard]

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        shard = self._load_shard(key[:2])
        fields = self._index[key[:2]].get(key)
        return {f: shard[f"{key}{SEP}{f}"] for f in fields} if fields else None

    def missing(self, keys: Sequence[str]) -> list[str]:
        out = []
        for key in dict.fromkeys(keys):
            self._load_shard(key[:2])
            if key not in self._index[key[:2]]:
                out.append(key)
        return out

    def ensure(self, keys: Sequence[str], compute: Callable[[list[str]], list[dict[str, torch.Tensor]]], batch: int = 128) -> int:
        """Compute and store every key that is missing; returns how many were computed."""
        todo = self.missing(keys)
        pending: dict[str, None] = {}
        last_flush = time.monotonic()
        try:
            for i in range(0, len(todo), batch):
                chunk = todo[i : i + batch]
                values = compute(chunk)
                if len(values) != len(chunk):
                    raise ValueError("compute() must return one entry per key")
                for key, entry in zip(chunk, values):
                    shard = self._load_shard(key[:2])
                    for name, tensor in entry.items():
                        shard[f"{key}{SEP}{name}"] = tensor.detach().to("cpu").contiguous()
                    self._index[key[:2]][key] = list(entry)
                    pending[key[:2]] = None
                if time.monotonic() - last_flush >= self.flush_s:
                    self._flush(pending)
                    last_flush = time.monotonic()
        finally:  # an input that fails to encode keeps what was computed before it
            self._flush(pending)
        self.computed += len(todo)
        return len(todo)

    def _flush(self, pending: dict[str, None]) -> None:
        for shard in pending:
            self._write(shard)
        pending.clear()

    def _write(self, shard: str) -> None:
        path = self._shard_path(shard)
        tmp = path.with_suffix(".tmp")
        save_file(self._shards[shard], str(tmp))
        tmp.replace(path)

    def stack(self, keys: Sequence[str], name: str) -> torch.Tensor:
        """Stack tensor ``name`` of each key (all keys must be present)."""
        out = []
        for key in keys:
            entry = self.get(key)
            if entry is None or name not in entry:
                raise KeyError(f"cache entry {key}/{name} missing")
            out.append(entry[name])
        return torch.stack(out)
