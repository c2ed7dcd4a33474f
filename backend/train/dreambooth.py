"""DreamBooth with prior preservation, on the one loop (METHODS.md §3).

Every step trains the flow loss on a batch of the subject's images captioned with the identifier
("a sks circle") and, with the prior on, ``λ`` times a prior term that holds the class where the
base had it: either the flow loss on class images the frozen base drew for the class prompt
("a circle"), or, without class images, the frozen base's own velocity for the class prompt at
the subject's noisy latents as the target. Under LoRA the frozen base is the network with its
adapter switched off; a full fine-tune keeps a frozen copy (never checkpointed). Batches depend on
the step only, so a resumed run continues the same trajectory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from backend.models.family import PromptEmbeds

from .method import Method
from .objectives.base import Batch, TrainContext
from .objectives.flow import FlowMatching


@dataclass
class CaptionedLatents:
    """Clean latents that share one caption (the subject's images, or the class images)."""

    latents: torch.Tensor  # (N, C, h, w)
    prompt: PromptEmbeds  # one row

    def __len__(self) -> int:
        return self.latents.shape[0]

    def batch(self, idx: torch.Tensor, size: tuple[int, int], alpha: float, gen: torch.Generator) -> Batch:
        n = len(idx)
        p = self.prompt
        prompt = p.expand(n)
        return Batch(self.latents[idx], prompt, size[0], size[1], alpha, gen)


class DreamBooth(Method):
    name = "dreambooth"

    def __init__(self, instance: CaptionedLatents, prior: str, weight: float, batch_size: int, seed: int, lora: bool,
                 class_set: CaptionedLatents | None = None, class_prompt: PromptEmbeds | None = None):
        if prior == "class_images" and class_set is None:
            raise ValueError("prior 'class_images' needs the class images")
        if prior == "frozen" and class_prompt is None:
            raise ValueError("prior 'frozen' needs the class prompt's embedding")
        self.instance, self.prior, self.weight = instance, prior, weight
        self.class_set, self.class_prompt = class_set, class_prompt
        self.batch_size, self.seed, self.lora = batch_size, seed, lora
        self.flow = FlowMatching()
        self.reference: torch.nn.Module | None = None

    def setup(self, run) -> None:
        if self.prior == "frozen" and not self.lora:
            self.reference = run.add_module("reference", copy.deepcopy(run.bundle.net).requires_grad_(False), trainable=False, saved="none")
        run.add_optimizer("main", ["model"])

    def _size_alpha(self, run) -> tuple[tuple[int, int], float]:
        h, w = self.instance.latents.shape[-2:]
        px = run.bundle.vae_factor
        return (w * px, h * px), run.bundle.default_alpha(w * px, h * px)

    def _frozen_prior(self, run, x0: torch.Tensor, gen: torch.Generator, alpha: float) -> torch.Tensor:
        """Mean squared distance to the frozen base's velocity for the class prompt at the same noisy latents."""
        from backend.flow.timesteps import shift
        from backend.models.family import to_device

        n = x0.shape[0]
        t = to_device(shift(torch.rand(n, generator=gen), alpha).clamp(1e-3, 1 - 1e-3), x0.device)
        eps = to_device(torch.randn(x0.shape, generator=gen), x0.device, x0.dtype)
        tt = t.view(-1, 1, 1, 1).to(x0.dtype)
        x_t = (1 - tt) * x0 + tt * eps
        cp = self.class_prompt.to(x0.device)  # type: ignore[union-attr]
        prompt = cp.expand(n)
        with torch.no_grad():
            if self.lora:
                from backend.models.lora import adapters_disabled

                with adapters_disabled(run.model):
                    target = run.bundle.velocity(x_t, t, prompt, run.model)
            else:
                target = run.bundle.velocity(x_t, t, prompt, self.reference)
        v = run.bundle.velocity(x_t, t, prompt, run.model)
        return ((v.float() - target.float()) ** 2).mean()

    def step(self, run) -> None:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + run.step)  # depends on the step only: exact resume
        size, alpha = self._size_alpha(run)
        n = self.batch_size
        inst = self.instance.batch(torch.randint(len(self.instance), (n,), generator=gen), size, alpha, gen)
        inst = Batch(inst.latents.to(run.device), inst.prompt.to(run.device), inst.width, inst.height, alpha, gen)
        ctx = TrainContext(run.bundle, run.model, run.step, run.device)
        with run.accumulate():
            with run.autocast():
                out = self.flow.loss(ctx, inst)
                total = out.loss
                prior = None
                if self.prior == "class_images":
                    cb = self.class_set.batch(torch.randint(len(self.class_set), (n,), generator=gen), size, alpha, gen)  # type: ignore[union-attr]
                    prior = self.flow.loss(ctx, Batch(cb.latents.to(run.device), cb.prompt.to(run.device), cb.width, cb.height, alpha, gen)).loss
                elif self.prior == "frozen":
                    prior = self._frozen_prior(run, inst.latents, gen, alpha)
                if prior is not None and self.weight > 0:
                    total = total + self.weight * prior
            run.update("main", total)
        run.log("loss", total.detach())
        run.log("dreambooth/instance_loss", out.loss.detach())
        if prior is not None:
            run.log("dreambooth/prior_loss", prior.detach())
        run.log_by_t(out.t, out.per_sample)  # type: ignore[arg-type]
        run.count_images(n * (2 if self.prior == "class_images" else 1))
