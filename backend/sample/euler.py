"""Euler ODE sampling with classifier-free guidance on the shifted schedule (METHODS.md §0), and the
consistency sampler of a consistency-distilled student (jump to x0, re-noise to the next point), and
SDEdit's redraw of a clean latent from part-way noise on the same schedule.

Noise comes from one generator per seed, so the same prompt, seed and settings give the same
image on any batch size: the playground can compare two checkpoints fairly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from backend.imaging import to_image
from backend.models.family import ModelBundle, PromptEmbeds


@dataclass
class SampleSettings:
    width: int = 64
    height: int = 64
    steps: int = 20
    cfg: float = 3.0
    alpha: float | None = None  # None: the model's own shift rule for this size
    kind: str = "euler"  # "euler": the ODE; "consistency": x0 = x_t - t v at each point, re-noised to the next


def settings_from(sampler, **override) -> SampleSettings:
    """A recipe's ``SamplerSettings`` as the sampler's settings (fields overridden by keyword)."""
    base = {"width": sampler.width, "height": sampler.height, "steps": sampler.steps, "cfg": sampler.cfg, "alpha": sampler.shift,
            "kind": sampler.kind}
    return SampleSettings(**{**base, **override})


def initial_noise(seeds: list[int], channels: int, h: int, w: int) -> torch.Tensor:
    return torch.cat([torch.randn(1, channels, h, w, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@torch.no_grad()
def sample_latents(
    bundle: ModelBundle,
    cond: PromptEmbeds,
    seeds: list[int],
    settings: SampleSettings,
    net: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Integrate dx/dt = v from t = 1 to 0 for each (prompt embedding, seed) pair."""
    net = net if net is not None else bundle.net
    device = next(net.parameters()).device
    f = bundle.vae_factor
    h, w = settings.height // f, settings.width // f
    x = initial_noise(seeds, bundle.vae.config.latent_channels, h, w).to(device)
    alpha = settings.alpha if settings.alpha is not None else bundle.default_alpha(settings.width, settings.height)
    ts = bundle.sampling_schedule(settings.steps, alpha).to(device)
    cond = cond.to(device)
    empty = bundle.empty_prompt().to(device) if settings.cfg != 1.0 else None
    # a network whose frozen weights sit in bf16 (a LoRA run on a real model) runs under autocast, as it trains
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=any(p.dtype == torch.bfloat16 for p in net.parameters()))
    with autocast:
        return _integrate(bundle, net, x, ts, cond, empty, seeds, settings)


@torch.no_grad()
def redraw_latents(bundle: ModelBundle, z: torch.Tensor, cond: PromptEmbeds, noise: torch.Tensor, t_start: float,
                   settings: SampleSettings) -> torch.Tensor:
    """SDEdit: clean latents ``z`` noised to the first point of the schedule at or below ``t_start`` and
    integrated from there to t = 0 for ``cond``, on the same schedule and guidance as a full draw."""
    alpha = settings.alpha if settings.alpha is not None else bundle.default_alpha(settings.width, settings.height)
    ts = bundle.sampling_schedule(settings.steps, alpha).to(z.device)
    first = int((ts > t_start + 1e-6).sum())
    x = (1 - ts[first]) * z + ts[first] * noise.to(z.device, z.dtype)
    empty = bundle.empty_prompt().to(z.device) if settings.cfg != 1.0 else None
    return _integrate(bundle, bundle.net, x, ts, cond.to(z.device), empty, [], settings, start=first)


def _integrate(bundle: ModelBundle, net: torch.nn.Module, x: torch.Tensor, ts: torch.Tensor, cond: PromptEmbeds, empty: PromptEmbeds | None,
               seeds: list[int], settings: SampleSettings, start: int = 0) -> torch.Tensor:
    device, n = x.device, x.shape[0]
    for i in range(start, settings.steps):
        t, t_next = ts[i], ts[i + 1]
        v = bundle.guided_velocity(x, t.expand(n), cond, empty, settings.cfg, net).float()
        if settings.kind == "consistency":
            x0 = x - t * v  # the consistency function f(x_t, t) = x_t - t v: the trajectory's end
            x = x0 if i == settings.steps - 1 else (1 - t_next) * x0 + t_next * renoise(seeds, i + 1, x.shape[1:]).to(device, x.dtype)
        else:
            x = x + (t_next - t) * v
    return x


def renoise(seeds: list[int], step: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Fresh noise for re-noising at ``step`` of the consistency sampler, one generator per seed."""
    return torch.cat([torch.randn(1, *shape, generator=torch.Generator().manual_seed(int(s) * 7919 + 104_729 * step)) for s in seeds])


@torch.no_grad()
def generate(
    bundle: ModelBundle,
    prompts: list[str],
    seeds: list[int],
    settings: SampleSettings,
    net: torch.nn.Module | None = None,
    batch: int = 32,
) -> list[Image.Image]:
    """One image per (prompt, seed) pair, in order.

    Prompts are batched by token count, so each image depends only on its own prompt and seed,
    never on which other prompts shared its batch."""
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    embeds = bundle.encode_prompts(prompts)
    groups: dict[int, list[int]] = {}
    for i, length in enumerate(embeds.lengths.tolist()):
        groups.setdefault(int(length), []).append(i)
    images: list[Image.Image | None] = [None] * len(prompts)
    for members in groups.values():
        for k in range(0, len(members), batch):
            idx = members[k : k + batch]
            z = sample_latents(bundle, embeds[torch.tensor(idx)], [seeds[i] for i in idx], settings, net)
            for i, xi in zip(idx, bundle.decode_latents(z)):
                images[i] = to_image(xi)
    return images  # type: ignore[return-value]
