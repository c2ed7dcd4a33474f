"""A perceptual distance between decoded images for InstaFlow's last phase, offline.

LPIPS (the ``lpips`` package) is the distance the method calls for, but its calibrated heads sit
on a torchvision backbone whose weights come from torchvision's download store. We use LPIPS only
when those weights are already in the local torch hub cache; otherwise the substitute is a feature
distance from the embedded world image encoder (LPIPS's recipe without its learned weights: each
position's feature vector unit-normalised, squared differences averaged). Which one ran is
returned by name, so the log and the model card say it. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _cached_alexnet() -> Path | None:
    try:
        from torchvision.models import AlexNet_Weights
    except ImportError:
        return None
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(AlexNet_Weights.IMAGENET1K_V1.url).name
    return file if file.exists() else None


def perceptual_distance(device: torch.device, prefer: str = "auto") -> tuple[Distance, str]:
    """(per-sample distance between two batches of images in [-1, 1], its name). ``prefer``: "auto"
    (LPIPS when its backbone is cached, else the encoder), "lpips" (refuse without it) or "encoder"."""
    if prefer in ("auto", "lpips") and _cached_alexnet() is not None:
        import lpips

        net = lpips.LPIPS(net="alex", verbose=False).to(device).eval().requires_grad_(False)
        return (lambda a, b: net(a, b).flatten()), "lpips (alex, from the local torch hub cache)"
    if prefer == "lpips":
        raise FileNotFoundError("LPIPS needs torchvision's AlexNet weights in the local torch hub cache "
                                f"({Path(torch.hub.get_dir()) / 'checkpoints'}); nothing is downloaded: put them there or use 'encoder'")
    from backend.world.pretrained import load_encoder

    enc = load_encoder(device=str(device))

    def encoder_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa = F.normalize(enc.tensors(a)[0].float(), dim=1)
        fb = F.normalize(enc.tensors(b)[0].float(), dim=1)
        return (fa - fb).pow(2).sum(1).mean(dim=(1, 2))

    return encoder_distance, "world-encoder feature distance (LPIPS's backbone weights are not in the local cache)"
