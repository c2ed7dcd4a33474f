"""The ShapesWorld representation encoder: what REPA aligns to and Fréchet distances live in.

A separate network from the detector, with a different objective: it is trained
self-supervised (SimCLR's contrastive loss between two augmented views), the way DINO-style
encoders used by REPA are, so it knows nothing of the labels. It gives a 16x16 patch-feature
grid and a pooled vector. Hand-written because no library ships an encoder for this world.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from .arrays import render_scenes, square_batch
from .fit import fit

INPUT = 64


class ResBlock(nn.Module):
    """A residual pair of 3x3 convolutions (also the reward head's trunk over this encoder's grid)."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.GroupNorm(8, dim), nn.GELU(), nn.Conv2d(dim, dim, 3, padding=1), nn.GroupNorm(8, dim), nn.GELU(), nn.Conv2d(dim, dim, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ShapesEncoder(nn.Module):
    """Residual conv encoder to a (dim, 16, 16) grid; pooled = mean of the grid."""

    def __init__(self, dim: int = 64, proj: int = 64):
        super().__init__()
        self.config = {"dim": dim, "proj": proj}
        self.dim = dim
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 4, stride=2, padding=1), nn.GELU(), nn.Conv2d(32, dim, 4, stride=2, padding=1))
        self.blocks = nn.Sequential(ResBlock(dim), ResBlock(dim))
        self.norm = nn.GroupNorm(1, dim)
        self.head = nn.Sequential(nn.Linear(dim, 128), nn.GELU(), nn.Linear(128, proj))

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.grid(x)
        return g, g.mean((2, 3))


class Encoder:
    """Loaded encoder: patch grids and pooled features of PIL images or [-1, 1] tensors."""

    def __init__(self, model: ShapesEncoder, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.device = device
        self.folder: Path | None = None
        for p in self.model.parameters():
            p.requires_grad_(False)

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> Encoder:
        folder = Path(folder)
        model = ShapesEncoder(**json.loads((folder / "config.json").read_text()))
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        enc = cls(model, device)
        enc.folder = folder
        return enc

    @property
    def dim(self) -> int:
        return self.model.dim

    def tensors(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid and pooled features of images already in [-1, 1] (any size; squashed to 64x64)."""
        if x.shape[-2:] != (INPUT, INPUT):
            x = F.interpolate(x, size=(INPUT, INPUT), mode="bilinear", antialias=True, align_corners=False)
        return self.model(x.to(self.device))

    @torch.no_grad()
    def pooled(self, images: list[Image.Image], batch: int = 256) -> torch.Tensor:
        feats = []
        for i in range(0, len(images), batch):
            feats.append(self.tensors(square_batch(images[i : i + batch], INPUT))[1].cpu())
        return torch.cat(feats) if feats else torch.zeros(0, self.dim)


def save_encoder(model: ShapesEncoder, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config) + "\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))


def _views(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random view per image: resized crop, flip, slight colour drift, blur or noise."""
    n = x.shape[0]
    out = torch.empty_like(x)
    for i in range(n):
        s = 0.6 + 0.4 * float(torch.rand(1, generator=gen))
        side = max(16, int(INPUT * s))
        ox = int(torch.randint(INPUT - side + 1, (1,), generator=gen))
        oy = int(torch.randint(INPUT - side + 1, (1,), generator=gen))
        v = F.interpolate(x[i : i + 1, :, oy : oy + side, ox : ox + side], size=(INPUT, INPUT), mode="bilinear", align_corners=False)
        if float(torch.rand(1, generator=gen)) < 0.5:
            v = v.flip(-1)
        v = v * (1 + 0.05 * (torch.rand(1, 3, 1, 1, generator=gen) * 2 - 1))
        if float(torch.rand(1, generator=gen)) < 0.3:
            v = F.avg_pool2d(F.pad(v, (1, 1, 1, 1), mode="replicate"), 3, 1)
        if float(torch.rand(1, generator=gen)) < 0.3:
            v = v + 0.05 * torch.randn(v.shape, generator=gen)
        out[i] = v[0].clamp(-1, 1)
    return out


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.t() / temperature
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def train_encoder(out: Path, steps: int = 1500, batch: int = 64, lr: float = 2e-3, seed: int = 0, pool: int = 12000, log=print) -> dict:
    torch.manual_seed(seed)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    images, _ = render_scenes(seed + 7, 0, pool)
    x_all = square_batch(images, INPUT)
    del images
    log(f"[encoder] rendered {pool} scenes in {time.perf_counter() - t0:.1f} s")
    model = ShapesEncoder()
    losses: list[float] = []

    def loss_at(step: int) -> tuple[torch.Tensor, str]:
        x = x_all[torch.randint(pool, (batch,), generator=gen)]
        _, p1 = model(_views(x, gen))
        _, p2 = model(_views(x, gen))
        loss = info_nce(model.head(p1), model.head(p2))
        losses.append(loss.item())
        return loss, f"loss {loss.item():.4f}"

    fit(model.parameters(), steps, loss_at, lr=lr, weight_decay=1e-4, name="encoder", log=log)
    train_time = time.perf_counter() - t0
    save_encoder(model, out)
    card = {
        "model": "ShapesWorld representation encoder (SimCLR, residual CNN)",
        "params": sum(p.numel() for p in model.parameters()),
        "data_seed": seed + 7,
        "steps": steps,
        "batch": batch,
        "train_seconds": round(train_time, 1),
        "final_loss": round(losses[-1], 4),
        "grid": [model.dim, INPUT // 4, INPUT // 4],
        "script": "signal-backend world train-encoder",
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    log(f"[encoder] saved to {out}")
    return card
