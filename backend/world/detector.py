"""The ShapesWorld detector: reads objects, counts, colours, sizes, positions and background.

Written by hand because no library ships a detector for this world: a small CenterNet-style
network (object-centre heatmap plus per-cell attribute heads on a 16x16 grid, and global
background heads). Images of any size are squashed to 64x64 first, as in training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from .arrays import square_batch
from .spec import BACKGROUNDS, COLOR_NAMES, SHAPES, SIZES

INPUT = 64
GRID = 16
SIZE_NAMES = tuple(SIZES)


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ShapesDetector(nn.Module):
    """Backbone to a 16x16 feature grid; heads for centres, offsets and attributes."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.config = {"width": width}
        self.backbone = nn.Sequential(
            _block(3, 16),
            _block(16, 32, stride=2), _block(32, 32),
            _block(32, width, stride=2), _block(width, width), _block(width, width, dilation=2), _block(width, width, dilation=4),
        )
        self.neck = _block(width, width)
        self.center = nn.Conv2d(width, 1, 1)
        self.offset = nn.Conv2d(width, 2, 1)
        self.shape = nn.Conv2d(width, len(SHAPES), 1)
        self.color = nn.Conv2d(width, len(COLOR_NAMES), 1)
        self.size = nn.Conv2d(width, len(SIZE_NAMES), 1)
        self.bg_kind = nn.Linear(2 * width, len(BACKGROUNDS))
        self.bg_color = nn.Linear(2 * width, len(COLOR_NAMES))
        nn.init.constant_(self.center.bias, -2.19)  # prior 0.1, as in CenterNet

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.backbone(x)
        h = self.neck(f)
        g = torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1)
        return {
            "center": self.center(h)[:, 0],
            "offset": self.offset(h),
            "shape": self.shape(h),
            "color": self.color(h),
            "size": self.size(h),
            "bg_kind": self.bg_kind(g),
            "bg_color": self.bg_color(g),
        }


@dataclass
class DetectedObject:
    shape: str
    color: str
    size: str
    center: tuple[float, float]
    score: float


@dataclass
class Detection:
    objects: list[DetectedObject] = field(default_factory=list)
    background: dict[str, str] = field(default_factory=dict)

    def count(self, shape: str, color: str | None = None) -> int:
        return sum(1 for o in self.objects if o.shape == shape and (color is None or o.color == color))


def decode(out: dict[str, torch.Tensor], threshold: float = 0.4) -> list[Detection]:
    """Peaks of the centre heatmap (3x3 non-maximum suppression) become objects."""
    heat = torch.sigmoid(out["center"])
    peaks = (heat == F.max_pool2d(heat[:, None], 3, 1, 1)[:, 0]) & (heat > threshold)
    results = []
    for b in range(heat.shape[0]):
        objs = []
        for iy, ix in peaks[b].nonzero().tolist():
            ox, oy = out["offset"][b, :, iy, ix].tolist()
            objs.append(
                DetectedObject(
                    shape=SHAPES[int(out["shape"][b, :, iy, ix].argmax())],
                    color=COLOR_NAMES[int(out["color"][b, :, iy, ix].argmax())],
                    size=SIZE_NAMES[int(out["size"][b, :, iy, ix].argmax())],
                    center=((ix + ox) / GRID, (iy + oy) / GRID),
                    score=float(heat[b, iy, ix]),
                )
            )
        bg = {"kind": BACKGROUNDS[int(out["bg_kind"][b].argmax())], "color": COLOR_NAMES[int(out["bg_color"][b].argmax())]}
        results.append(Detection(objs, bg))
    return results


class Detector:
    """Loaded detector, ready to read images."""

    def __init__(self, model: ShapesDetector, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.device = device

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> Detector:
        folder = Path(folder)
        config = json.loads((folder / "config.json").read_text())
        model = ShapesDetector(**config)
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return cls(model, device)

    @torch.no_grad()
    def __call__(self, images: list[Image.Image], batch: int = 128) -> list[Detection]:
        out: list[Detection] = []
        for i in range(0, len(images), batch):
            x = square_batch(images[i : i + batch], INPUT).to(self.device)
            out += decode(self.model(x))
        return out


def save_detector(model: ShapesDetector, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config) + "\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
