"""What a training method plugs into the one loop: its networks, its optimizers, the work of a step.

Pretraining sums a few losses into one backward pass; other methods cannot: DMD updates a
fake-score network several times per generator update, ADD alternates a discriminator and a
generator, consistency distillation moves an EMA target after every step, Flow-GRPO samples a
rollout buffer and updates on it several times, DPO compares against a frozen reference. A
``Method`` declares what it holds (``setup``) and does one step (``step``) through the ``Run``
the loop hands it; the loop keeps what is common to all of them: devices and precision
(accelerate), clipping per optimizer, LR schedules, the sampling EMA, exact checkpoints of every
module, optimizer, scheduler and RNG, control flags, logging, previews and evaluation.
``ObjectivesMethod`` is pretraining's method: objectives summed into one update of the network.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch

from .objectives.base import Batch, Objective, TrainContext


class Run(Protocol):
    """What the loop offers a method during ``setup`` and ``step`` (implemented by ``Trainer``)."""

    step: int
    device: torch.device
    model: torch.nn.Module  # the bundle's network, prepared (possibly DDP-wrapped)

    def add_module(self, name: str, module: torch.nn.Module, *, trainable: bool = True, saved: str = "all") -> torch.nn.Module: ...
    def add_optimizer(self, name: str, modules: list[str], *, lr: float | None = None, clip: float | None = None) -> None: ...
    def module(self, name: str) -> torch.nn.Module: ...
    def batch(self, micro: int = 0) -> Batch: ...
    def update(self, optimizer: str, loss: torch.Tensor) -> None: ...
    def accumulate(self) -> AbstractContextManager: ...
    def autocast(self) -> AbstractContextManager: ...
    def log(self, key: str, value: float | torch.Tensor) -> None: ...
    def log_by_t(self, t: torch.Tensor, per_sample: torch.Tensor) -> None: ...
    def count_images(self, batch: Batch | int) -> None: ...


class Method:
    """A training method on the one loop. ``setup`` declares extra modules and optimizers (the
    bundle's network is always there as ``model``, with optimizer ``main`` unless the method
    declares its own); ``step`` does one optimizer step's work and calls ``run.update`` for every
    update it makes; ``after_step`` runs once the step is done (e.g. to move a target network)."""

    name = "method"

    def setup(self, run: Run) -> None:
        run.add_optimizer("main", ["model"])

    def step(self, run: Run) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def after_step(self, run: Run) -> None:
        pass

    def evaluate(self, run: Run, step: int, net: torch.nn.Module) -> dict[str, float]:
        """Figures of the method's own at each evaluation (e.g. held-out accuracy), logged as metrics
        beside those of the run's evaluator; ``net`` carries the sampling weights (EMA when on)."""
        return {}

    def state(self) -> dict[str, Any]:
        """JSON-able state kept in checkpoints (tensors go in modules)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


class ObjectivesMethod(Method):
    """Objectives summed into one backward pass per micro-batch, gradients accumulated over the
    recipe's micro-batches, one update of the network and every objective's extra modules."""

    name = "objectives"

    def __init__(self, objectives: list[Objective]):
        self.objectives = objectives

    def setup(self, run: Run) -> None:
        extras = {name: m for obj in self.objectives for name, m in obj.trainable_modules().items()}
        prepared = {name: run.add_module(name, m) for name, m in extras.items()}
        for obj in self.objectives:
            obj.use_modules(prepared)
        run.add_optimizer("main", ["model", *extras])

    def step(self, run: Run) -> None:
        ctx = TrainContext(run.bundle, run.model, run.step, run.device)  # type: ignore[attr-defined]
        for micro in range(run.grad_accum):  # type: ignore[attr-defined]
            batch = run.batch(micro)
            with run.accumulate():
                with run.autocast():
                    total: Any = 0.0
                    for obj in self.objectives:
                        out = obj.loss(ctx, batch)
                        total = total + out.loss
                        for k, v in out.logs.items():
                            run.log(k, v)
                        if out.t is not None and out.per_sample is not None:
                            run.log_by_t(out.t, out.per_sample)
                run.update("main", total)
            run.log("loss", total.detach())
            run.count_images(batch)

    def state(self) -> dict[str, Any]:
        return {"objectives": {o.name: o.state() for o in self.objectives}}

    def load_state(self, state: dict[str, Any]) -> None:
        for obj in self.objectives:
            obj.load_state(state.get("objectives", {}).get(obj.name, {}))


class SamplesPrompts:
    """For methods that sample from the policy at one size (Flow-GRPO, ReFL): the prompt pool's
    embeddings, encoded once and kept on the CPU, and the model's own shift at that size."""

    prompts: list[str]
    latent_hw: tuple[int, int]  # (h, w) of the latents

    def encode_pool(self, run: Run) -> None:
        with torch.no_grad():
            self.embeds = run.bundle.encode_prompts(self.prompts).to(torch.device("cpu"))  # type: ignore[attr-defined]

    def _alpha(self, run: Run) -> float:
        h, w = self.latent_hw
        f = run.bundle.vae_factor  # type: ignore[attr-defined]
        return run.bundle.default_alpha(w * f, h * f)  # type: ignore[attr-defined]
