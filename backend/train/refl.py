"""ReFL: descend on a differentiable reward through the model's one-step estimate of the image.

METHODS.md §2: sample *without* gradients from t = 1 down to a random late step ``t_k`` (one of
the last ``late`` of the sampler's steps), take that one step *with* gradients, form
``x0_hat = x_t - t_k v_θ(x_t, t_k)``, decode with the VAE, score with the frozen reward model and
descend on ``φ(r)``: ``-r``, or ImageReward's ``ReLU(margin - r)`` which stops pushing once an
image is good enough (less reward hacking). The reward model must be differentiable in the pixels
(``RewardModel.score_pixels``); the detector rule is not, so ReFL takes a reward model. The flow
loss on the project's data is mixed in as a regulariser (``regulariser`` weight, batches from the
loop), which keeps the model drawing like its training set while the reward pulls.

``shift`` scores each image at a random translation of up to that many pixels (edges replicated),
an expectation over transformations: a reward hacked by a pattern tied to one exact pixel alignment
stops paying for it, while what a prompt asks for (shapes, colours, counts, relations, background)
survives a shift. Measured on the demo's reward model it did not stop ReFL's hack there (squares
pinched into four-pointed stars at a high rate): that deformation is a shape the reward prefers,
not a pixel pattern (README, "ReFL scored under shifts"). Off by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .method import Method, SamplesPrompts
from .objectives.base import TrainContext
from .objectives.flow import FlowMatching


@dataclass
class ReFLSettings:
    batch_size: int = 8  # prompts (one image each) per step
    sampler_steps: int = 20
    late: int = 5  # the gradient step is one of the last ``late`` sampler steps
    cfg: float = 3.0
    reward_weight: float = 1.0
    margin: float | None = None  # φ(r) = ReLU(margin - r); None: φ(r) = -r
    regulariser: float = 1.0  # weight of the flow loss on the project's data (0 = none)
    shift: int = 0  # score at a random translation of up to this many pixels (0 = as drawn)


def shifted(images: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Each image translated by its own random (dy, dx) in [-shift, shift], edges replicated; differentiable."""
    if shift <= 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (shift, shift, shift, shift), mode="replicate")
    offsets = torch.randint(0, 2 * shift + 1, (b, 2), generator=gen).tolist()
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])


class ReFL(SamplesPrompts, Method):
    name = "refl"

    def __init__(self, prompts: list[str], reward_model, settings: ReFLSettings, latent_hw: tuple[int, int], seed: int):
        if not prompts:
            raise ValueError("ReFL needs prompts to sample")
        if not 1 <= settings.late <= settings.sampler_steps:
            raise ValueError(f"late must be between 1 and the sampler's {settings.sampler_steps} steps")
        if settings.shift < 0:
            raise ValueError(f"shift must be 0 or more pixels, not {settings.shift}")
        self.prompts, self.reward, self.s, self.latent_hw, self.seed = prompts, reward_model, settings, latent_hw, seed
        self.reward.head.requires_grad_(False).eval()
        for p in self.reward.encoder.model.parameters():
            p.requires_grad_(False)
        self.flow = FlowMatching(weight=settings.regulariser)

    def setup(self, run) -> None:
        run.add_optimizer("main", ["model"])
        self.reward.head.to(run.device)  # the frozen reward model scores on the run's device
        self.reward.encoder.model.to(run.device)
        self.reward.encoder.device = run.device
        self.encode_pool(run)

    def x0_estimate(self, run, gen: torch.Generator) -> tuple[torch.Tensor, list[str], int]:
        """(x0_hat with gradients through one model call only, its prompts, the step k it was taken at)."""
        from backend.flow.timesteps import sampling_schedule
        from backend.sample.sde import empty_like, guided_velocity

        s, bundle = self.s, run.bundle
        idx = torch.randint(len(self.prompts), (s.batch_size,), generator=gen)
        cond = self.embeds[idx].to(run.device)
        h, w = self.latent_hw
        x = torch.randn((s.batch_size, bundle.vae.config.latent_channels, h, w), generator=gen).to(run.device)
        ts = sampling_schedule(s.sampler_steps, self._alpha(run)).to(run.device)
        k = int(torch.randint(s.sampler_steps - s.late, s.sampler_steps, (1,), generator=gen))
        uncond = empty_like(bundle, s.batch_size, run.device) if s.cfg != 1.0 else None
        with torch.no_grad(), run.autocast():
            for i in range(k):
                x = x + (ts[i + 1] - ts[i]) * guided_velocity(bundle, run.model, x, ts[i], cond, uncond, s.cfg).float()
        with run.autocast():
            v = guided_velocity(bundle, run.model, x, ts[k], cond, uncond, s.cfg)
        x0 = x - ts[k] * v.float()
        return x0, [self.prompts[i] for i in idx.tolist()], k

    def step(self, run) -> None:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + run.step * 101 + run.accelerator.process_index)
        x0, prompts, k = self.x0_estimate(run, gen)
        images = run.bundle.decode_latents(x0).float().clamp(-1, 1)
        r = self.reward.score_pixels(shifted(images, self.s.shift, gen), prompts)
        phi = F.relu(self.s.margin - r) if self.s.margin is not None else -r
        loss = self.s.reward_weight * phi.mean()
        run.log("refl/reward", r.detach().mean())
        run.log("refl/step", float(k))
        if self.s.regulariser > 0:
            batch = run.batch()
            with run.autocast():
                out = self.flow.loss(TrainContext(run.bundle, run.model, run.step, run.device), batch)
            loss = loss + out.loss
            run.log("loss/flow", out.logs["loss/flow"])
            run.count_images(batch)
        with run.accumulate():
            run.update("main", loss)
        run.log("loss", loss.detach())
        run.count_images(len(prompts))
