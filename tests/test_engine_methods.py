"""The engine's contract, proven with small toy methods through the real loop: several optimizers
at their own rates, a frozen reference, an EMA target moved after each step, a rollout buffer
consumed over several updates, and LoRA runs whose checkpoints and EMA hold adapters only. Each
resumes exactly from what a kill leaves behind (the last checkpoint, later steps lost)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from backend.models.family import PromptEmbeds, build_embedded
from backend.models.lora import adapter_parameters, adapters_disabled, add_lora, save_lora
from backend.train.curriculum import batch_generator
from backend.train.loop import LoopConfig, Trainer
from backend.train.method import Method, ObjectivesMethod
from backend.train.objectives import Batch, FlowMatching
from backend.train.reporter import Reporter


class Quiet(Reporter):
    def log(self, text: str) -> None:
        pass


def toy_batches(step: int, micro: int = 0, rank: int = 0) -> Batch:
    gen = batch_generator(0, step, micro, rank)
    latents = torch.randn(4, 4, 8, 8, generator=gen)
    prompt = PromptEmbeds(torch.randn(4, 3, 384, generator=gen), torch.randn(4, 384, generator=gen), torch.tensor([3, 3, 3, 3]))
    return Batch(latents, prompt, 32, 32, 1.0, gen)


def flow_loss(run, net: nn.Module, batch: Batch) -> torch.Tensor:
    t = torch.rand(batch.latents.shape[0], generator=batch.generator).clamp(0.05, 0.95)
    eps = torch.randn(batch.latents.shape, generator=batch.generator)
    tt = t.view(-1, 1, 1, 1)
    v = run.bundle.velocity((1 - tt) * batch.latents + tt * eps, t, batch.prompt, net)
    return ((v - (eps - batch.latents)) ** 2).mean()


def config(steps: int, **over) -> LoopConfig:
    return LoopConfig(**{"steps": steps, "lr": 1e-3, "warmup": 0, "ema": 0.9, "log_every": 1, "checkpoint_every": 3, "sample_every": 0,
                         "keep_checkpoints": 10, "device": "cpu", **over})


def make_bundle(lora: bool = False):
    bundle = build_embedded("tiny", family="unet", seed=0)
    if lora:
        add_lora(bundle.net, bundle.family, rank=4)
    return bundle


def state_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"{name}.{k}": v.detach().clone() for name, m in trainer._modules.items() for k, v in m.state_dict().items()}
    if trainer.ema is not None:
        out.update({f"ema.{k}": v.detach().clone() for k, v in trainer.ema.state_dict().items()})
    for name, opt in trainer.optimizers.items():
        for i, st in opt.state_dict()["state"].items():
            out.update({f"opt.{name}.{i}.{k}": v.clone() for k, v in st.items() if isinstance(v, torch.Tensor)})
    return out


def straight_and_killed(tmp_path: Path, make_method, steps: int, kill_at: int = 3, lora: bool = False, batches=toy_batches) -> tuple[Trainer, Trainer]:
    """One run straight through; a second that resumes from the step-``kill_at`` checkpoint of a
    copy of the first's folder (later checkpoints removed, as if killed before writing them)."""
    straight = Trainer(make_bundle(lora), make_method(), batches, config(steps), tmp_path / "a", Quiet())
    straight.run(resume=False)
    killed = tmp_path / "b"
    shutil.copytree(tmp_path / "a", killed)
    for ckpt in (killed / "checkpoints").glob("step-*"):
        if int(ckpt.name.split("-")[1]) > kill_at:
            shutil.rmtree(ckpt)
    (killed / "checkpoints" / "latest").write_text(f"step-{kill_at:07d}\n")
    torch.manual_seed(1234)  # the resumed process starts from other RNG state; the checkpoint restores it
    resumed = Trainer(make_bundle(lora), make_method(), batches, config(steps), killed, Quiet())
    assert resumed.resume() and resumed.step == kill_at
    resumed.run(resume=False)
    return straight, resumed


def assert_same_trajectory(a: Trainer, b: Trainer) -> None:
    sa, sb = state_of(a), state_of(b)
    assert sa.keys() == sb.keys()
    bad = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not bad, f"{len(bad)} tensors differ after resuming, e.g. {bad[:3]}"


# --- two optimizers at 5:1 ---------------------------------------------------------------------


class Alternating(Method):
    """A critic updated five times per update of the network (DMD2's fake-score ratio)."""

    name = "alternating"

    def setup(self, run) -> None:
        torch.manual_seed(7)
        critic = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 1, 1))
        self.critic = run.add_module("critic", critic)
        run.add_optimizer("critic", ["critic"], lr=3e-3)
        run.add_optimizer("main", ["model"])

    def step(self, run) -> None:
        batch = run.batch(0)
        with torch.no_grad():
            fake = batch.latents + 0.1 * run.bundle.velocity(batch.latents, torch.full((4,), 0.5), batch.prompt, run.model)
        for _ in range(5):
            loss_c = (self.critic(fake).mean() - self.critic(batch.latents).mean()) ** 2 + self.critic(fake).pow(2).mean()
            run.update("critic", loss_c)
            run.log("loss/critic", loss_c)
        loss_g = flow_loss(run, run.model, batch) + 0.01 * self.critic(batch.latents + 0.1 * run.bundle.velocity(
            batch.latents, torch.full((4,), 0.5), batch.prompt, run.model)).mean()
        run.update("main", loss_g)
        run.log("loss", loss_g)


def test_two_optimizers_alternate_five_to_one_and_resume_exactly(tmp_path: Path):
    straight, resumed = straight_and_killed(tmp_path, Alternating, steps=6)
    steps = {name: int(next(iter(opt.state_dict()["state"].values()))["step"]) for name, opt in straight.optimizers.items()}
    assert steps == {"critic": 30, "main": 6}
    ckpt = tmp_path / "a" / "checkpoints" / "step-0000006"
    assert (ckpt / "optimizer-critic.safetensors").exists() and (ckpt / "critic.safetensors").exists()
    assert_same_trajectory(straight, resumed)


# --- a frozen reference ------------------------------------------------------------------------


class WithReference(Method):
    """A loss against a frozen copy of the starting network (DPO's reference)."""

    name = "reference"

    def setup(self, run) -> None:
        self.ref = run.add_module("reference", copy.deepcopy(run.bundle.net), trainable=False, saved="none")
        run.add_optimizer("main", ["model"])

    def step(self, run) -> None:
        batch = run.batch(0)
        t = torch.full((4,), 0.5)
        with torch.no_grad():
            v_ref = run.bundle.velocity(batch.latents, t, batch.prompt, self.ref)
        v = run.bundle.velocity(batch.latents, t, batch.prompt, run.model)
        loss = flow_loss(run, run.model, batch) + ((v - v_ref) ** 2).mean()
        run.update("main", loss)
        run.log("loss", loss)


def test_a_frozen_reference_stays_put_is_not_checkpointed_and_resumes(tmp_path: Path):
    start = {k: v.clone() for k, v in make_bundle().net.state_dict().items()}
    straight, resumed = straight_and_killed(tmp_path, WithReference, steps=6)
    ref = straight._modules["reference"]
    assert all(torch.equal(v, start[k]) for k, v in ref.state_dict().items()), "the reference must not train"
    assert not all(torch.equal(v, start[k]) for k, v in straight._modules["model"].state_dict().items())
    assert not (tmp_path / "a" / "checkpoints" / "step-0000006" / "reference.safetensors").exists()
    assert_same_trajectory(straight, resumed)


# --- an EMA target moved after each step --------------------------------------------------------


class WithTarget(Method):
    """A target network that follows the trained one by EMA after every step (consistency's theta-minus)."""

    name = "target"

    def setup(self, run) -> None:
        self.target = run.add_module("target", copy.deepcopy(run.bundle.net), trainable=False)
        run.add_optimizer("main", ["model"])
        self.seen: list[dict[str, torch.Tensor]] = []

    def step(self, run) -> None:
        batch = run.batch(0)
        t = torch.full((4,), 0.7)
        with torch.no_grad():
            v_target = run.bundle.velocity(batch.latents, t, batch.prompt, self.target)
        loss = ((run.bundle.velocity(batch.latents, t, batch.prompt, run.model) - v_target - 0.1) ** 2).mean()
        run.update("main", loss)
        run.log("loss", loss)

    def after_step(self, run) -> None:
        with torch.no_grad():
            for p_t, p in zip(self.target.parameters(), run.model.parameters()):
                p_t.lerp_(p, 0.2)
        self.seen.append({k: v.clone() for k, v in run.model.state_dict().items()})


def test_an_ema_target_moves_after_every_step_and_resumes(tmp_path: Path):
    start = {k: v.clone() for k, v in make_bundle().net.state_dict().items()}
    straight, resumed = straight_and_killed(tmp_path, WithTarget, steps=6)
    expected = start
    for weights in straight.method.seen:  # replay: target <- target + 0.2 (model - target), once per step
        expected = {k: expected[k] + 0.2 * (weights[k] - expected[k]) if expected[k].is_floating_point() else expected[k] for k in expected}
    got = straight._modules["target"].state_dict()
    assert len(straight.method.seen) == 6 and all(torch.allclose(got[k], expected[k], atol=1e-6) for k in got)
    assert (tmp_path / "a" / "checkpoints" / "step-0000006" / "target.safetensors").exists()
    assert_same_trajectory(straight, resumed)


# --- a rollout buffer consumed over several updates ---------------------------------------------


class Rollouts(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("x", torch.zeros(8, 4, 8, 8))
        self.register_buffer("target", torch.zeros(8, 4, 8, 8))


class WithRollouts(Method):
    """Sample a buffer from the current policy every 4 steps, then update on 2 of its items per step
    (Flow-GRPO's inner epochs); the buffer and the read position survive a checkpoint."""

    name = "rollouts"

    def setup(self, run) -> None:
        self.buffer = run.add_module("rollouts", Rollouts(), trainable=False)
        run.add_optimizer("main", ["model"])
        self.position = 0
        self.refills = 0

    def step(self, run) -> None:
        batch = run.batch(0)
        if run.step % 4 == 1:
            with torch.no_grad():
                x = torch.randn(8, 4, 8, 8, generator=batch.generator)
                prompt = PromptEmbeds(batch.prompt.states.repeat(2, 1, 1), batch.prompt.pooled.repeat(2, 1), batch.prompt.lengths.repeat(2))
                v = run.bundle.velocity(x, torch.full((8,), 0.9), prompt, run.model)
                self.buffer.x.copy_(x)
                self.buffer.target.copy_(x - 0.9 * v)
            self.position = 0
            self.refills += 1
        idx = slice(self.position, self.position + 2)
        self.position += 2
        v = run.bundle.velocity(self.buffer.x[idx], torch.full((2,), 0.9), batch.prompt[:2], run.model)
        loss = ((self.buffer.x[idx] - 0.9 * v - 0.95 * self.buffer.target[idx]) ** 2).mean()
        run.update("main", loss)
        run.log("loss", loss)

    def state(self) -> dict:
        return {"position": self.position, "refills": self.refills}

    def load_state(self, state: dict) -> None:
        self.position, self.refills = state.get("position", 0), state.get("refills", 0)


def test_a_rollout_buffer_is_consumed_over_several_updates_and_survives_a_kill(tmp_path: Path):
    straight, resumed = straight_and_killed(tmp_path, WithRollouts, steps=8, kill_at=3)
    assert straight.method.refills == 2 and straight.method.position == 8  # filled at steps 1 and 5, read 2 per step
    assert resumed.method.refills == 2  # step 4 read the buffer filled at step 1, restored from the checkpoint
    assert_same_trajectory(straight, resumed)


# --- LoRA: adapters only in checkpoints and EMA -------------------------------------------------


def test_a_lora_run_checkpoints_and_averages_only_the_adapters(tmp_path: Path):
    straight, resumed = straight_and_killed(tmp_path, lambda: [FlowMatching()], steps=6, lora=True)
    net = straight._modules["model"]
    adapters = adapter_parameters(net)
    ckpt = tmp_path / "a" / "checkpoints" / "step-0000006"
    saved = load_file(str(ckpt / "model.safetensors"))
    assert set(saved) == set(adapters) and all("lora_" in k for k in saved)
    ema = load_file(str(ckpt / "ema.safetensors"))
    assert sum(v.numel() for v in ema.values()) == sum(p.numel() for p in adapters.values()) + 1  # + the update counter
    full = make_bundle().net
    full_bytes = sum(p.numel() * 4 for p in full.parameters())
    lora_bytes = (ckpt / "model.safetensors").stat().st_size + (ckpt / "ema.safetensors").stat().st_size
    assert lora_bytes < 0.25 * full_bytes, (lora_bytes, full_bytes)  # measured: a few percent of one full copy
    assert_same_trajectory(straight, resumed)


def test_the_adapter_disabled_network_is_the_base_and_the_saved_lora_loads_in_diffusers(tmp_path: Path):
    base = make_bundle()
    tuned = make_bundle(lora=True)
    Trainer(tuned, [FlowMatching()], toy_batches, config(4, lr=1e-2, ema=0), tmp_path / "r", Quiet()).run(resume=False)
    batch = toy_batches(99)
    t = torch.full((4,), 0.5)
    with torch.no_grad():
        v_base = base.velocity(batch.latents, t, batch.prompt)
        v_tuned = tuned.velocity(batch.latents, t, batch.prompt)
        with adapters_disabled(tuned.net):
            v_ref = tuned.velocity(batch.latents, t, batch.prompt)
    assert torch.allclose(v_ref, v_base, atol=1e-6) and not torch.allclose(v_tuned, v_base, atol=1e-4)
    weights = save_lora(tuned.net, tmp_path / "lora")
    assert weights.name == "pytorch_lora_weights.safetensors" and weights.stat().st_size < 0.25 * sum(p.numel() * 4 for p in base.net.parameters())
    fresh = make_bundle()
    fresh.net.load_lora_adapter(str(tmp_path / "lora"), weight_name=weights.name, adapter_name="default", prefix=None)
    with torch.no_grad():
        v_loaded = fresh.velocity(batch.latents, t, batch.prompt)
    assert torch.allclose(v_loaded, v_tuned, atol=1e-5), (v_loaded - v_tuned).abs().max()


def test_declaring_a_module_twice_or_an_empty_optimizer_is_refused(tmp_path: Path):
    class Bad(Method):
        def setup(self, run) -> None:
            run.add_module("x", nn.Linear(2, 2), trainable=False)
            run.add_optimizer("x", ["x"])

    with pytest.raises(ValueError, match="no trainable parameters"):
        Trainer(make_bundle(), Bad(), toy_batches, config(1), tmp_path / "bad", Quiet())


class SelfEvaluating(Method):
    """A method with an evaluation of its own: the loop logs it at eval_every and at the end, with the sampling weights."""

    name = "self-evaluating"

    def step(self, run) -> None:
        loss = flow_loss(run, run.model, run.batch(0))
        run.update("main", loss)
        run.log("loss", loss)

    def evaluate(self, run, step: int, net: nn.Module) -> dict[str, float]:
        self.calls = getattr(self, "calls", []) + [(step, net.training)]
        return {"toy/evaluated_at": float(step)}


def test_a_methods_own_evaluation_is_logged_at_eval_every_and_at_the_end(tmp_path: Path):
    rows: list[tuple[int, dict]] = []

    class Recording(Quiet):
        def metrics(self, step: int, values: dict) -> None:
            rows.append((step, values))

    method = SelfEvaluating()
    Trainer(make_bundle(), method, toy_batches, config(5, eval_every=2), tmp_path / "e", Recording()).run(resume=False)
    assert method.calls == [(2, False), (4, False), (5, False)]  # evaluated in eval mode, at 2, 4 and the end
    assert [s for s, v in rows if "toy/evaluated_at" in v] == [2, 4, 5]


# --- a non-finite loss ---------------------------------------------------------------------------


class Poisoned(Method):
    """The flow loss, made NaN (or inf) at chosen steps, as a bad batch or an overflow would."""

    name = "poisoned"

    def __init__(self, bad: set[int]):
        self.bad = bad

    def step(self, run) -> None:
        batch = run.batch(0)
        loss = flow_loss(run, run.model, batch)
        if run.step in self.bad:
            loss = loss * (float("nan") if run.step % 2 else float("inf"))
        run.update("main", loss)
        run.log("loss", loss.detach())


def test_a_non_finite_loss_is_skipped_and_counted_and_too_many_stop_the_job(tmp_path: Path):
    class Logs(Quiet):
        def __init__(self):
            self.lines: list[str] = []

        def log(self, text: str) -> None:
            self.lines.append(text)

    reporter = Logs()
    tr = Trainer(make_bundle(), Poisoned({3, 4}), toy_batches, config(6, ema=0.0, log_every=100), tmp_path / "a", reporter)
    weights: dict[int, dict[str, torch.Tensor]] = {}
    after = tr.method.after_step
    tr.method.after_step = lambda run: (weights.__setitem__(run.step, {k: v.clone() for k, v in run.model.state_dict().items()}), after(run))
    assert tr.run(resume=False).state == "done"
    assert all(torch.equal(weights[2][k], weights[4][k]) for k in weights[2])  # steps 3 and 4 applied nothing
    assert not all(torch.equal(weights[4][k], weights[5][k]) for k in weights[4])  # step 5 trained again
    assert all(torch.isfinite(v).all() for v in tr.model.state_dict().values() if v.is_floating_point())
    skips = [line for line in reporter.lines if "update skipped" in line]
    assert len(skips) == 2 and "step 3: non-finite main loss nan" in skips[0] and "(2 in a row, 2 in all)" in skips[1]
    assert int(next(iter(tr.optimizers["main"].state_dict()["state"].values()))["step"]) == 4  # 6 steps, 2 skipped

    stopped = Trainer(make_bundle(), Poisoned(set(range(4, 20))), toy_batches, config(12, ema=0.0, checkpoint_every=3, max_bad_steps=3),
                      tmp_path / "b", Quiet())
    with pytest.raises(FloatingPointError, match="step 6: 3 non-finite losses in a row.*last checkpoint is intact"):
        stopped.run(resume=False)
    resumed = Trainer(make_bundle(), Poisoned(set()), toy_batches, config(12, ema=0.0, checkpoint_every=3), tmp_path / "b", Quiet())
    assert resumed.resume() and resumed.step == 3  # the last good checkpoint loads
    assert all(torch.isfinite(v).all() for v in resumed.model.state_dict().values() if v.is_floating_point())


def test_a_damaged_checkpoint_is_caught_by_its_checksum_and_the_one_before_it_is_used(tmp_path: Path):
    """The newest checkpoint's weights are truncated after it was written: resuming names it in the log,
    loads the one before it and continues on the straight run's trajectory; with every checkpoint
    damaged it refuses rather than start over."""

    class Logs(Quiet):
        def __init__(self):
            self.lines: list[str] = []

        def log(self, text: str) -> None:
            self.lines.append(text)

    straight = Trainer(make_bundle(), ObjectivesMethod([FlowMatching()]), toy_batches, config(9, keep_checkpoints=3), tmp_path / "a", Quiet())
    straight.run(resume=False)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    newest = tmp_path / "b" / "checkpoints" / "step-0000009" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-100])
    logs = Logs()
    resumed = Trainer(make_bundle(), ObjectivesMethod([FlowMatching()]), toy_batches, config(9, keep_checkpoints=3), tmp_path / "b", logs)
    assert resumed.resume() and resumed.step == 6
    assert any("step-0000009 is damaged: model.safetensors does not match its checksum" in line for line in logs.lines)
    resumed.run(resume=False)
    assert_same_trajectory(straight, resumed)
    for ckpt in (tmp_path / "b" / "checkpoints").glob("step-*"):
        (ckpt / "rng.safetensors").write_bytes(b"")
    with pytest.raises(RuntimeError, match="every checkpoint .* is damaged"):
        Trainer(make_bundle(), ObjectivesMethod([FlowMatching()]), toy_batches, config(9), tmp_path / "b", Quiet()).resume()


def test_a_full_disk_during_a_checkpoint_loses_nothing_and_the_run_resumes_after_space_is_freed(tmp_path: Path, monkeypatch):
    """The disk fills while the step-6 checkpoint is written (the filesystem is the fake here): the job
    stops with "disk full at <folder>", no half-written checkpoint is left, step 3's still loads, and
    once space is back the run resumes from it onto the straight run's trajectory."""
    import errno

    import backend.train.checkpoint as checkpoint
    from backend.store import DiskFull

    straight = Trainer(make_bundle(), ObjectivesMethod([FlowMatching()]), toy_batches, config(9), tmp_path / "a", Quiet())
    straight.run(resume=False)
    real_save = checkpoint.save_file
    calls = {"n": 0}

    def filling(tensors, path, *a, **k):
        calls["n"] += 1
        if "step-0000006" in path and calls["n"] > 2:  # part of the checkpoint is on disk when space runs out
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real_save(tensors, path, *a, **k)

    monkeypatch.setattr(checkpoint, "save_file", filling)
    run = Trainer(make_bundle(), ObjectivesMethod([FlowMatching()]), toy_batches, config(9), tmp_path / "b", Quiet())
    with pytest.raises(DiskFull, match=r"disk full at .*checkpoints: the checkpoint of step 6 \(the previous one is intact\)"):
        run.run(resume=False)
    ckpts = tmp_path / "b" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-0000003"]  # no partial folder left
    monkeypatch.setattr(checkpoint, "save_file", real_save)  # space freed
    resumed = Trainer(make_bundle(), ObjectivesMethod([FlowMatching()]), toy_batches, config(9), tmp_path / "b", Quiet())
    assert resumed.resume() and resumed.step == 3
    resumed.run(resume=False)
    assert_same_trajectory(straight, resumed)


def test_a_kill_inside_a_checkpoint_write_leaves_the_previous_one_to_resume_from(tmp_path: Path):
    """What a SIGKILL in the middle of writing step 9's checkpoint leaves: a partial folder with some of
    its files. Resuming ignores it (``latest`` still names step 6), continues on the straight run's
    trajectory, and the next checkpoint clears the partial folder away."""
    straight = Trainer(make_bundle(), ObjectivesMethod([FlowMatching()]), toy_batches, config(12), tmp_path / "a", Quiet())
    straight.run(resume=False)
    first = Trainer(make_bundle(), ObjectivesMethod([FlowMatching()]), toy_batches, config(12), tmp_path / "b", Quiet())
    first.cfg.steps = 6
    first.run(resume=False)
    root = tmp_path / "b" / "checkpoints"
    partial = root / ".step-0000009.partial"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes((root / "step-0000006" / "model.safetensors").read_bytes()[:1000])
    resumed = Trainer(make_bundle(), ObjectivesMethod([FlowMatching()]), toy_batches, config(12), tmp_path / "b", Quiet())
    assert resumed.resume() and resumed.step == 6
    resumed.run(resume=False)
    assert_same_trajectory(straight, resumed)
    assert not partial.exists() and (root / "latest").read_text().strip() == "step-0000012"
