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
    """A folder of shard files mapping key -> {name: tensor}."""

    def __init__(self, root: Path, namespace: str):
        self.dir = Path(root) / namespace
        self.dir.mkdir(parents=True, exist_ok=True)
        self._shards: dict[str, dict[str, torch.Tensor]] = {}
        self.computed = 0  # entries computed by this instance (for reports and tests)

    def _shard_path(self, shard: str) -> Path:
        return self.dir / f"{shard}.safetensors"

    def _load_shard(self, shard: str) -> dict[str, torch.Tensor]:
        if shard not in self._shards:
            path = self._shard_path(shard)
            self._shards[shard] = load_file(str(path)) if path.exists() else {}
        return self._shards[shard]

    def get(self, key: str) -> dict[str, torch.Tensor] | None:
        shard = self._load_shard(key[:2])
        prefix = key + SEP
        found = {name[len(prefix):]: t for name, t in shard.items() if name.startswith(prefix)}
        return found or None

    def missing(self, keys: Sequence[str]) -> list[str]:
        out = []
        for key in dict.fromkeys(keys):
            shard = self._load_shard(key[:2])
            if not any(name.startswith(key + SEP) for name in shard):
                out.append(key)
        return out

    def ensure(self, keys: Sequence[str], compute: Callable[[list[str]], list[dict[str, torch.Tensor]]], batch: int = 128) -> int:
        """Compute and store every key that is missing; returns how many were computed."""
        todo = self.missing(keys)
        for i in range(0, len(todo), batch):
            chunk = todo[i : i + batch]
            values = compute(chunk)
            if len(values) != len(chunk):
                raise ValueError("compute() must return one entry per key")
            touched: dict[str, None] = defaultdict(lambda: None)
            for key, entry in zip(chunk, values):
                shard = self._load_shard(key[:2])
                for name, tensor in entry.items():
                    shard[f"{key}{SEP}{name}"] = tensor.detach().to("cpu").contiguous()
                touched[key[:2]]
            for shard in touched:
                self._write(shard)
        self.computed += len(todo)
        return len(todo)

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
