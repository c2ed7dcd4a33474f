"""Flow-GRPO: reward tuning with group-relative advantages on SDE rollouts (METHODS.md §2).

Each step draws ``prompts_per_step`` prompts from the pool and a group of ``group_size`` SDE
rollouts per prompt with the current policy (``sample/sde.py``: every step an exact Gaussian),
decodes and rewards them (``rewards.py``: the detector rule, a reward model, or a weighted mix),
and turns rewards into advantages normalised within each group (clipped). The images are then
split into ``minibatches``; each makes one optimizer update, its loss accumulated over the trained
denoising steps: PPO-clip on the ratio of the step's probability under the policy to that under
the rollout policy, plus β times the KL to the reference, ``||μ_θ - μ_ref||² / (2 s²)`` per step
(the reference is a frozen copy of the start, or under LoRA the network with its adapter off).
The first minibatch's ratio is 1 up to the arithmetic of a different batch size (same weights as
the rollout; in bf16 that difference can reach the clip range, see the README), later ones see
the policy the previous updates made, which is where the clip acts.

Logged per step: reward mean and std (and each named reward), advantage collapse (the share of
groups whose rewards are all equal, which teach nothing), KL, clip fraction, ratio spread.
Randomness depends only on the step number, so a resumed run repeats the same rollouts.

Focus (``focus`` > 0): a group whose rewards are all equal costs a full rollout and teaches nothing,
and on a base that already draws single objects nearly every such group does, while spatial prompts
rarely collapse. Each prompt belongs to a group of prompts (its ShapesEval category); a running
estimate per category of the share of its groups that taught something (an average over its last
~10 groups, starting at 1) moves that share of the drawing weight from the recipe's split towards
the categories still teaching: share_c = (1 - focus) · given_c + focus · informative_c / Σ informative.
The estimates are the method's checkpointed state, so a resumed run draws the same prompts. This
is DAPO's dynamic sampling in its cheap form: it re-weights before the rollout instead of drawing
again after it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from backend.models.family import PromptEmbeds
from backend.world.spec import Scene

from .method import Method, SamplesPrompts


@dataclass
class GRPOSettings:
    group_size: int = 8  # G images per prompt
    prompts_per_step: int = 4
    sde_steps: int = 10  # train with few SDE steps; evaluation samples with the ODE
    noise: float = 0.7  # a in σ_t = a sqrt(t / (1 - t))
    clip: float = 1e-4  # PPO clip range ε on the ratio (per-element-mean log-probs keep ratios near 1)
    kl: float = 0.04  # β of the KL to the reference
    adv_clip: float = 5.0
    cfg: float = 3.0  # guidance in rollouts and in the trained step (the policy is the guided sampler)
    minibatches: int = 2  # optimizer updates per rollout batch
    train_steps: int = 0  # denoising steps trained per update, drawn at random; 0 = all of them
    focus: float = 0.0  # share of the drawing weight that follows each category's informative-group rate


def group_advantages(rewards: torch.Tensor, group_size: int, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(A_i = (R_i - mean_g) / (std_g + 1e-8), clipped; a bool per group: all rewards equal)."""
    r = rewards.float().view(-1, group_size)
    std = r.std(dim=1, unbiased=False, keepdim=True)
    adv = ((r - r.mean(dim=1, keepdim=True)) / (std + 1e-8)).clamp(-clip, clip)
    return adv.view(-1), (std.view(-1) < 1e-6)


def ppo_clip_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, adv: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(-E[min(ρA, clip(ρ, 1-ε, 1+ε)A)], ρ)."""
    ratio = torch.exp(log_prob - old_log_prob)
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
    return loss.mean(), ratio


class FlowGRPO(SamplesPrompts, Method):
    name = "flow-grpo"

    def __init__(self, prompts: list[str], specs: list[Scene | None], rewards, settings: GRPOSettings, latent_hw: tuple[int, int],
                 seed: int, lora: bool, weights: list[float] | None = None, categories: list[str] | None = None):
        if len(prompts) < settings.prompts_per_step:
            raise ValueError(f"{len(prompts)} prompts in the pool, fewer than the {settings.prompts_per_step} drawn per step")
        if settings.group_size < 2:
            raise ValueError("a group needs at least 2 images: advantages are relative to the group")
        if settings.sde_steps < 2:
            raise ValueError("at least 2 SDE steps")
        if not 0.0 <= settings.focus <= 1.0:
            raise ValueError(f"focus is a share of the drawing weight, between 0 and 1 (got {settings.focus})")
        if categories is not None and len(categories) != len(prompts):
            raise ValueError(f"{len(categories)} categories for {len(prompts)} prompts")
        self.prompts, self.specs, self.rewards, self.s = prompts, specs, rewards, settings
        self.latent_hw, self.seed, self.lora = latent_hw, seed, lora
        # how often each prompt is drawn (e.g. 1 / its category's size, so every category weighs the same)
        self.weights = torch.tensor(weights if weights is not None else [1.0] * len(prompts), dtype=torch.float64)
        self.category_names = sorted(set(categories or ["all"]))
        self.category_of = torch.tensor([self.category_names.index(c) for c in (categories or ["all"] * len(prompts))])
        self._given = torch.zeros(len(self.category_names), dtype=torch.float64).index_add_(0, self.category_of, self.weights)
        # the running share of each category's groups whose rewards differed (1 = optimistic start)
        self.informative = {c: 1.0 for c in self.category_names}

    def category_shares(self) -> torch.Tensor:
        """Each category's share of the draws: its share of the given weights, moved by ``focus``
        towards its share of the informative-group rates."""
        given = self._given / self._given.sum()
        if self.s.focus == 0:
            return given
        inf = torch.tensor([self.informative[c] for c in self.category_names], dtype=torch.float64).clamp_min(1e-3)
        return (1 - self.s.focus) * given + self.s.focus * inf / inf.sum()

    def draw_weights(self) -> torch.Tensor:
        """Each prompt's drawing weight: the given weights, rescaled so each category's total is its share."""
        if self.s.focus == 0:
            return self.weights
        return self.weights / self._given[self.category_of] * self.category_shares()[self.category_of]

    def _learn_focus(self, rows: torch.Tensor, collapsed: torch.Tensor) -> None:
        """Update each drawn category's informative-group rate (a running mean over its last ~10 groups)."""
        rate = 0.1
        for prompt, flat in zip(rows[:: self.s.group_size].tolist(), collapsed.tolist(), strict=True):
            c = self.category_names[int(self.category_of[prompt])]
            self.informative[c] = (1 - rate) * self.informative[c] + rate * (0.0 if flat else 1.0)

    def state(self) -> dict:
        return {"informative": dict(self.informative)}

    def load_state(self, state: dict) -> None:
        self.informative.update({c: float(v) for c, v in state.get("informative", {}).items() if c in self.informative})

    @property
    def trained_steps(self) -> int:
        """Denoising steps each update accumulates over (the loop's gradient accumulation)."""
        return self.s.train_steps if 0 < self.s.train_steps <= self.s.sde_steps else self.s.sde_steps

    def setup(self, run) -> None:
        if not self.lora and self.s.kl > 0:
            self.reference = run.add_module("reference", copy.deepcopy(run.bundle.net).requires_grad_(False), trainable=False, saved="none")
        run.add_optimizer("main", ["model"])
        self.encode_pool(run)

    def rollout(self, run, gen: torch.Generator):
        """Draw the step's groups: (prompt rows, trajectory, rewards, per-reward parts, images)."""
        from backend.imaging import to_image
        from backend.sample.sde import sde_rollout

        s, bundle = self.s, run.bundle
        pick = torch.multinomial(self.draw_weights(), s.prompts_per_step, replacement=False, generator=gen)
        rows = pick.repeat_interleave(s.group_size)
        cond = self.embeds[rows].to(run.device)
        h, w = self.latent_hw
        noise = torch.randn((len(rows), bundle.vae.config.latent_channels, h, w), generator=gen).to(run.device)
        traj = sde_rollout(bundle, run.model, cond, noise, s.sde_steps, self._alpha(run), s.noise, s.cfg, gen)
        with torch.no_grad():
            images = [to_image(x) for x in bundle.decode_latents(traj.latents[-1])]
        prompts = [self.prompts[i] for i in rows.tolist()]
        total, parts = self.rewards(images, prompts, [self.specs[i] for i in rows.tolist()])
        return rows, traj, total, parts, images

    def _reference_mean(self, run, traj, k: int, idx: torch.Tensor, cond: PromptEmbeds) -> torch.Tensor:
        from backend.sample.sde import step_log_prob

        with torch.no_grad():
            if self.lora:
                from backend.models.lora import adapters_disabled

                with adapters_disabled(run.model):
                    return step_log_prob(run.bundle, run.model, traj, k, idx, cond, self.s.noise, self.s.cfg)[1]
            return step_log_prob(run.bundle, self.reference, traj, k, idx, cond, self.s.noise, self.s.cfg)[1]

    def step(self, run) -> None:
        from backend.sample.sde import step_log_prob

        s = self.s
        # rollouts depend only on the step (and the process: each rank draws its own): exact resume
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + run.step * 101 + run.accelerator.process_index)
        rows, traj, total, parts, _ = self.rollout(run, gen)
        adv, collapsed = group_advantages(total, s.group_size, s.adv_clip)
        run.log("grpo/reward_mean", total.mean())
        run.log("grpo/reward_std", total.std(unbiased=False))
        for name, value in parts.items():
            if len(parts) > 1 or name != "rule":
                run.log(f"grpo/reward/{name}", value.mean())
        run.log("grpo/advantage_collapse", collapsed.float().mean())
        if s.focus > 0:  # every rank learns from every rank's groups, so all hold (and checkpoint) the same rates
            gather = run.accelerator.gather
            self._learn_focus(gather(rows.to(run.device)).cpu(), gather(collapsed.to(run.device)).cpu())
            if len(self.category_names) > 1:
                for c, share in zip(self.category_names, self.category_shares().tolist(), strict=True):
                    run.log(f"grpo/focus/{c}", share)
        adv = adv.to(run.device)
        n = len(rows)
        run.count_images(n)
        order = torch.randperm(n, generator=gen)
        for mb in order.chunk(max(1, min(s.minibatches, n))):
            trained = torch.randperm(s.sde_steps, generator=gen)[: self.trained_steps].tolist()
            cond = self.embeds[rows[mb]].to(run.device)
            for k in trained:
                with run.accumulate():
                    with run.autocast():
                        log_prob, mean, std = step_log_prob(run.bundle, run.model, traj, k, mb.to(run.device), cond, s.noise, s.cfg)
                    pg, ratio = ppo_clip_loss(log_prob, traj.log_probs[k, mb.to(run.device)], adv[mb.to(run.device)], s.clip)
                    loss = pg
                    if s.kl > 0:
                        ref_mean = self._reference_mean(run, traj, k, mb.to(run.device), cond)
                        kl = ((mean - ref_mean) ** 2).mean(dim=tuple(range(1, mean.dim()))) / (2 * std**2)
                        loss = loss + s.kl * kl.mean()
                        run.log("grpo/kl", kl.detach().mean())
                    run.update("main", loss)
                run.log("loss", loss.detach())
                run.log("grpo/policy_loss", pg.detach())
                run.log("grpo/clip_fraction", ((ratio - 1).abs() > s.clip).float().mean())
                run.log("grpo/ratio_spread", (ratio - 1).abs().max().detach())
