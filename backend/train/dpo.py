"""Diffusion-DPO in flow form: learn from rated pairs without a reward model.

For a pair (prompt c, winner x_w, loser x_l) one timestep t and one noise eps are drawn for both
images; the per-sample flow errors of the policy and of the frozen reference,
``e(x) = mean ||v(x_t, t, c) - (eps - x0)||²``, give
``L = -log σ(-(β/2) [(e_θ(x_w) - e_θ(x_l)) - (e_ref(x_w) - e_ref(x_l))])`` (METHODS.md §2).
The error is a *mean* over latent elements, so β is on that scale (Flow-GRPO's SD3 DPO script
uses 100 with a mean; SD1.5's 2500-5000 go with a per-element sum of a different size).
The implicit accuracy is the share of pairs with a positive argument; the reward margin is the
argument itself. Under LoRA the reference is the network with its adapter switched off (no
second copy); otherwise a frozen copy of the starting weights, never checkpointed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backend.models.family import PromptEmbeds

from .method import Method


@dataclass
class RatedPairs:
    """Winners' and losers' clean latents with their prompts' embeddings, one row per decisive judgement."""

    winners: torch.Tensor  # (N, C, h, w)
    losers: torch.Tensor
    states: torch.Tensor  # (N, L, D)
    pooled: torch.Tensor  # (N, D)
    lengths: torch.Tensor  # (N,)

    def __len__(self) -> int:
        return self.winners.shape[0]

    def winner_batches(self, batch_size: int, seed: int, size: tuple[int, int], alpha: float, empty: PromptEmbeds | None = None,
                       dropout: float = 0.0):
        """The loop's ``(step, micro, rank) -> Batch`` over the winners alone: SFT on what the ratings
        preferred; with ``empty`` a ``dropout`` share of captions is blanked, as in pretraining, so the
        unconditional branch guidance uses keeps training too."""
        from .objectives.base import Batch

        def batches(step: int, micro: int = 0, rank: int = 0) -> Batch:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + micro * 31 + rank)
            idx = torch.randint(len(self), (min(batch_size, len(self)),), generator=gen)
            states, pooled, lengths = self.states[idx].clone(), self.pooled[idx].clone(), self.lengths[idx].clone()
            if empty is not None and dropout > 0:
                drop = torch.rand(len(idx), generator=gen) < dropout
                e = empty.to(torch.device("cpu"))
                states[drop] = 0
                states[drop, : e.states.shape[1]] = e.states[0].to(states.dtype)[: states.shape[1]]
                pooled[drop] = e.pooled[0].to(pooled.dtype)
                lengths[drop] = e.lengths[0]
            return Batch(self.winners[idx], PromptEmbeds(states, pooled, lengths), size[0], size[1], alpha, gen)

        return batches

    def take(self, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, PromptEmbeds]:
        prompt = PromptEmbeds(self.states[idx].to(device), self.pooled[idx].to(device), self.lengths[idx].to(device))
        return self.winners[idx].to(device), self.losers[idx].to(device), prompt


def flow_errors(bundle, net, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, prompt: PromptEmbeds) -> torch.Tensor:
    """Per-sample mean squared error of the velocity at x_t = (1-t) x0 + t eps."""
    tt = t.view(-1, 1, 1, 1).to(x0.dtype)
    v = bundle.velocity((1 - tt) * x0 + tt * eps, t, prompt, net)
    return ((v.float() - (eps - x0).float()) ** 2).mean(dim=(1, 2, 3))


def dpo_terms(e_w: torch.Tensor, e_l: torch.Tensor, r_w: torch.Tensor, r_l: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss per pair, argument of σ): the argument is positive when the policy lowered the winner's
    error relative to the reference more than the loser's."""
    arg = -0.5 * beta * ((e_w - e_l) - (r_w - r_l))
    return -F.logsigmoid(arg), arg


class DiffusionDPO(Method):
    name = "diffusion-dpo"

    def __init__(self, train: RatedPairs, held: RatedPairs, beta: float, batch_size: int, seed: int, lora: bool):
        self.train, self.held, self.beta, self.batch_size, self.seed, self.lora = train, held, beta, batch_size, seed, lora
        self.last: dict[str, float] = {}

    def setup(self, run) -> None:
        if not self.lora:
            self.reference = run.add_module("reference", copy.deepcopy(run.bundle.net).requires_grad_(False), trainable=False, saved="none")
        run.add_optimizer("main", ["model"])

    def _t_eps(self, n: int, shape: tuple[int, ...], gen: torch.Generator, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        from backend.flow.timesteps import shift

        t = shift(torch.rand(n, generator=gen), alpha).clamp(1e-3, 1 - 1e-3)
        return t, torch.randn((n, *shape), generator=gen)

    def _reference_errors(self, run, net, x_w, x_l, eps, t, prompt) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            if self.lora:
                from backend.models.lora import adapters_disabled

                with adapters_disabled(net):
                    return flow_errors(run.bundle, net, x_w, eps, t, prompt), flow_errors(run.bundle, net, x_l, eps, t, prompt)
            return flow_errors(run.bundle, self.reference, x_w, eps, t, prompt), flow_errors(run.bundle, self.reference, x_l, eps, t, prompt)

    def step(self, run) -> None:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + run.step)  # the batch depends only on the step: exact resume
        idx = torch.randint(len(self.train), (min(self.batch_size, len(self.train)),), generator=gen)
        x_w, x_l, prompt = self.train.take(idx, run.device)
        h, w = x_w.shape[-2:]
        t, eps = self._t_eps(len(idx), tuple(x_w.shape[1:]), gen, self.alpha(run, h, w))
        t, eps = t.to(run.device), eps.to(run.device, x_w.dtype)
        r_w, r_l = self._reference_errors(run, run.model, x_w, x_l, eps, t, prompt)
        with run.autocast():
            e_w = flow_errors(run.bundle, run.model, x_w, eps, t, prompt)
            e_l = flow_errors(run.bundle, run.model, x_l, eps, t, prompt)
        loss, arg = dpo_terms(e_w, e_l, r_w, r_l, self.beta)
        loss = loss.mean()
        run.update("main", loss)
        run.log("loss", loss.detach())
        run.log("dpo/implicit_accuracy", (arg > 0).float().mean())
        run.log("dpo/reward_margin", arg.detach().mean())
        run.log("dpo/winner_error_vs_ref", (e_w - r_w).detach().mean())
        run.log("dpo/loser_error_vs_ref", (e_l - r_l).detach().mean())

    @staticmethod
    def alpha(run, h: int, w: int) -> float:
        """The model's own shift at the images' size (latent h x w)."""
        px = run.bundle.vae_factor
        return run.bundle.default_alpha(w * px, h * px)

    def evaluate(self, run, step: int, net: torch.nn.Module) -> dict[str, float]:
        self.last = held_out_dpo(run, net, self.held, self.beta, self.lora, self.reference if not self.lora else None, self.seed)
        return {f"dpo/heldout_{k}": v for k, v in self.last.items()}


@torch.no_grad()
def held_out_dpo(run, net, held: RatedPairs, beta: float, lora: bool, reference, seed: int, draws: int = 4) -> dict[str, float]:
    """Implicit accuracy and loss on held-out pairs, at fixed draws of t and eps (the same at every evaluation)."""
    gen = torch.Generator().manual_seed(seed + 99)
    losses, accs = [], []
    idx = torch.arange(len(held))
    for _ in range(draws):
        for start in range(0, len(held), 64):
            part = idx[start: start + 64]
            x_w, x_l, prompt = held.take(part, run.device)
            h, w = x_w.shape[-2:]
            from backend.flow.timesteps import shift

            t = shift(torch.rand(len(part), generator=gen), DiffusionDPO.alpha(run, h, w)).clamp(1e-3, 1 - 1e-3).to(run.device)
            eps = torch.randn(tuple(x_w.shape), generator=gen).to(run.device, x_w.dtype)
            e_w, e_l = flow_errors(run.bundle, net, x_w, eps, t, prompt), flow_errors(run.bundle, net, x_l, eps, t, prompt)
            if lora:
                from backend.models.lora import adapters_disabled

                with adapters_disabled(net):
                    r_w, r_l = flow_errors(run.bundle, net, x_w, eps, t, prompt), flow_errors(run.bundle, net, x_l, eps, t, prompt)
            else:
                r_w, r_l = flow_errors(run.bundle, reference, x_w, eps, t, prompt), flow_errors(run.bundle, reference, x_l, eps, t, prompt)
            loss, arg = dpo_terms(e_w, e_l, r_w, r_l, beta)
            losses.append(loss.cpu())
            accs.append((arg > 0).float().cpu())
    return {"loss": float(torch.cat(losses).mean()), "implicit_accuracy": float(torch.cat(accs).mean())}
