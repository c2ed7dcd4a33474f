"""Load the world's shipped networks from ``resources/world`` (or any folder given)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from backend.paths import resources_dir

_SCRIPTS = {"vae": "train-vae", "detector": "train-detector", "encoder": "train-encoder"}


class MissingWeightsError(FileNotFoundError):
    """Shipped weights are absent; the message says which script rebuilds them."""


def world_part(name: str, folder: str | Path | None = None) -> Path:
    path = Path(folder) if folder else resources_dir() / "world" / name
    weights = ("diffusion_pytorch_model.safetensors",) if name == "vae" else ("model.safetensors",)
    if not all((path / w).exists() for w in weights) or not (path / "config.json").exists():
        raise MissingWeightsError(
            f"no {name} weights in {path}; rebuild them with 'signal-backend world {_SCRIPTS.get(name, 'train-' + name)} --out {path}'"
        )
    return path


def vae_downsampling(vae) -> int:
    """Image pixels per latent pixel along a side: an AutoencoderKL halves the grid between each
    pair of its blocks."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@lru_cache(maxsize=4)
def load_vae(folder: str | None = None, device: str = "cpu"):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(world_part("vae", folder)), local_files_only=True).to(device)
    vae.eval().requires_grad_(False)
    return vae


@lru_cache(maxsize=4)
def load_detector(folder: str | None = None, device: str = "cpu"):
    from .detector import Detector

    return Detector.load(world_part("detector", folder), device)


@lru_cache(maxsize=4)
def load_encoder(folder: str | None = None, device: str = "cpu"):
    from .encoder import Encoder

    return Encoder.load(world_part("encoder", folder), device)
