"""The model-family interface every stage trains and samples through.

A ``ModelBundle`` holds the velocity network, the VAE that maps images to latents, the text
encoder, and the ``Family`` that knows how to call, build, save and hook that network. Families
register themselves by name (``mmdit``: an SD3-style transformer; ``unet``: the SD 1.x / SDXL
convolutional structure), and a recipe's ``model.family`` picks one. Objectives and samplers only
call ``bundle.velocity``, so every method works on every family.

A saved model is a folder in the diffusers layout: the network in the family's subfolder
(``transformer/`` or ``unet/``) and ``vae/``, each loading with its own ``from_pretrained``;
``text_encoder/`` is a pointer to a local encoder folder (MiniLM is not copied), ``scheduler/`` is
a ``FlowMatchEulerDiscreteScheduler`` config, and ``signal_model.json`` says which family and
shift rule the model was trained with.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from backend.models.protocol import _FAMILIES, Family, PromptEmbeds, net_config, register_family, to_device
from backend.models.text_encoder import TextEncoder, load_text_encoder

__all__ = ["ALIASES", "Family", "ModelBundle", "PromptEmbeds", "get_family", "net_config", "register_family", "to_device"]
ALIASES = {"embedded": "mmdit"}  # models saved before the UNet family existed


def get_family(name: str) -> Family:
    from . import mmdit, stock, unet  # noqa: F401  (each registers itself)

    name = ALIASES.get(name, name)
    if name not in _FAMILIES:
        raise ValueError(f"unknown model family {name!r}; one of {sorted(_FAMILIES)}")
    return _FAMILIES[name]


def family_of_folder(folder: Path) -> Family | None:
    """The family of a saved model folder, from its ``signal_model.json`` or its layout."""
    info = folder / "signal_model.json"
    if info.exists():
        return get_family(json.loads(info.read_text()).get("family", "mmdit"))
    from .stock_folder import StockFolderError, stock_family_name

    try:
        name = stock_family_name(folder)
    except StockFolderError:
        return None
    if name is not None:
        return get_family(name)
    for name in ("mmdit", "unet"):
        fam = get_family(name)
        if (folder / fam.subfolder / "config.json").exists():
            return fam
    return None


def is_model_folder(folder: Path) -> bool:
    fam = family_of_folder(folder)
    return fam is not None and (folder / fam.subfolder / "config.json").exists()


class ModelBundle:
    """Velocity network + VAE + text encoder + family + the shift rule; what objectives and samplers use."""

    def __init__(self, net: torch.nn.Module, vae: AutoencoderKL, text_encoder: TextEncoder, info: dict[str, Any], vae_file: Path | None = None,
                 family: Family | None = None):
        self.net = net
        self.vae = vae
        self.vae_file = vae_file
        self.text_encoder = text_encoder
        self.family = family or get_family(info.get("family", "mmdit"))
        self.info = {**info, "family": self.family.name}
        self._empty: PromptEmbeds | None = None

    # --- prompts ------------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        states, mask, pooled = self.text_encoder.encode(prompts)
        return PromptEmbeds(states, pooled, mask.sum(1))

    def empty_prompt(self) -> PromptEmbeds:
        """Embedding of the empty prompt (caption dropout and the unconditional CFG branch)."""
        if self._empty is None:
            self._empty = self.encode_prompts([""])
        return self._empty

    # --- latents ------------------------------------------------------------------------------

    @property
    def vae_identity(self) -> str:
        """Stable id of the VAE weights, for latent cache keys."""
        from backend.data.cache import file_fingerprint

        if self.vae_file is None or not self.vae_file.exists():
            raise RuntimeError("this bundle's VAE was not loaded from a file; its latents cannot be cached")
        return file_fingerprint(self.vae_file)

    @property
    def vae_factor(self) -> int:
        from backend.world.pretrained import vae_downsampling

        return vae_downsampling(self.vae)

    @property
    def token_pixels(self) -> int:
        """Image pixels per token side (VAE factor x patch): what the dynamic shift counts."""
        return self.vae_factor * self.family.patch(self.net)

    def repa_grid(self, width: int, height: int, block: int) -> tuple[int, int]:
        """(rows, cols) of the features REPA aligns at an image size."""
        return self.family.repa_grid(self.net, block, (height // self.vae_factor, width // self.vae_factor))

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> normalised latents ((z - shift) * scale), deterministic (posterior mode)."""
        z = self.vae.encode(x.to(self.vae.device, self.vae.dtype)).latent_dist.mode()
        return (z - self.shift_factor) * self.scaling_factor

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> images in [-1, 1] (differentiable, for ReFL-style objectives)."""
        return self.vae.decode(z.to(self.vae.dtype) / self.scaling_factor + self.shift_factor).sample

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor or 1.0)

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    # --- velocity -----------------------------------------------------------------------------

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, prompt: PromptEmbeds, net: torch.nn.Module | None = None) -> torch.Tensor:
        """v(x_t, t, c); ``t`` in [0, 1] per sample; ``net`` overrides the bundle's network (EMA, DDP)."""
        return self.family.velocity(net if net is not None else self.net, x_t, t, prompt)

    def guided_velocity(self, x: torch.Tensor, t: torch.Tensor, cond: PromptEmbeds, empty: PromptEmbeds | None, cfg: float,
                        net: torch.nn.Module | None = None) -> torch.Tensor:
        """v with classifier-free guidance at ``cfg`` (``empty``: the unconditional prompt, one row or one
        per sample; ``t`` a scalar or one per sample). A guidance-distilled network (FLUX.1-dev) is
        told ``cfg`` as its input and runs once, as its stock pipeline does."""
        net = net if net is not None else self.net
        tt = t.expand(x.shape[0]) if t.dim() == 0 else t
        if self.family.embeds_guidance(net):
            return self.velocity(x, tt, replace(cond, guidance=float(cfg)), net)
        if empty is None or cfg == 1.0:
            return self.velocity(x, tt, cond, net)
        n = x.shape[0]
        if empty.states.shape[0] != n:
            empty = empty.expand(n)
        v_u, v_c = self.velocity(torch.cat([x, x]), torch.cat([tt, tt]), PromptEmbeds.cat([empty, cond]), net).chunk(2)
        return v_u + cfg * (v_c - v_u)

    # --- shift rule ---------------------------------------------------------------------------

    def sampling_schedule(self, steps: int, alpha: float) -> torch.Tensor:
        """The steps + 1 times from 1 to 0 the ODE sampler visits: a stock family's are its
        pipeline's (so a model trained here draws the same image in stock diffusers), ours the
        shifted uniform grid of METHODS.md §0."""
        if self.family.stock:
            from .stock import stock_sigmas

            return stock_sigmas(Path(self.info["source"]), steps, alpha, self.info.get("shift", {}))
        from backend.flow.timesteps import sampling_schedule

        return sampling_schedule(steps, alpha)

    def default_alpha(self, width: int, height: int) -> float:
        """The shift this model samples with at a size (from the rule it was trained with)."""
        from backend.flow.density import bucket_alpha

        return bucket_alpha(self.info.get("shift", {"kind": "none"}), width, height, (width // self.token_pixels) * (height // self.token_pixels))

    # --- persistence --------------------------------------------------------------------------

    def save(self, folder: Path, net: torch.nn.Module | None = None, extra: dict[str, Any] | None = None) -> Path:
        """Write a diffusers-layout folder; ``net`` overrides the bundle's network (e.g. EMA weights)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        (net or self.net).save_pretrained(tmp / self.family.subfolder, safe_serialization=True)
        shift = self.info.get("shift", {})
        if self.family.stock:  # a stock folder again: the pipeline's other parts from the folder this model came from
            from .stock import save_stock_parts

            save_stock_parts(Path(self.info["source"]), tmp, self.family.name, shift)
        else:
            self.vae.save_pretrained(tmp / "vae", safe_serialization=True)
            (tmp / "text_encoder").mkdir()
            (tmp / "text_encoder" / "source.json").write_text(json.dumps({"folder": str(self.text_encoder.folder), "identity": self.text_encoder.identity}) + "\n")
            FlowMatchEulerDiscreteScheduler(shift=float(shift.get("alpha", 1.0)) if shift.get("kind") == "fixed" else 1.0).save_pretrained(tmp / "scheduler")
        info = {**self.info, **(extra or {})}
        (tmp / "signal_model.json").write_text(json.dumps(info, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
        return folder


def build_embedded(preset: str = "small", *, family: str = "mmdit", layers: int | None = None, heads: int | None = None, head_dim: int | None = None,
                   patch: int = 2, channels: list[int] | None = None, text_encoder: str | None = None, vae: str | None = None,
                   shift: dict[str, Any] | None = None, seed: int = 0) -> ModelBundle:
    """A fresh embedded model: random network of ``family``, shipped ShapesWorld VAE, MiniLM (or the given folders)."""
    from backend.world.pretrained import world_part

    fam = get_family(family)
    te = load_text_encoder(text_encoder or None)
    vae_dir = world_part("vae", vae or None)
    vae_model = AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True).eval().requires_grad_(False)
    torch.manual_seed(seed)
    net = fam.build(preset=preset, text_dim=te.dim, latent_channels=vae_model.config.latent_channels, layers=layers, heads=heads,
                    head_dim=head_dim, patch=patch, channels=channels)
    info = {"family": fam.name, "preset": preset, "shift": shift or {"kind": "none"}}
    return ModelBundle(net, vae_model, te, info, vae_dir / "diffusion_pytorch_model.safetensors", fam)


def load_model(folder: str | Path, device: str = "cpu") -> ModelBundle:
    """Load a saved model folder (diffusers layout) of any supported family."""
    folder = Path(folder)
    if not (folder / "signal_model.json").exists():
        if (folder / "model_index.json").exists():
            return load_stock(folder, device=device)
        raise FileNotFoundError(f"{folder} is not a model folder (signal_model.json missing)")
    info = json.loads((folder / "signal_model.json").read_text())
    fam = get_family(info.get("family", "mmdit"))
    if fam.stock:  # trained here from an SD3 / FLUX folder: the stock layout, with what we recorded
        return load_stock(folder, info, device=device)
    if not (folder / fam.subfolder / "config.json").exists():
        raise FileNotFoundError(f"{folder} is not a complete model folder ({fam.subfolder}/config.json missing)")
    net = fam.prepare_loaded(fam.model_class.from_pretrained(str(folder / fam.subfolder), local_files_only=True, use_safetensors=True))
    vae = AutoencoderKL.from_pretrained(str(folder / "vae"), local_files_only=True, use_safetensors=True).eval().requires_grad_(False)
    te_folder: str | None = None
    src = folder / "text_encoder" / "source.json"
    if src.exists():
        te_folder = json.loads(src.read_text())["folder"] or None  # empty: the embedded MiniLM (as the shipped base says)
        if te_folder and not Path(te_folder).exists():
            te_folder = None  # moved machines: fall back to the embedded MiniLM
    elif (folder / "text_encoder" / "config.json").exists():
        te_folder = str(folder / "text_encoder")
    te = load_text_encoder(te_folder)
    return ModelBundle(net.to(device), vae.to(device), te, info, folder / "vae" / "diffusion_pytorch_model.safetensors", fam)


def load_stock(folder: Path, info: dict[str, Any] | None = None, device: str = "cpu") -> ModelBundle:
    """A ``ModelBundle`` of a stock (or stock-layout saved) SD3 / FLUX folder; weights load in float32
    (the trained copy; frozen parts could stay in their stored type on a GPU)."""
    from .stock import PipelineTextEncoder, scheduler_shift
    from .stock_folder import check_stock_folder

    checked = check_stock_folder(folder)
    fam = get_family(checked["family"])
    net = fam.model_class.from_pretrained(str(folder / "transformer"), local_files_only=True, use_safetensors=True, dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(str(folder / "vae"), local_files_only=True, use_safetensors=True, dtype=torch.float32)
    te = PipelineTextEncoder(folder, fam.name, "cuda" if torch.cuda.is_available() else "cpu")
    base = {"shift": scheduler_shift(folder)}
    info = {**base, **(info or {}), "family": fam.name, "source": str(Path(folder).resolve())}
    vae_file = next(iter(sorted((folder / "vae").glob("*.safetensors"))))
    return ModelBundle(net.to(device), vae.eval().requires_grad_(False).to(device), te, info, vae_file, fam)
