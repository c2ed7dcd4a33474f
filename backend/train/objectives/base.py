"""What every objective plugs into the one training loop.

An objective is a small class: which extra modules it trains, and the loss of a batch. The
loop owns everything else (optimizer, precision, accumulation, EMA, checkpoints, logging), so
adding a method means adding a class, never copying the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from backend.models.family import ModelBundle, PromptEmbeds


@dataclass
class Batch:
    """One micro-batch at one bucket, with the generator that makes its randomness reproducible."""

    latents: torch.Tensor  # clean normalised latents x0, (B, C, h, w)
    prompt: PromptEmbeds
    width: int  # bucket size in pixels
    height: int
    alpha: float  # resolution shift for this bucket
    generator: torch.Generator
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. encoder features, categories
    # data-parallel runs: this micro-batch is rows rank*B .. (rank+1)*B of one draw made for the whole
    # step (every process draws it alike from ``step_generator`` and keeps its rows), so N processes
    # of batch B train on exactly what one process of batch N*B would
    share: tuple[int, int] = (0, 1)  # (rank, processes)
    step_generator: torch.Generator | None = None

    def own_rows(self, draw: Any) -> torch.Tensor:
        """This process's rows of ``draw(n)``, a tensor of n = B x processes rows drawn for the whole
        step from the step-wide generator (the batch's own generator when there is none)."""
        rank, world = self.share
        n = self.latents.shape[0]
        return draw(n * world, self.step_generator or self.generator)[rank * n : (rank + 1) * n]


@dataclass
class ObjectiveOutput:
    """A loss and what to log. Log values may be detached tensors: the loop reads them only on a
    log step, so an objective never forces the GPU to drain its queue every step."""

    loss: torch.Tensor
    logs: dict[str, float | torch.Tensor] = field(default_factory=dict)
    t: torch.Tensor | None = None  # per-sample timesteps, for loss-by-t logging
    per_sample: torch.Tensor | None = None


@dataclass
class TrainContext:
    """What an objective may use: the model bundle, the network being trained, the step."""

    bundle: ModelBundle
    net: torch.nn.Module  # possibly wrapped (DDP); call through bundle.velocity(..., net)
    step: int
    device: torch.device


class Objective:
    name = "objective"

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """Extra modules this objective trains (saved in checkpoints under their names)."""
        return {}

    def use_modules(self, prepared: dict[str, torch.nn.Module]) -> None:
        """Called by the loop with the prepared (possibly DDP-wrapped) versions of those modules."""

    def loss(self, ctx: TrainContext, batch: Batch) -> ObjectiveOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass
