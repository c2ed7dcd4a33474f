"""The one training loop, on accelerate: every stage trains through ``Trainer.run``.

The loop owns precision, gradient accumulation, clipping, the LR schedule, EMA, exact resume,
metrics, control flags, previews and checkpoints. What differs between methods is the list of
objectives and the ``batches(step, micro, rank)`` function that draws each micro-batch from
(seed, step), which is what makes a resumed run repeat the straight run exactly.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel

from backend.models.family import ModelBundle, to_device

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .objectives.base import Batch, Objective, TrainContext
from .reporter import Reporter

CONTROL_CODES = {None: 0, "stop": 1, "pause": 2, "sample": 3, "save": 4}
CODE_CONTROLS = {v: k for k, v in CONTROL_CODES.items()}


@dataclass
class LoopConfig:
    steps: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup: int = 100
    schedule: str = "cosine"
    clip: float = 1.0
    ema: float = 0.999
    grad_accum: int = 1
    precision: str = "auto"
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    sample_every: int = 250
    eval_every: int = 0
    loss_bins: int = 10
    device: str = "auto"
    compile: bool = False
    keep_checkpoints: int = 2


@dataclass
class LoopResult:
    state: str  # done | stopped | paused
    step: int
    seconds: float
    logs: dict[str, float] = field(default_factory=dict)


class Ema(AveragedModel):
    """EMA weights with the usual warm-up, decay_n = min(decay, (1 + n) / (10 + n)).

    Kept in ``AveragedModel``'s state layout (``module.*`` and ``n_averaged``) so checkpoints
    are unchanged, but updated without reading anything back from the device: the stock
    ``update_parameters`` compares the on-device counter twice per step, and each comparison
    makes the host wait for the GPU to finish the step.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__(model, use_buffers=False)
        self.decay = decay
        self._n: int | None = None  # host copy of n_averaged, read once after start or load

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        if self._n is None:
            self._n = int(self.n_averaged)
        averaged = [p.detach() for p in self.module.parameters()]
        current = [p.detach().to(a.device) for p, a in zip(model.parameters(), averaged, strict=True)]
        if self._n == 0:
            torch._foreach_copy_(averaged, current)
        else:
            d = min(self.decay, (1 + self._n) / (10 + self._n))
            torch._foreach_lerp_(averaged, current, 1 - d)
        for mine, theirs in zip(self.module.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs.detach().to(mine.device))
        self._n += 1
        self.n_averaged.fill_(self._n)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        self._n = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def compile_blocks(model: torch.nn.Module, blocks: list[torch.nn.Module] | None = None, **options: object) -> int:
    """Regional compilation: compile each transformer block in place, not the whole network.

    The blocks of an MMDiT share one shape, so Inductor compiles each distinct block once and
    reuses the code for the rest (tens of seconds instead of minutes on a 24-block model), while
    the fusion that pays (norms, adaLN modulation, activations) happens inside the blocks. The
    module keeps its class and parameter names, so checkpoints and EMA see no wrapper.
    ``options`` go to ``torch.compile``. On an H200 (bench/train_step_gpu.py) the first four steps,
    compilation included, took 33 s against 143 s with the whole network compiled, and later steps
    ran within 0.5 % of it.
    """
    blocks = blocks if blocks is not None else [m for name in ("transformer_blocks", "single_transformer_blocks") for m in getattr(model, name, [])]
    if not blocks:
        model.compile(**options)
        return 1
    for block in blocks:
        block.compile(**options)
    return len(blocks)


def _mean(values: list[float | torch.Tensor]) -> float:
    """Average a window of logged values; tensors are read here, once per log step."""
    tensors = [v.detach().float().reshape(()) for v in values if isinstance(v, torch.Tensor)]
    floats = [float(v) for v in values if not isinstance(v, torch.Tensor)]
    total = float(torch.stack(tensors).sum()) if tensors else 0.0
    return (total + sum(floats)) / len(values)


def pick_precision(precision: str, device: str) -> str:
    if precision != "auto":
        return precision
    if device == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


class Trainer:
    """Runs objectives over batches; checkpoints, resumes, reports."""

    def __init__(
        self,
        bundle: ModelBundle,
        objectives: list[Objective],
        batches: Callable[[int, int, int], Batch],
        config: LoopConfig,
        run_dir: Path,
        reporter: Reporter,
        preview: Callable[[int, torch.nn.Module], None] | None = None,
        evaluate: Callable[[int, torch.nn.Module], dict[str, float]] | None = None,
        trainable: torch.nn.Module | None = None,
    ):
        from accelerate import Accelerator

        self.bundle = bundle
        self.objectives = objectives
        self.batches = batches
        self.cfg = config
        self.run_dir = Path(run_dir)
        self.reporter = reporter
        self.preview = preview
        self.evaluate = evaluate
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.accelerator = Accelerator(
            mixed_precision=pick_precision(config.precision, device),
            cpu=device == "cpu",
            gradient_accumulation_steps=config.grad_accum,
        )
        acc = self.accelerator
        self.model = trainable if trainable is not None else bundle.net
        self.model.train()
        self.extras = {name: m for obj in objectives for name, m in obj.trainable_modules().items()}
        params = [p for p in self.model.parameters() if p.requires_grad]
        for m in self.extras.values():
            params += list(m.parameters())
        self.params = params
        # fused kernels on a GPU; on a CPU torch defaults to one tensor at a time: take the multi-
        # tensor (foreach) path: cProfile put the one-at-a-time AdamW at 17 ms of a ~200 ms demo step
        fused = acc.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, fused=fused,
                                           foreach=None if fused else True)
        from diffusers.optimization import get_scheduler

        self.scheduler = get_scheduler(
            "constant_with_warmup" if config.schedule == "constant" else config.schedule,
            self.optimizer,
            num_warmup_steps=config.warmup,
            num_training_steps=config.steps,
        )
        bundle.vae.to(acc.device)
        self.model.to(acc.device)  # before the EMA copy, so both live on the same device
        for m in self.extras.values():
            m.to(acc.device)
        self.ema = Ema(self.model, config.ema) if config.ema > 0 else None
        # the LR scheduler stays unprepared: accelerate would step it once per process
        prepared = acc.prepare(self.model, self.optimizer, *self.extras.values())
        self.wrapped, self.optimizer = prepared[0], prepared[1]
        self.wrapped_extras = dict(zip(self.extras, prepared[2:]))
        for obj in objectives:
            obj.use_modules(self.wrapped_extras)
        if config.compile:
            compile_blocks(acc.unwrap_model(self.wrapped), self.bundle.family.blocks(acc.unwrap_model(self.wrapped)))
        self.step = 0

    # --- state --------------------------------------------------------------------------------

    def _modules(self) -> dict[str, torch.nn.Module]:
        mods: dict[str, torch.nn.Module] = {"model": self.accelerator.unwrap_model(self.model)}
        if self.ema is not None:
            mods["ema"] = self.ema
        mods.update(self.extras)
        return mods

    def save(self) -> Path | None:
        if self.accelerator.is_main_process:
            extra = {"objectives": {o.name: o.state() for o in self.objectives}}
            path = save_checkpoint(self.run_dir, self.step, self._modules(), self.optimizer, self.scheduler, extra, keep=self.cfg.keep_checkpoints)
            self.reporter.log(f"checkpoint {path.name}")
        else:
            path = None
        self.accelerator.wait_for_everyone()
        return path

    def resume(self) -> bool:
        path = latest_checkpoint(self.run_dir)
        if path is None:
            return False
        meta = load_checkpoint(path, self._modules(), self.optimizer, self.scheduler)
        for obj in self.objectives:
            obj.load_state(meta.get("extra", {}).get("objectives", {}).get(obj.name, {}))
        self.step = int(meta["step"])
        self.reporter.log(f"resumed from {path.name} at step {self.step}")
        return True

    @property
    def sampling_model(self) -> torch.nn.Module:
        """The weights previews and saved models use: EMA when enabled."""
        return self.ema.module if self.ema is not None else self.accelerator.unwrap_model(self.model)

    # --- control ------------------------------------------------------------------------------

    def _control(self) -> str | None:
        acc = self.accelerator
        flag = self.reporter.control() if acc.is_main_process else None
        if acc.num_processes > 1:
            from accelerate.utils import broadcast

            code = torch.tensor([CONTROL_CODES.get(flag, 0)], device=acc.device)
            flag = CODE_CONTROLS[int(broadcast(code)[0])]
        return flag

    # --- loop ---------------------------------------------------------------------------------

    def run(self, resume: bool = True) -> LoopResult:
        acc = self.accelerator
        cfg = self.cfg
        if resume:
            self.resume()
        t0 = time.perf_counter()
        # metrics stay on the device between log steps: reading one (float(), .item(), .cpu())
        # would make the host wait for the GPU's queue to drain on every step
        window: dict[str, list[float | torch.Tensor]] = defaultdict(list)
        bins_sum = torch.zeros(cfg.loss_bins, device=acc.device)
        bins_n = torch.zeros(cfg.loss_bins, device=acc.device)
        mix: dict[str, int] = defaultdict(int)
        last_log = time.perf_counter()
        images_since = 0
        state = "done"
        self.reporter.progress(self.step, cfg.steps)
        while self.step < cfg.steps:
            step = self.step + 1
            ctx = TrainContext(self.bundle, self.wrapped, step, acc.device)
            for micro in range(cfg.grad_accum):
                batch = self.batches(step, micro, acc.process_index)
                batch.latents = to_device(batch.latents, acc.device)
                batch.prompt = batch.prompt.to(acc.device)
                with acc.accumulate(self.wrapped):
                    with acc.autocast():
                        total = 0.0
                        for obj in self.objectives:
                            out = obj.loss(ctx, batch)
                            total = total + out.loss
                            for k, v in out.logs.items():
                                window[k].append(v)
                            if out.t is not None and out.per_sample is not None:
                                idx = (out.t.to(acc.device) * cfg.loss_bins).long().clamp(0, cfg.loss_bins - 1)
                                bins_sum.index_add_(0, idx, out.per_sample.to(acc.device).float())
                                bins_n.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float32))
                    acc.backward(total)
                    if acc.sync_gradients:
                        gn = acc.clip_grad_norm_(self.params, cfg.clip)
                        window["grad_norm"].append(gn.detach() if isinstance(gn, torch.Tensor) else float(gn))
                    self.optimizer.step()  # a no-op until the last micro-batch
                    if acc.sync_gradients:
                        self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                window["loss"].append(total.detach())
                for cat in batch.extras.get("categories", []):
                    mix[cat] += 1
                images_since += batch.latents.shape[0] * acc.num_processes
            self.step = step
            if self.ema is not None:
                self.ema.update_parameters(acc.unwrap_model(self.model))
            if step % cfg.log_every == 0 or step == cfg.steps:
                values = {k: _mean(v) for k, v in window.items() if v}  # waits for the device
                now = time.perf_counter()
                if not all(math.isfinite(v) for v in values.values()):
                    self.reporter.log(f"step {step}: non-finite loss {values}; stopping with the last checkpoint intact")
                    raise FloatingPointError(f"training diverged at step {step} (loss {values.get('loss')})")
                values["lr"] = self.scheduler.get_last_lr()[0]
                values["images_per_s"] = images_since / max(1e-9, now - last_log)
                values["step_s"] = (now - last_log) / max(1, len(window["loss"]) / cfg.grad_accum)
                sums, counts = bins_sum.tolist(), bins_n.tolist()
                for b in range(cfg.loss_bins):
                    if counts[b] > 0:
                        values[f"loss_t/{b}"] = sums[b] / counts[b]
                total_mix = sum(mix.values())
                for cat, n in mix.items():
                    values[f"mix/{cat}"] = n / total_mix
                if acc.is_main_process:
                    self.reporter.metrics(step, values)
                    self.reporter.progress(step, cfg.steps)
                    if step % (cfg.log_every * 10) == 0 or step == cfg.steps:
                        self.reporter.log(f"step {step}/{cfg.steps} loss {values['loss']:.4f} lr {values['lr']:.2e} {values['images_per_s']:.0f} img/s")
                window.clear()
                bins_sum.zero_()
                bins_n.zero_()
                mix.clear()
                images_since = 0
                last_log = now
            flag = self._control()
            if flag == "sample" or (self.preview and cfg.sample_every and step % cfg.sample_every == 0):
                self._preview(step)
            if self.evaluate and cfg.eval_every and step % cfg.eval_every == 0:
                self._evaluate(step)
            if flag in ("stop", "pause"):
                self.save()
                state = "stopped" if flag == "stop" else "paused"
                break
            if flag == "save" or step % cfg.checkpoint_every == 0:
                self.save()
        if state == "done":
            if self.step % cfg.checkpoint_every != 0:
                self.save()
            if self.evaluate:
                self._evaluate(self.step)
        logs = self._replica_check() if acc.num_processes > 1 else {}
        return LoopResult(state, self.step, time.perf_counter() - t0, logs)

    def _replica_check(self) -> dict[str, float]:
        """Data-parallel replicas must hold identical weights; measure and report the largest gap."""
        from accelerate.utils import gather

        acc = self.accelerator
        params = [p.detach().float().flatten() for p in acc.unwrap_model(self.model).parameters()]
        flat = torch.cat(params) if sum(p.numel() for p in params) <= 50_000_000 else torch.stack([p.double().sum().float() for p in params])
        everyone = gather(flat[None].to(acc.device)).cpu()
        gap = float((everyone - everyone[0:1]).abs().max())
        if acc.is_main_process:
            self.reporter.metrics(self.step, {"replicas/max_abs_diff": gap, "replicas/processes": float(acc.num_processes)})
            self.reporter.log(f"{acc.num_processes} replicas, largest weight difference {gap:.3g}")
        return {"replicas/max_abs_diff": gap}

    def _preview(self, step: int) -> None:
        if self.preview is not None and self.accelerator.is_main_process:
            was = self.sampling_model.training
            self.sampling_model.eval()
            self.preview(step, self.sampling_model)
            self.sampling_model.train(was)
        self.accelerator.wait_for_everyone()

    def _evaluate(self, step: int) -> None:
        if self.evaluate is not None and self.accelerator.is_main_process:
            was = self.sampling_model.training
            self.sampling_model.eval()
            values = self.evaluate(step, self.sampling_model)
            self.sampling_model.train(was)
            if values:
                self.reporter.metrics(step, values)
        self.accelerator.wait_for_everyone()
