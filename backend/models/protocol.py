"""The family protocol: what every velocity network family implements, and the text conditioning
it is called with. Kept apart from ``family.py`` (the bundle, loading and saving) so the family
modules (``mmdit.py``, ``unet.py``) import the protocol without importing the code that imports them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


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
    and the text tokens would otherwise cost more than the image tokens. What padding remains is
    masked (``key_mask``), so a prompt means the same whatever it is batched with."""

    states: torch.Tensor
    pooled: torch.Tensor
    lengths: torch.Tensor | None = None
    guidance: float | None = None  # what a guidance-distilled network (FLUX.1-dev) is told; None = its training value

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PromptEmbeds:
        return PromptEmbeds(to_device(self.states, device, dtype), to_device(self.pooled, device, dtype), self.lengths, self.guidance)

    def __getitem__(self, idx: Any) -> PromptEmbeds:
        return PromptEmbeds(self.states[idx], self.pooled[idx], None if self.lengths is None else self.lengths[idx], self.guidance)

    def expand(self, n: int) -> PromptEmbeds:
        """One prompt's row as ``n`` rows (a view, no copy)."""
        return PromptEmbeds(self.states.expand(n, *self.states.shape[1:]), self.pooled.expand(n, *self.pooled.shape[1:]),
                            None if self.lengths is None else self.lengths.expand(n), self.guidance)

    def trimmed(self) -> PromptEmbeds:
        if self.lengths is None or len(self.lengths) == 0:
            return self
        return PromptEmbeds(self.states[:, : int(self.lengths.max())], self.pooled, self.lengths, self.guidance)

    def key_mask(self) -> torch.Tensor | None:
        """(B, L) True on real tokens of ``states``; None when no row is padded (the fast path)."""
        if self.lengths is None:
            return None
        length = self.states.shape[1]
        lengths = self.lengths.to(self.states.device)
        if bool((lengths >= length).all()):
            return None
        return torch.arange(length, device=self.states.device)[None, :] < lengths[:, None]

    @staticmethod
    def cat(parts: list[PromptEmbeds]) -> PromptEmbeds:
        """Rows of several embeddings in one; sequences of different lengths are padded with zeros
        that the key mask hides (a part without lengths counts every token of its own as real)."""
        longest = max(p.states.shape[1] for p in parts)
        if all(p.states.shape[1] == longest for p in parts):
            lengths = None if any(p.lengths is None for p in parts) else torch.cat([p.lengths for p in parts])
            return PromptEmbeds(torch.cat([p.states for p in parts]), torch.cat([p.pooled for p in parts]), lengths, parts[0].guidance)
        states = [torch.nn.functional.pad(p.states, (0, 0, 0, longest - p.states.shape[1])) for p in parts]
        lengths = torch.cat([p.lengths.to(torch.long) if p.lengths is not None
                             else torch.full((p.states.shape[0],), p.states.shape[1], dtype=torch.long) for p in parts])
        return PromptEmbeds(torch.cat(states), torch.cat([p.pooled for p in parts]), lengths, parts[0].guidance)


class Family:
    """How to build, call, save and hook one kind of velocity network. Subclasses live in their own
    module (``mmdit.py``, ``unet.py``) and call ``register_family`` on import."""

    name = "family"
    subfolder = "transformer"  # where the network lives in a saved model folder
    model_class: Any = None  # the diffusers class that loads it
    label = ""
    stock = False  # loaded from a stock diffusers pipeline folder (SD3, FLUX) rather than built and saved by us

    def build(self, *, preset: str, text_dim: int, latent_channels: int, **size: Any) -> torch.nn.Module:
        raise NotImplementedError

    def prepare_loaded(self, net: torch.nn.Module) -> torch.nn.Module:
        """Anything a loaded network needs before use (e.g. attention processors)."""
        return net

    def velocity(self, net: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, prompt: PromptEmbeds) -> torch.Tensor:
        raise NotImplementedError

    def patch(self, net: torch.nn.Module) -> int:
        """Latent pixels per token side (what the dynamic shift counts as a token)."""
        return 1

    def blocks(self, net: torch.nn.Module) -> list[torch.nn.Module]:
        """The repeated blocks, compiled one by one on a GPU."""
        return []

    def repa_point(self, net: torch.nn.Module, block: int) -> tuple[torch.nn.Module, int]:
        """(module whose output REPA aligns, feature width)."""
        raise NotImplementedError

    def repa_tokens(self, output: Any) -> torch.Tensor:
        """The hooked module's output -> image features (B, N, D) in row-major grid order."""
        raise NotImplementedError

    def repa_grid(self, net: torch.nn.Module, block: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of the features ``repa_tokens`` gives at a latent size."""
        raise NotImplementedError

    def lora_targets(self) -> list[str]:
        """Module names LoRA adapts by default."""
        return []

    def embeds_guidance(self, net: torch.nn.Module) -> bool:
        """True for a guidance-distilled network (FLUX.1-dev): it takes the guidance scale as an input,
        and the sampler runs one branch instead of classifier-free guidance's two."""
        return False


def net_config(net: torch.nn.Module) -> Any:
    """A diffusers network's config, through a DDP wrapper too."""
    return getattr(net, "module", net).config


_FAMILIES: dict[str, Family] = {}



def register_family(family: Family) -> None:
    _FAMILIES[family.name] = family
