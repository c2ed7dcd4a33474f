"""The one training loop, on accelerate: every stage trains through ``Trainer.run``.

The loop owns precision, gradient accumulation, clipping and LR schedules per optimizer, the
sampling EMA, exact resume of every module, optimizer and RNG, metrics, control flags, previews
and checkpoints. What differs between methods is the ``Method`` (``method.py``: its modules,
optimizers and the work of one step) and the ``batches(step, micro, rank)`` function that draws
each micro-batch from (seed, step), which is what makes a resumed run repeat the straight run exactly.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel

from backend.models.family import ModelBundle, to_device

from .checkpoint import TrainableOnly, checkpoints_newest_first, damage, load_checkpoint, save_checkpoint
from .method import Method, ObjectivesMethod
from .objectives.base import Batch, Objective
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
    gradient_checkpointing: bool = False  # recompute each block's activations in the backward pass (memory for ~30 % time)
    eight_bit: bool = False  # AdamW states in 8 bits (bitsandbytes, CUDA)
    keep_checkpoints: int = 2
    max_bad_steps: int = 5  # non-finite losses in a row before the job stops (each one is skipped, not applied)


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


class AdapterEma(torch.nn.Module):
    """EMA of a network's trainable parameters only (a LoRA run's adapters), with the same warm-up
    as ``Ema``. It holds no copy of the frozen base: sampling swaps the averaged values into the
    network (``swapped``) and puts the trained ones back afterwards."""

    def __init__(self, model: torch.nn.Module, decay: float):
        super().__init__()
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.shadow = torch.nn.ParameterDict({_key(n): torch.nn.Parameter(p.detach().clone(), requires_grad=False)
                                              for n, p in model.named_parameters() if p.requires_grad})
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long))

    @torch.no_grad()
    def update_parameters(self, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        n = int(self.n_averaged)
        d = 0.0 if n == 0 else min(self.decay, (1 + n) / (10 + n))
        for name in self.names:
            self.shadow[_key(name)].lerp_(params[name].detach(), 1 - d)
        self.n_averaged.fill_(n + 1)

    @contextmanager
    def swapped(self, model: torch.nn.Module) -> Iterator[torch.nn.Module]:
        params = dict(model.named_parameters())
        kept = {n: params[n].detach().clone() for n in self.names}
        with torch.no_grad():
            for n in self.names:
                params[n].copy_(self.shadow[_key(n)])
        try:
            yield model
        finally:
            with torch.no_grad():
                for n in self.names:
                    params[n].copy_(kept[n])


def _key(name: str) -> str:
    return name.replace(".", "__")  # ParameterDict keys may not hold dots


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


def _mean(values: list[float | torch.Tensor], finite_only: bool = False) -> float:
    """Average a window of logged values; tensors are read here, once per log step. ``finite_only``
    leaves out non-finite values (those of updates the loop skipped); nan if none is left."""
    tensors = [v.detach().float().reshape(()) for v in values if isinstance(v, torch.Tensor)]
    got = (torch.stack(tensors).tolist() if tensors else []) + [float(v) for v in values if not isinstance(v, torch.Tensor)]
    if finite_only:
        got = [v for v in got if math.isfinite(v)]
    return sum(got) / len(got) if got else float("nan")


def eight_bit_adamw(params: list[torch.nn.Parameter], *, lr: float, betas: tuple[float, float], weight_decay: float,
                    device: torch.device) -> torch.optim.Optimizer:
    """AdamW with 8-bit moments from bitsandbytes (a quarter of AdamW's 8 bytes per parameter): for
    full fine-tuning of a real model on one GPU. CUDA only; said plainly where it cannot run."""
    if device.type != "cuda":
        raise ValueError("optim.eight_bit keeps AdamW's states in 8 bits with bitsandbytes, which needs a CUDA GPU; turn it off on this device")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ValueError("optim.eight_bit needs bitsandbytes in the backend's environment: pip install bitsandbytes") from None
    return bnb.optim.AdamW8bit(params, lr=lr, betas=betas, weight_decay=weight_decay)


def pick_precision(precision: str, device: str) -> str:
    if precision != "auto":
        return precision
    if device == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


class Trainer:
    """Runs a method over batches; checkpoints, resumes, reports. Implements ``method.Run``."""

    def __init__(
        self,
        bundle: ModelBundle | None,
        method: Method | list[Objective],
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
        self.method = method if isinstance(method, Method) else ObjectivesMethod(method)
        self.batches = batches
        self.cfg = config
        self.grad_accum = config.grad_accum
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
        self.device = acc.device
        if bundle is None and trainable is None:
            raise ValueError("a run without a model bundle must name the module it trains (trainable=...)")
        if bundle is not None:
            bundle.vae.to(acc.device)
        net = trainable if trainable is not None else bundle.net
        net.train()
        if config.gradient_checkpointing:
            if not getattr(net, "_supports_gradient_checkpointing", False):
                raise ValueError(f"gradient checkpointing: {type(net).__name__} does not support it")
            net.enable_gradient_checkpointing()
            reporter.log(f"gradient checkpointing on: {type(net).__name__}'s blocks are recomputed in the backward pass")
        net.to(acc.device)  # before the EMA copy, so both live on the same device
        partial = any(not p.requires_grad for p in net.parameters())  # adapters on a frozen base: average the adapters only
        self.ema: Ema | AdapterEma | None = (AdapterEma(net, config.ema) if partial else Ema(net, config.ema)) if config.ema > 0 else None
        self._modules: dict[str, torch.nn.Module] = {}  # unwrapped, by name; "model" is the bundle's network
        self._prepared: dict[str, torch.nn.Module] = {}
        self._saved: dict[str, str] = {}  # name -> "all" | "trainable" | "none"
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self._params: dict[str, list[torch.nn.Parameter]] = {}
        self._clip: dict[str, float] = {}
        self.model = self.add_module("model", net, saved="trainable" if partial else "all")
        self.wrapped = self.model
        self.step = 0
        self._window: dict[str, list[float | torch.Tensor]] = defaultdict(list)
        self._bins_sum = torch.zeros(config.loss_bins, device=acc.device)
        self._bins_n = torch.zeros(config.loss_bins, device=acc.device)
        self._mix: dict[str, int] = defaultdict(int)
        self._images = 0
        self._bad_in_row = 0  # updates skipped for a non-finite loss, in a row
        self._bad_total = 0
        self._bad_logged = 0
        self._last_batch: Batch | None = None
        self.method.setup(self)
        if "main" not in self.optimizers and not self.optimizers:
            self.add_optimizer("main", ["model"])
        if config.compile and bundle is not None:
            compile_blocks(acc.unwrap_model(self.model), self.bundle.family.blocks(acc.unwrap_model(self.model)))

    # --- what a method declares -----------------------------------------------------------------

    def add_module(self, name: str, module: torch.nn.Module, *, trainable: bool = True, saved: str = "all") -> torch.nn.Module:
        """Hold ``module`` for the run: on the device, in checkpoints (``saved``: all weights, only
        the trainable ones (adapters), or none for a frozen copy that never changes), and prepared
        for several processes when it trains. Returns the module to call."""
        if name in self._modules:
            raise ValueError(f"module {name!r} is declared twice")
        if saved not in ("all", "trainable", "none"):
            raise ValueError(f"saved must be 'all', 'trainable' or 'none', not {saved!r}")
        module.to(self.accelerator.device)
        if not trainable:
            module.eval().requires_grad_(False)
        self._modules[name] = module
        self._saved[name] = saved
        self._prepared[name] = self.accelerator.prepare(module) if trainable and any(p.requires_grad for p in module.parameters()) else module
        return self._prepared[name]

    def add_optimizer(self, name: str, modules: list[str], *, lr: float | None = None, clip: float | None = None) -> None:
        """An AdamW over the trainable parameters of ``modules`` with the recipe's schedule, clipped on its own."""
        if name in self.optimizers:
            raise ValueError(f"optimizer {name!r} is declared twice")
        cfg = self.cfg
        params = [p for m in modules for p in self._modules[m].parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"optimizer {name!r}: modules {modules} have no trainable parameters")
        # fused kernels on a GPU; on a CPU torch defaults to one tensor at a time: take the multi-
        # tensor (foreach) path: cProfile put the one-at-a-time AdamW at 17 ms of a ~200 ms demo step
        fused = self.accelerator.device.type == "cuda"
        if cfg.eight_bit:
            opt = eight_bit_adamw(params, lr=lr or cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, device=self.accelerator.device)
        else:
            opt = torch.optim.AdamW(params, lr=lr or cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=fused,
                                    foreach=None if fused else True)
        from diffusers.optimization import get_scheduler

        # the LR scheduler stays unprepared: accelerate would step it once per process
        self.schedulers[name] = get_scheduler("constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule, opt,
                                              num_warmup_steps=cfg.warmup, num_training_steps=cfg.steps)
        self.optimizers[name] = self.accelerator.prepare(opt)
        self._params[name] = params
        self._clip[name] = cfg.clip if clip is None else clip

    # --- what a method calls during a step ------------------------------------------------------

    def module(self, name: str) -> torch.nn.Module:
        return self._prepared[name]

    def batch(self, micro: int = 0) -> Batch:
        batch = self.batches(self.step, micro, self.accelerator.process_index)
        self._last_batch = batch
        batch.latents = to_device(batch.latents, self.accelerator.device)
        batch.prompt = batch.prompt.to(self.accelerator.device)
        return batch

    def accumulate(self) -> AbstractContextManager:
        return self.accelerator.accumulate(self.model)

    def autocast(self) -> AbstractContextManager:
        return self.accelerator.autocast()

    def update(self, optimizer: str, loss: torch.Tensor) -> None:
        """Backward, clip this optimizer's parameters, step it and its schedule (a no-op until the
        last micro-batch when accumulating), clear the gradients."""
        acc = self.accelerator
        if not self._finite(loss):
            self._skip_update(optimizer, loss)
            return
        self._bad_in_row = 0
        acc.backward(loss)
        if acc.sync_gradients:
            gn = acc.clip_grad_norm_(self._params[optimizer], self._clip[optimizer])
            self.log("grad_norm" if optimizer == "main" else f"grad_norm/{optimizer}", gn.detach() if isinstance(gn, torch.Tensor) else float(gn))
        opt = self.optimizers[optimizer]
        opt.step()
        if acc.sync_gradients:
            self.schedulers[optimizer].step()
        # every optimizer's gradients, not only this one's: a generator loss that runs through a critic
        # leaves gradients in the critic, which its next update would otherwise add to its own
        for other in self.optimizers.values():
            other.zero_grad(set_to_none=True)

    def _finite(self, loss: torch.Tensor) -> bool:
        """Whether every process's loss is finite (one host read per update: a skipped update must be
        skipped by every process alike, before any backward pass)."""
        ok = torch.isfinite(loss.detach()).all().float().reshape(1)
        if self.accelerator.num_processes > 1:
            ok = self.accelerator.reduce(ok, reduction="sum") / self.accelerator.num_processes
        return bool(ok.item() == 1.0)

    def _skip_update(self, optimizer: str, loss: torch.Tensor) -> None:
        """A non-finite loss: nothing is applied (no backward, no optimizer or schedule step), the skip
        is counted and logged; after ``max_bad_steps`` in a row the job stops with the step, the
        batch's items and a hint, the last checkpoint untouched."""
        self._bad_in_row += 1
        self._bad_total += 1
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.log("skipped_updates", float(self._bad_total))
        batch = self._last_batch
        items = batch.extras.get("items") if batch is not None else None
        where = f" (batch items {items})" if items else ""
        self.reporter.log(f"step {self.step}: non-finite {optimizer} loss {float(loss.detach().float().mean())}; update skipped "
                          f"({self._bad_in_row} in a row, {self._bad_total} in all){where}")
        if self._bad_in_row >= self.cfg.max_bad_steps:
            raise FloatingPointError(f"training diverged at step {self.step}: {self._bad_in_row} non-finite losses in a row{where}. "
                                     "The last checkpoint is intact: lower the learning rate (or raise the warm-up), check the "
                                     "batch's images, then resume")

    def log(self, key: str, value: float | torch.Tensor) -> None:
        """A value for the next metrics row (averaged over the log window; tensors are read then)."""
        self._window[key].append(value.detach() if isinstance(value, torch.Tensor) else value)

    def log_by_t(self, t: torch.Tensor, per_sample: torch.Tensor) -> None:
        bins = self.cfg.loss_bins
        idx = (t.to(self.device) * bins).long().clamp(0, bins - 1)
        self._bins_sum.index_add_(0, idx, per_sample.detach().to(self.device).float())
        self._bins_n.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float32))

    def count_images(self, batch: Batch | int) -> None:
        """Images this step trained on: a batch (its categories feed the mix), or a number (e.g. rollouts)."""
        if isinstance(batch, int):
            self._images += batch * self.accelerator.num_processes
            return
        for cat in batch.extras.get("categories", []):
            self._mix[cat] += 1
        self._images += batch.latents.shape[0] * self.accelerator.num_processes

    # --- state --------------------------------------------------------------------------------

    def _checkpointed(self) -> dict[str, torch.nn.Module | dict[str, torch.Tensor]]:
        acc = self.accelerator
        mods: dict[str, Any] = {}
        for name, module in self._modules.items():
            module = acc.unwrap_model(module)
            if self._saved[name] == "all":
                mods[name] = module
            elif self._saved[name] == "trainable":
                mods[name] = TrainableOnly(module)
        if self.ema is not None:
            mods["ema"] = self.ema
        return mods

    def save(self) -> Path | None:
        if self.accelerator.is_main_process:
            extra = {"method": self.method.state()}
            if isinstance(self.method, ObjectivesMethod):
                extra["objectives"] = extra["method"]["objectives"]  # the layout checkpoints had before methods
            path = save_checkpoint(self.run_dir, self.step, self._checkpointed(), self.optimizers, self.schedulers, extra, keep=self.cfg.keep_checkpoints)
            self.reporter.log(f"checkpoint {path.name}")
        else:
            path = None
        self.accelerator.wait_for_everyone()
        return path

    def resume(self) -> bool:
        """Load the newest sound checkpoint: one whose files fail their checksums is named in the log
        and the one before it is used."""
        path, damaged = None, []
        for candidate in checkpoints_newest_first(self.run_dir):
            why = damage(candidate)
            if why is None:
                path = candidate
                break
            damaged.append(f"{candidate.name}: {why}")
            self.reporter.log(f"checkpoint {candidate.name} is damaged: {why}; trying the one before it")
        if path is None:
            if damaged:  # never start over silently on top of a run's folder
                raise RuntimeError(f"every checkpoint of {self.run_dir} is damaged ({'; '.join(damaged)}); nothing to resume from")
            return False
        meta = load_checkpoint(path, self._checkpointed(), self.optimizers, self.schedulers)
        extra = meta.get("extra", {})
        self.method.load_state(extra.get("method", {"objectives": extra.get("objectives", {})}))
        self.step = int(meta["step"])
        self.reporter.log(f"resumed from {path.name} at step {self.step}")
        return True

    @property
    def sampling_model(self) -> torch.nn.Module:
        """The weights previews and saved models use: EMA when enabled (full networks; a run with
        an adapter EMA samples through ``sampling()``)."""
        if isinstance(self.ema, AdapterEma):
            raise RuntimeError("this run averages adapters only; sample inside `with trainer.sampling() as net:`")
        return self.ema.module if self.ema is not None else self.accelerator.unwrap_model(self.model)

    @contextmanager
    def sampling(self) -> Iterator[torch.nn.Module]:
        """The network with the weights previews, evaluation and saved models use, in eval mode."""
        net = self.accelerator.unwrap_model(self.model)
        if isinstance(self.ema, AdapterEma):
            with self.ema.swapped(net):
                yield from _eval_mode(net)
        else:
            yield from _eval_mode(self.sampling_model)

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
        last_log = time.perf_counter()
        steps_since = 0
        state = "done"
        self.reporter.progress(self.step, cfg.steps)
        steps_run = 0
        while self.step < cfg.steps:
            self.step += 1
            steps_run += 1
            step = self.step
            self.method.step(self)
            if self.ema is not None:
                self.ema.update_parameters(acc.unwrap_model(self.model))
            self.method.after_step(self)
            steps_since += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                self._log_window(step, time.perf_counter() - last_log, steps_since)
                last_log, steps_since = time.perf_counter(), 0
            flag = self._control()
            if flag == "sample" or (self.preview and cfg.sample_every and step % cfg.sample_every == 0):
                self._preview(step)
            if self._evaluates() and cfg.eval_every and step % cfg.eval_every == 0:
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
            if self._evaluates() and not (cfg.eval_every and self.step % cfg.eval_every == 0 and steps_run):
                self._evaluate(self.step)  # unless the loop has just evaluated this very step
        logs = self._replica_check() if acc.num_processes > 1 else {}
        return LoopResult(state, self.step, time.perf_counter() - t0, logs)

    def _log_window(self, step: int, seconds: float, steps: int) -> None:
        cfg = self.cfg
        skipped = self._bad_total > self._bad_logged  # skipped updates logged their non-finite losses: leave those out
        self._bad_logged = self._bad_total
        values = {k: _mean(v, finite_only=skipped) for k, v in self._window.items() if v}  # waits for the device
        if self.accelerator.num_processes > 1:
            values, sums, counts = self._across_processes(values)
        else:
            sums, counts = self._bins_sum.tolist(), self._bins_n.tolist()
        if skipped:
            values = {k: v for k, v in values.items() if math.isfinite(v)}
        if not all(math.isfinite(v) for v in values.values()):
            self.reporter.log(f"step {step}: non-finite loss {values}; stopping with the last checkpoint intact")
            raise FloatingPointError(f"training diverged at step {step} (loss {values.get('loss')})")
        values["lr"] = self.schedulers["main"].get_last_lr()[0] if "main" in self.schedulers else next(iter(self.schedulers.values())).get_last_lr()[0]
        values["images_per_s"] = self._images / max(1e-9, seconds)
        values["step_s"] = seconds / max(1, steps)
        for b in range(cfg.loss_bins):
            if counts[b] > 0:
                values[f"loss_t/{b}"] = sums[b] / counts[b]
        total_mix = sum(self._mix.values())
        for cat, n in self._mix.items():
            values[f"mix/{cat}"] = n / total_mix
        if self.accelerator.is_main_process:
            self.reporter.metrics(step, values)
            self.reporter.progress(step, cfg.steps)
            if step % (cfg.log_every * 10) == 0 or step == cfg.steps:
                loss = values.get("loss", float("nan"))
                self.reporter.log(f"step {step}/{cfg.steps} loss {loss:.4f} lr {values['lr']:.2e} {values['images_per_s']:.0f} img/s")
        self._window.clear()
        self._bins_sum.zero_()
        self._bins_n.zero_()
        self._mix.clear()
        self._images = 0

    def _across_processes(self, values: dict[str, float]) -> tuple[dict[str, float], list[float], list[float]]:
        """The window's means over every process (each saw an equal share of the step's batch) and the
        loss-by-t sums and counts added up: what is logged is the whole step's, not process 0's half.
        Every process logs the same keys (the same method); one collective per log step."""
        acc = self.accelerator
        keys = sorted(values)
        v = torch.tensor([values[k] for k in keys], device=acc.device, dtype=torch.float64)
        finite = torch.isfinite(v)
        # a value one process could not compute (nan) is left out of the mean, not allowed to poison it
        both = acc.reduce(torch.cat([torch.where(finite, v, torch.zeros_like(v)), finite.double()]), reduction="sum")
        total, count = both[: len(keys)], both[len(keys):]
        means = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
        bins = acc.reduce(torch.cat([self._bins_sum, self._bins_n]).double(), reduction="sum")
        n = self._bins_sum.numel()
        return dict(zip(keys, means.tolist())), bins[:n].tolist(), bins[n:].tolist()

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
            with self.sampling() as net:
                self.preview(step, net)
        self.accelerator.wait_for_everyone()

    def _evaluates(self) -> bool:
        """Whether anything evaluates: the run's evaluator, or a method with an evaluation of its own."""
        return self.evaluate is not None or type(self.method).evaluate is not Method.evaluate

    def _evaluate(self, step: int) -> None:
        if self.accelerator.is_main_process:
            with self.sampling() as net:
                values = dict(self.evaluate(step, net)) if self.evaluate is not None else {}
                values.update(self.method.evaluate(self, step, net))
            if values:
                self.reporter.metrics(step, values)
        self.accelerator.wait_for_everyone()


def _eval_mode(net: torch.nn.Module) -> Iterator[torch.nn.Module]:
    was = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was)
