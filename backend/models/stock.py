"""Real model families, loaded from local stock diffusers folders: SD3 / SD3.5 and FLUX.1.

A stock folder (``model_index.json`` naming ``StableDiffusion3Pipeline`` or ``FluxPipeline``) loads
into the same ``ModelBundle`` the embedded families use, so every stage (pretraining as continued
training, align, personalize, distill) trains it through the one loop. Three parts differ:

- **Prompts** are encoded by the stock pipeline's own ``encode_prompt`` (SD3: CLIP-L and CLIP-G
  penultimate states joined, padded to T5's width, T5's states appended, both CLIP projections as
  the pooled vector; FLUX: T5's states and CLIP's pooled output), so training, our sampler and the
  stock pipeline condition on exactly the same tensors. The pipeline is loaded with its text
  encoders only; nothing of it is reimplemented here.
- **The network call**: SD3's transformer is the MMDiT family's; FLUX packs 2x2 latent pixels into
  one token, passes position ids, takes t in [0, 1] and (FLUX.1-dev) an embedded guidance value.
- **Saving** writes the trained transformer and takes every other part (VAE, text encoders,
  tokenizers) from the folder it came from by hard link (a copy across file systems), so the
  result is again a stock folder that ``StableDiffusion3Pipeline.from_pretrained`` /
  ``FluxPipeline.from_pretrained`` load, beside our ``signal_model.json``.

Folders are checked before any weight is read (``check_stock_folder``): a missing part, weights
stored in a type we cannot train (fp8, int8 copies) or a component of another family is reported
with the fix, instead of failing inside a loader.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .mmdit import EmbeddedMMDiT
from .protocol import Family, PromptEmbeds, net_config, register_family
from .stock_folder import PARTS

TEXT_LENGTH = {"sd3": 256, "flux": 512}  # the pipelines' default T5 sequence lengths


class PipelineTextEncoder:
    """The stock pipeline's prompt encoding behind the ``TextEncoder`` interface: token states
    (B, L, D) at the pipeline's fixed length (never masked, as the pipeline does not mask), an
    all-ones mask and the pooled vector. The encoders live on the CPU and visit ``device`` only
    while encoding (the offload a GPU user expects: they are idle once captions are cached)."""

    def __init__(self, folder: Path, family: str, device: str = "cpu", max_length: int | None = None):
        from diffusers import FluxPipeline, StableDiffusion3Pipeline
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.folder = Path(folder)
        self.family = family
        self.max_length = max_length or TEXT_LENGTH[family]
        cls = StableDiffusion3Pipeline if family == "sd3" else FluxPipeline
        # bfloat16 where the encoders run on a GPU (T5-XXL is 19 GB in float32), float32 on a CPU
        dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        self.pipe = cls.from_pretrained(str(self.folder), transformer=None, vae=None, local_files_only=True, use_safetensors=True, dtype=dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.device = device
        self._dim: int | None = None

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.encode([""])[0].shape[-1])
        return self._dim

    @property
    def identity(self) -> str:
        """Stable id of the encoders (configs, weight files' names and sizes, length) for cache keys."""
        blob = {"family": self.family, "max_length": self.max_length}
        for part in PARTS[self.family]:
            if part.startswith(("text_encoder", "tokenizer")):
                sub = self.folder / part
                blob[part] = sorted((p.name, p.stat().st_size) for p in sub.iterdir() if p.is_file())
        return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]

    def _encoders(self) -> list[torch.nn.Module]:
        return [m for m in (self.pipe.text_encoder, self.pipe.text_encoder_2, getattr(self.pipe, "text_encoder_3", None)) if m is not None]

    @torch.no_grad()
    def encode(self, prompts: list[str], batch: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = torch.device(self.device)
        if device.type != "cpu":
            for m in self._encoders():
                m.to(device)
        states, pooled = [], []
        try:
            for i in range(0, len(prompts), batch):
                chunk = prompts[i : i + batch]
                if self.family == "sd3":
                    s, _, p, _ = self.pipe.encode_prompt(chunk, None, None, device=device, do_classifier_free_guidance=False,
                                                         max_sequence_length=self.max_length)
                else:
                    s, p, _ = self.pipe.encode_prompt(chunk, None, device=device, max_sequence_length=self.max_length)
                states.append(s.float().cpu())
                pooled.append(p.float().cpu())
        finally:
            if device.type != "cpu":
                for m in self._encoders():
                    m.to("cpu")
        s = torch.cat(states)
        return s, torch.ones(s.shape[:2], dtype=torch.long), torch.cat(pooled)


class SD3Family(EmbeddedMMDiT):
    """SD3 / SD3.5 from a local folder: the MMDiT family's network call on the stock transformer
    (prompts come at one fixed length, so no key mask is needed and diffusers' own processors run)."""

    name = "sd3"
    label = "SD3 / SD3.5 (local folder)"
    stock = True

    @property
    def pipeline_class(self) -> Any:
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline

    def build(self, **_: Any) -> torch.nn.Module:
        raise ValueError("an SD3 model is loaded from its local folder (model.init), not built from a preset")

    def prepare_loaded(self, net: torch.nn.Module) -> torch.nn.Module:
        return net

    def lora_targets(self) -> list[str]:
        return ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"]


class FluxFamily(Family):
    """FLUX.1 (dev or schnell) from a local folder: double-stream then single-stream blocks over 2x2
    packed latent tokens with rotary positions; FLUX.1-dev takes the guidance as an input
    (``guidance_embeds``) instead of running two branches."""

    name = "flux"
    subfolder = "transformer"
    label = "FLUX.1 (local folder)"
    stock = True
    TRAIN_GUIDANCE = 3.5  # what a guidance-distilled FLUX is told in training (diffusers' FLUX training scripts' default)

    @property
    def model_class(self) -> Any:  # type: ignore[override]
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel

    @property
    def pipeline_class(self) -> Any:
        from diffusers import FluxPipeline

        return FluxPipeline

    def build(self, **_: Any) -> torch.nn.Module:
        raise ValueError("a FLUX model is loaded from its local folder (model.init), not built from a preset")

    def embeds_guidance(self, net: torch.nn.Module) -> bool:
        return bool(net_config(net).guidance_embeds)

    def velocity(self, net: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, prompt: PromptEmbeds) -> torch.Tensor:
        b, c, h, w = x_t.shape
        if h % 2 or w % 2:
            raise ValueError(f"FLUX packs 2x2 latent pixels into a token: latent {h}x{w} must have even sides")
        tokens = x_t.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
        rows, cols = torch.meshgrid(torch.arange(h // 2), torch.arange(w // 2), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).to(x_t.device, x_t.dtype)
        txt_ids = torch.zeros(prompt.states.shape[1], 3, device=x_t.device, dtype=x_t.dtype)
        guidance = None
        if self.embeds_guidance(net):
            g = prompt.guidance if prompt.guidance is not None else self.TRAIN_GUIDANCE
            guidance = torch.full((b,), float(g), device=x_t.device, dtype=torch.float32)
        out = net(hidden_states=tokens, timestep=t.to(x_t.dtype), guidance=guidance, pooled_projections=prompt.pooled,
                  encoder_hidden_states=prompt.states, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return out.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

    def patch(self, net: torch.nn.Module) -> int:
        return 2

    def blocks(self, net: torch.nn.Module) -> list[torch.nn.Module]:
        return list(net.transformer_blocks) + list(net.single_transformer_blocks)

    def repa_point(self, net: torch.nn.Module, block: int) -> tuple[torch.nn.Module, int]:
        blocks = list(net.transformer_blocks)
        if not 0 <= block < len(blocks):
            raise ValueError(f"repa.block {block} is out of range: the FLUX network has {len(blocks)} double-stream blocks")
        cfg = net_config(net)
        return blocks[block], int(cfg.num_attention_heads * cfg.attention_head_dim)

    def repa_tokens(self, output: Any) -> torch.Tensor:
        return output[1]  # (encoder_hidden_states, hidden_states)

    def repa_grid(self, net: torch.nn.Module, block: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
        return latent_hw[0] // 2, latent_hw[1] // 2

    def lora_targets(self) -> list[str]:
        return ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"]


register_family(SD3Family())
register_family(FluxFamily())


def scheduler_shift(folder: Path) -> dict[str, Any]:
    """The shift rule of a stock folder's ``FlowMatchEulerDiscreteScheduler`` in our terms (fixed
    alpha for SD3, FLUX's dynamic rule), so our sampler draws on the pipeline's own schedule."""
    cfg = json.loads((Path(folder) / "scheduler" / "scheduler_config.json").read_text())
    if cfg.get("use_dynamic_shifting"):
        return {"kind": "dynamic", "base_shift": float(cfg.get("base_shift", 0.5)), "max_shift": float(cfg.get("max_shift", 1.15)),
                "base_tokens": int(cfg.get("base_image_seq_len", 256)), "max_tokens": int(cfg.get("max_image_seq_len", 4096))}
    return {"kind": "fixed", "alpha": float(cfg.get("shift", 1.0))}


def stock_sigmas(folder: Path, steps: int, alpha: float, shift: dict[str, Any]) -> torch.Tensor:
    """The steps + 1 times (1 to 0) the stock pipeline visits at this shift, from the folder's
    scheduler set up as the pipeline does (a fixed shift, SD3: the scheduler's default spacing at
    ``alpha``; dynamic, FLUX: sigmas 1 .. 1/steps with mu = log ``alpha``), so our sampler draws the
    pipeline's image. ``shift`` is the model's rule (what ``write_scheduler`` will save)."""
    import math

    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    cfg = json.loads((Path(folder) / "scheduler" / "scheduler_config.json").read_text())
    if shift.get("kind") == "dynamic":
        sched = FlowMatchEulerDiscreteScheduler.from_config({**cfg, "use_dynamic_shifting": True})
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=math.log(alpha))
    else:
        sched = FlowMatchEulerDiscreteScheduler.from_config({**cfg, "use_dynamic_shifting": False, "shift": float(alpha)})
        sched.set_timesteps(steps)
    return sched.sigmas.float()


def write_scheduler(source: Path, target: Path, shift: dict[str, Any]) -> None:
    """The source's scheduler config with the shift rule the model was trained with."""
    cfg = json.loads((Path(source) / "scheduler" / "scheduler_config.json").read_text())
    kind = shift.get("kind", "none")
    if kind == "dynamic":
        cfg.update({"use_dynamic_shifting": True, "base_shift": shift.get("base_shift", 0.5), "max_shift": shift.get("max_shift", 1.15),
                    "base_image_seq_len": shift.get("base_tokens", 256), "max_image_seq_len": shift.get("max_tokens", 4096)})
    elif kind in ("fixed", "none"):
        cfg.update({"use_dynamic_shifting": False, "shift": float(shift.get("alpha", 1.0)) if kind == "fixed" else 1.0})
    else:
        raise ValueError(f"a stock pipeline samples with a fixed or a dynamic shift, not {kind!r}")
    (target / "scheduler").mkdir(parents=True, exist_ok=True)
    (target / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def link_tree(source: Path, target: Path) -> None:
    """``source`` into ``target`` file by file: hard links (no copy of gigabytes of encoders), a copy
    where the two lie on different file systems."""
    for path in source.rglob("*"):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:
            shutil.copy2(path, dest)


def save_stock_parts(source: Path, tmp: Path, family: str, shift: dict[str, Any]) -> None:
    """Everything but the trained transformer, from the folder the model came from."""
    shutil.copy2(source / "model_index.json", tmp / "model_index.json")
    for part in PARTS[family]:
        if part not in ("transformer", "scheduler"):
            link_tree(source / part, tmp / part)
    write_scheduler(source, tmp, shift)
