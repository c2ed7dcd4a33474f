"""The compute devices this machine offers, as the service reports them (torch is imported once, lazily)."""

from __future__ import annotations

from typing import Any

_DEVICES: list[dict[str, Any]] | None = None


def devices() -> list[dict[str, Any]]:
    """Compute devices this machine offers (torch is imported once, lazily)."""
    global _DEVICES
    if _DEVICES is None:
        import os

        import torch

        out = [{"kind": "cpu", "name": f"CPU ({os.cpu_count()} cores)"}]
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                p = torch.cuda.get_device_properties(i)
                out.append({"kind": "cuda", "index": i, "name": p.name, "memory_gb": round(p.total_memory / 2**30, 1)})
        _DEVICES = out
    return _DEVICES
