"""The model-family interface every stage trains and samples through.

A family bundles the velocity network (an SD3-style MMDiT from diffusers), the VAE that maps
images to latents, and the text encoder. The embedded family and SD3-family folders differ
only in where these come from, so every objective and sampler works on both.

A saved model is a folder in the diffusers layout: ``transformer/`` and ``vae/`` load with
their own ``from_pretrained``, ``text_encoder/`` is a pointer to a local encoder folder
(MiniLM is not copied), ``scheduler/`` is a ``FlowMatchEulerDiscreteScheduler`` config, and
``signal_model.json`` says which family and shift rule the model was trained with.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel

from backend.models.text_encoder import TextEncoder, load_text_encoder

POS_GRID = 64  # tokens per side the positional table covers (1024 px at patch 4, 512 px at patch 2)

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"layers": 2, "heads": 2, "head_dim": 32},
    "small": {"layers": 4, "heads": 4, "head_dim": 32},
    "base": {"layers": 6, "heads": 6, "head_dim": 32},
}


def to_device(t: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Host tensor -> device without stalling: a plain copy from pageable memory makes the host
    wait until the GPU's queue is empty; a pinned, non-blocking copy is queued behind it."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, dtype, non_blocking=True)
    return t.to(device, dtype)


@dataclass
class PromptEmbeds:
    """Text conditioning: token states (B, L, D) padded to the encoder's length, the pooled vector,
    and each prompt's real token count. The network sees the states trimmed to the longest
    prompt of the batch (``trimmed``): on a CPU most of a short caption's 32 tokens are padding,
    and the text tokens would otherwise cost more than the image tokens."""

    states: torch.Tensor
    pooled: torch.Tensor
    lengths: torch.Tensor | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PromptEmbeds:
        return PromptEmbeds(to_device(self.states, device, dtype), to_device(self.pooled, device, dtype), self.lengths)

    def __getitem__(self, idx: Any) -> PromptEmbeds:
        return PromptEmbeds(self.states[idx], self.pooled[idx], None if self.lengths is None else self.lengths[idx])

    def trimmed(self) -> PromptEmbeds:
        if self.lengths is None or len(self.lengths) == 0:
            return self
        return PromptEmbeds(self.states[:, : int(self.lengths.max())], self.pooled, self.lengths)

    @staticmethod
    def cat(parts: list[PromptEmbeds]) -> PromptEmbeds:
        lengths = None if any(p.lengths is None for p in parts) else torch.cat([p.lengths for p in parts])
        return PromptEmbeds(torch.cat([p.states for p in parts]), torch.cat([p.pooled for p in parts]), lengths)


def build_transformer(preset: str = "small", *, text_dim: int = 384, pooled_dim: int = 384, latent_channels: int = 4,
                      layers: int | None = None, heads: int | None = None, head_dim: int | None = None, patch: int = 2) -> SD3Transformer2DModel:
    """An MMDiT from diffusers' ``SD3Transformer2DModel`` config, sized for the embedded world."""
    p = dict(PRESETS[preset])
    p.update({k: v for k, v in {"layers": layers, "heads": heads, "head_dim": head_dim}.items() if v})
    hidden = p["heads"] * p["head_dim"]
    # SD3's sin-cos positions advance (sample_size / patch) / pos_embed_max_size per token. With
    # sample_size = pos_embed_max_size * patch they advance 1 per token, as in DiT; a small
    # sample_size (16 used to be set here) packs a whole 8x8 grid into half a radian, so every
    # token got nearly the same position (cosine > 0.99) and samples came out as scattered blobs.
    net = SD3Transformer2DModel(
        sample_size=POS_GRID * patch,
        patch_size=patch,
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_layers=p["layers"],
        attention_head_dim=p["head_dim"],
        num_attention_heads=p["heads"],
        joint_attention_dim=text_dim,
        caption_projection_dim=hidden,
        pooled_projection_dim=pooled_dim,
        pos_embed_max_size=POS_GRID,
        qk_norm="rms_norm",
    )
    return adaln_zero_init(net)


def adaln_zero_init(net: SD3Transformer2DModel) -> SD3Transformer2DModel:
    """DiT's initialisation, which diffusers leaves out (it builds SD3 to load trained weights):
    Xavier-uniform linear layers, N(0, 0.02) timestep MLP, and zeros for every adaLN modulation
    and the output projection, so each block starts as the identity and the network as v = 0.
    The DiT paper (Peebles & Xie, 2023) found adaLN-Zero trains markedly faster
    than adaLN with ordinary init; only freshly built networks get it, loaded weights are kept."""
    for m in net.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    patch = net.pos_embed.proj.weight
    torch.nn.init.xavier_uniform_(patch.view(patch.shape[0], -1))
    torch.nn.init.zeros_(net.pos_embed.proj.bias)
    for lin in (net.time_text_embed.timestep_embedder.linear_1, net.time_text_embed.timestep_embedder.linear_2):
        torch.nn.init.normal_(lin.weight, std=0.02)
    modulations = [b.norm1.linear for b in net.transformer_blocks] + [b.norm1_context.linear for b in net.transformer_blocks]
    for lin in modulations + [net.norm_out.linear, net.proj_out]:
        torch.nn.init.zeros_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
    return net


class ModelBundle:
    """Transformer + VAE + text encoder + the shift rule; what objectives and samplers use."""

    def __init__(self, transformer: SD3Transformer2DModel, vae: AutoencoderKL, text_encoder: TextEncoder, info: dict[str, Any], vae_file: Path | None = None):
        self.transformer = transformer
        self.vae = vae
        self.vae_file = vae_file
        self.text_encoder = text_encoder
        self.info = info
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

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, prompt: PromptEmbeds, transformer: torch.nn.Module | None = None) -> torch.Tensor:
        """v(x_t, t, c); ``t`` in [0, 1] per sample (SD3 takes t * 1000)."""
        net = transformer if transformer is not None else self.transformer
        prompt = prompt.trimmed()
        return net(
            hidden_states=x_t,
            encoder_hidden_states=prompt.states,
            pooled_projections=prompt.pooled,
            timestep=t * 1000.0,
            return_dict=False,
        )[0]

    # --- shift rule ---------------------------------------------------------------------------

    def default_alpha(self, width: int, height: int) -> float:
        """The shift this model samples with at a size (from the rule it was trained with)."""
        rule = self.info.get("shift", {"kind": "none"})
        kind = rule.get("kind", "none")
        if kind == "fixed":
            return float(rule.get("alpha", 1.0))
        if kind == "per_bucket":
            base = int(rule.get("base_resolution", 32))
            return math.sqrt((width * height) / (base * base))
        if kind == "dynamic":
            from backend.train.timesteps import dynamic_alpha

            f = self.vae_factor * int(self.transformer.config.patch_size)
            tokens = (width // f) * (height // f)
            return dynamic_alpha(tokens, rule.get("base_tokens", 256), rule.get("max_tokens", 4096), rule.get("base_shift", 0.5), rule.get("max_shift", 1.15))
        return 1.0

    # --- persistence --------------------------------------------------------------------------

    def save(self, folder: Path, transformer: SD3Transformer2DModel | None = None, extra: dict[str, Any] | None = None) -> Path:
        """Write a diffusers-layout folder; ``transformer`` overrides (e.g. EMA weights)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        (transformer or self.transformer).save_pretrained(tmp / "transformer", safe_serialization=True)
        self.vae.save_pretrained(tmp / "vae", safe_serialization=True)
        (tmp / "text_encoder").mkdir()
        (tmp / "text_encoder" / "source.json").write_text(json.dumps({"folder": str(self.text_encoder.folder), "identity": self.text_encoder.identity}) + "\n")
        shift = self.info.get("shift", {})
        FlowMatchEulerDiscreteScheduler(shift=float(shift.get("alpha", 1.0)) if shift.get("kind") == "fixed" else 1.0).save_pretrained(tmp / "scheduler")
        info = {**self.info, **(extra or {})}
        (tmp / "signal_model.json").write_text(json.dumps(info, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
        return folder


def build_embedded(preset: str = "small", *, layers: int | None = None, heads: int | None = None, head_dim: int | None = None, patch: int = 2,
                   text_encoder: str | None = None, vae: str | None = None, shift: dict[str, Any] | None = None, seed: int = 0) -> ModelBundle:
    """A fresh embedded model: random MMDiT, shipped ShapesWorld VAE, MiniLM (or the given folders)."""
    from backend.world.pretrained import world_part

    te = load_text_encoder(text_encoder or None)
    vae_dir = world_part("vae", vae or None)
    vae_model = AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True).eval().requires_grad_(False)
    torch.manual_seed(seed)
    net = build_transformer(preset, text_dim=te.dim, pooled_dim=te.dim, latent_channels=vae_model.config.latent_channels, layers=layers, heads=heads, head_dim=head_dim, patch=patch)
    info = {"family": "embedded", "preset": preset, "shift": shift or {"kind": "none"}}
    return ModelBundle(net, vae_model, te, info, vae_dir / "diffusion_pytorch_model.safetensors")


def load_model(folder: str | Path, device: str = "cpu") -> ModelBundle:
    """Load a saved model folder (diffusers layout) of any supported family."""
    folder = Path(folder)
    if not (folder / "transformer" / "config.json").exists():
        raise FileNotFoundError(f"{folder} is not a model folder (transformer/config.json missing)")
    if not (folder / "signal_model.json").exists():
        raise NotImplementedError(
            f"{folder} looks like a stock diffusers model; loading SD3/FLUX folders (three text encoders) "
            "is not supported yet - only models saved by Signal Studio load here"
        )
    info = json.loads((folder / "signal_model.json").read_text())
    net = SD3Transformer2DModel.from_pretrained(str(folder / "transformer"), local_files_only=True, use_safetensors=True)
    vae = AutoencoderKL.from_pretrained(str(folder / "vae"), local_files_only=True, use_safetensors=True).eval().requires_grad_(False)
    te_folder: str | None = None
    src = folder / "text_encoder" / "source.json"
    if src.exists():
        te_folder = json.loads(src.read_text())["folder"]
        if not Path(te_folder).exists():
            te_folder = None  # moved machines: fall back to the embedded MiniLM
    elif (folder / "text_encoder" / "config.json").exists():
        te_folder = str(folder / "text_encoder")
    te = load_text_encoder(te_folder)
    return ModelBundle(net.to(device), vae.to(device), te, info, folder / "vae" / "diffusion_pytorch_model.safetensors")
