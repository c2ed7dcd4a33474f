"""Train and measure the ShapesWorld detector.

Training draws fresh renders with the degradations generated images have (blur, noise,
low resolution, colour drift), so the detector judges a model's samples the way it judges
clean renders. Accuracy is measured per attribute on renders of a world seed never trained on.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .arrays import render_scenes, square_batch, to_image
from .detector import GRID, INPUT, SIZE_NAMES, Detection, Detector, ShapesDetector, save_detector
from .fit import fit
from .spec import BACKGROUNDS, COLOR_NAMES, SHAPES, Scene


def targets(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Heatmaps (Gaussian at each centre) and per-cell attribute labels on the 16x16 grid."""
    n = len(scenes)
    heat = torch.zeros(n, GRID, GRID)
    attr_mask = torch.zeros(n, GRID, GRID)
    offset = torch.zeros(n, 2, GRID, GRID)
    center_mask = torch.zeros(n, GRID, GRID)
    labels = {k: torch.full((n, GRID, GRID), -100, dtype=torch.long) for k in ("shape", "color", "size")}
    ys, xs = torch.meshgrid(torch.arange(GRID, dtype=torch.float32) + 0.5, torch.arange(GRID, dtype=torch.float32) + 0.5, indexing="ij")
    for b, scene in enumerate(scenes):
        for obj in scene.objects:
            cx, cy = obj.center[0] * GRID, obj.center[1] * GRID
            short = min(scene.width, scene.height)
            rx = obj.radius * short / scene.width * GRID
            ry = obj.radius * short / scene.height * GRID
            sx, sy = max(0.5, rx / 3), max(0.5, ry / 3)
            g = torch.exp(-((xs - cx) ** 2) / (2 * sx**2) - ((ys - cy) ** 2) / (2 * sy**2))
            heat[b] = torch.maximum(heat[b], g)
            ix, iy = min(GRID - 1, int(cx)), min(GRID - 1, int(cy))
            heat[b, iy, ix] = 1.0
            center_mask[b, iy, ix] = 1.0
            offset[b, 0, iy, ix] = cx - ix
            offset[b, 1, iy, ix] = cy - iy
            near = (g > 0.5) & (g >= heat[b] - 1e-6)
            attr_mask[b][near] = 1.0
            labels["shape"][b][near] = SHAPES.index(obj.shape)
            labels["color"][b][near] = COLOR_NAMES.index(obj.color)
            labels["size"][b][near] = SIZE_NAMES.index(obj.size)
    bg_kind = torch.tensor([BACKGROUNDS.index(s.background.kind) for s in scenes])
    bg_color = torch.tensor([COLOR_NAMES.index(s.background.color) for s in scenes])
    return {"heat": heat, "center_mask": center_mask, "offset": offset, "attr_mask": attr_mask, **labels, "bg_kind": bg_kind, "bg_color": bg_color}


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random blur, low-resolution round trip, colour drift and noise (what samples look like)."""
    n = x.shape[0]
    out = []
    for i in range(n):
        xi = x[i : i + 1]
        r = torch.rand(5, generator=gen)
        if r[0] < 0.35:
            side = int(torch.randint(20, 48, (1,), generator=gen))
            xi = F.interpolate(F.interpolate(xi, size=(side, side), mode="bilinear", antialias=True), size=(INPUT, INPUT), mode="bilinear")
        if r[1] < 0.4:
            sigma = 0.3 + 1.0 * float(torch.rand(1, generator=gen))
            k = torch.arange(-3, 4, dtype=torch.float32)
            w = torch.exp(-(k**2) / (2 * sigma**2))
            w = w / w.sum()
            xi = F.conv2d(F.pad(xi, (3, 3, 0, 0), mode="replicate"), w.view(1, 1, 1, 7).repeat(3, 1, 1, 1), groups=3)
            xi = F.conv2d(F.pad(xi, (0, 0, 3, 3), mode="replicate"), w.view(1, 1, 7, 1).repeat(3, 1, 1, 1), groups=3)
        if r[2] < 0.4:
            gain = 1 + 0.06 * (torch.rand(1, 3, 1, 1, generator=gen) * 2 - 1)
            bias = 0.05 * (torch.rand(1, 3, 1, 1, generator=gen) * 2 - 1)
            xi = xi * gain + bias
        if r[3] < 0.5:
            xi = xi + 0.12 * float(torch.rand(1, generator=gen)) * torch.randn(xi.shape, generator=gen)
        out.append(xi.clamp(-1, 1))
    return torch.cat(out)


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss on the centre heatmap."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_loss = torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = torch.log(1 - p) * p**2 * (1 - target) ** 4 * neg
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp_min(1)


def detector_loss(out: dict[str, torch.Tensor], t: dict[str, torch.Tensor]) -> torch.Tensor:
    loss = focal_loss(out["center"], t["heat"])
    m = t["center_mask"][:, None]
    loss = loss + (F.l1_loss(out["offset"], t["offset"], reduction="none") * m).sum() / m.sum().clamp_min(1)
    for key in ("shape", "color", "size"):
        loss = loss + F.cross_entropy(out[key], t[key], ignore_index=-100)
    loss = loss + 0.5 * F.cross_entropy(out["bg_kind"], t["bg_kind"]) + 0.5 * F.cross_entropy(out["bg_color"], t["bg_color"])
    return loss


def match(det: Detection, scene: Scene, tol: float = 0.12) -> list[tuple[int, int]]:
    """Greedy nearest-centre matching of detections to ground-truth objects."""
    pairs = []
    for gi, obj in enumerate(scene.objects):
        for di, d in enumerate(det.objects):
            dist = math.hypot(d.center[0] - obj.center[0], d.center[1] - obj.center[1])
            if dist <= tol:
                pairs.append((dist, gi, di))
    pairs.sort()
    used_g, used_d, out = set(), set(), []
    for _, gi, di in pairs:
        if gi not in used_g and di not in used_d:
            used_g.add(gi)
            used_d.add(di)
            out.append((gi, di))
    return out


def attribute_accuracy(detections: list[Detection], scenes: list[Scene]) -> dict[str, float]:
    """Per-attribute accuracy: count per image; shape/colour/size/position per object; background per image."""
    c = {"count": 0, "objects": 0, "found": 0, "shape": 0, "color": 0, "size": 0, "bg_kind": 0, "bg_color": 0}
    for det, scene in zip(detections, scenes):
        c["count"] += int(len(det.objects) == len(scene.objects))
        pairs = match(det, scene)
        c["objects"] += len(scene.objects)
        c["found"] += len(pairs)
        for gi, di in pairs:
            g, d = scene.objects[gi], det.objects[di]
            c["shape"] += int(g.shape == d.shape)
            c["color"] += int(g.color == d.color)
            c["size"] += int(g.size == d.size)
        c["bg_kind"] += int(det.background.get("kind") == scene.background.kind)
        c["bg_color"] += int(det.background.get("color") == scene.background.color)
    n, objs = len(scenes), max(1, c["objects"])
    return {
        "count": c["count"] / n,
        "position": c["found"] / objs,
        "shape": c["shape"] / objs,
        "color": c["color"] / objs,
        "size": c["size"] / objs,
        "background_kind": c["bg_kind"] / n,
        "background_color": c["bg_color"] / n,
    }


def evaluate_detector(detector: Detector, seed: int = 20_002, n: int = 1000, degraded: bool = False) -> dict[str, float]:
    images, scenes = render_scenes(seed, 0, n)
    if degraded:
        gen = torch.Generator().manual_seed(seed)
        x = degrade(square_batch(images, INPUT), gen)
        images = [to_image(xi) for xi in x]
    return attribute_accuracy(detector(images), scenes)


def train_detector(out: Path, steps: int = 3000, batch: int = 32, lr: float = 2e-3, seed: int = 0, pool: int = 24000, eval_images: int = 1000, log=print) -> dict:
    torch.manual_seed(seed)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    images, scenes = render_scenes(seed, 0, pool)
    x_all = square_batch(images, INPUT)
    del images
    t_all = targets(scenes)
    log(f"[detector] rendered {pool} training scenes in {time.perf_counter() - t0:.1f} s")
    model = ShapesDetector()
    model.train()

    def loss_at(step: int) -> tuple[torch.Tensor, str]:
        idx = torch.randint(pool, (batch,), generator=gen)
        x = degrade(x_all[idx], gen)
        loss = detector_loss(model(x), {k: v[idx] for k, v in t_all.items()})
        return loss, f"loss {loss.item():.4f}"

    fit(model.parameters(), steps, loss_at, lr=lr, weight_decay=1e-4, name="detector", log=log)
    train_time = time.perf_counter() - t0
    save_detector(model, out)
    det = Detector.load(out)
    clean = evaluate_detector(det, n=eval_images)
    degraded = evaluate_detector(det, n=eval_images, degraded=True)
    card = {
        "model": "ShapesWorld detector (CenterNet-style, 16x16 grid)",
        "params": sum(p.numel() for p in model.parameters()),
        "data_seed": seed,
        "steps": steps,
        "batch": batch,
        "train_seconds": round(train_time, 1),
        "accuracy_fresh_renders": {k: round(v, 4) for k, v in clean.items()},
        "accuracy_degraded_renders": {k: round(v, 4) for k, v in degraded.items()},
        "eval_seed": 20_002,
        "eval_images": eval_images,
        "script": "signal-backend world train-detector",
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    log(f"[detector] fresh {card['accuracy_fresh_renders']}")
    log(f"[detector] degraded {card['accuracy_degraded_renders']}")
    return card
