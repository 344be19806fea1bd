"""The training loop: epochs, a checkpoint per epoch, the train log, the best epoch, resume.

Determinism: nothing random carries over from one epoch to the next. Shuffling, the attack's
random starts, label noise, extra-data draws and Entropy-SGD noise use generators derived from
(seed, purpose, epoch[, rank]); the global generator (augmentation, dropout) is seeded the same
way inside `fork_rng` per epoch; the learning rate is a pure function of (epoch, step). So a run
resumed from `trainer_state.pt` after a kill repeats the interrupted epoch exactly (bitwise on
the CPU). The run directory: `rundir.py`; DDP: `distributed.py`; the config: `config.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from flatcli import checkpoints, data, runtime, tables
from flatcli.config import TrainConfig, config_hash
from flatcli.errors import FlatcliError
from flatcli.training import methods, regularizers, rundir, schedules
from flatcli.training.batches import Batches
from flatcli.training.config import config_dict, resolve_config
from flatcli.training.distributed import (
    Distributed,
    all_reduce,
    barrier,
    broadcast_error,
    device_for,
    distributed_from_env,
    process_group,
)
from flatcli.training.rundir import LOG_TABLE, RUN_FILE, STATE_FILE, read_run

__all__ = [
    "LOG_TABLE",
    "RUN_FILE",
    "STATE_FILE",
    "TrainEvent",
    "TrainResult",
    "TrainingDiverged",
    "read_run",
    "resolve_config",
    "train",
]
HELDOUT_BATCH = 512


class TrainingDiverged(FlatcliError):
    """A non-finite training loss: the run stops; the last complete epoch stays (exit 1)."""

    exit_code = 1


@dataclass
class TrainEvent:
    """Progress for the CLI: kind is start | resume | batch | epoch | done | complete."""

    kind: str
    epoch: int  # 1-based; for `batch`, the epoch in progress
    epochs: int
    message: str = ""
    row: dict | None = None
    step: int = 0
    steps: int = 0


@dataclass
class TrainResult:
    run_dir: Path
    config: TrainConfig
    config_hash: str
    rows: list[dict]  # the train log, by epoch
    best: dict | None
    resumed_from: int  # epochs already done when this call started
    is_main: bool = True  # False on DDP ranks > 0 (they write and print nothing)


def train(
    config: TrainConfig,
    out: str | os.PathLike,
    force: bool = False,
    on_event: Callable[[TrainEvent], None] | None = None,
) -> TrainResult:
    """Train (or resume, or extend) the run in `out`; returns its log."""
    dist_info = distributed_from_env()
    config = resolve_config(dataclasses.replace(config, world_size=dist_info.world))
    device = device_for(dist_info, runtime.resolve_device(config.device))
    with process_group(dist_info, device):
        return _Trainer(config, Path(out), device, dist_info, on_event).run(force)


class _Trainer:
    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        device: torch.device,
        dist_info: Distributed,
        on_event,
    ):
        self.config = config
        self.run_dir = run_dir
        self.device = device
        self.dist = dist_info
        self.emit = (on_event or (lambda event: None)) if dist_info.main else (lambda event: None)
        self.chash = config_hash(config)
        self.run_name = run_dir.resolve().name or "run"
        self.spec = data.get_spec(config.dataset)
        self.amp_dtype = torch.bfloat16 if config.amp == "bf16" else None

    # -- setup ------------------------------------------------------------------------------

    def _build(self) -> None:
        from flatcli import models
        from flatcli.attacks.presets import build_attack

        c, spec = self.config, self.spec
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(runtime.unit_seed(c.seed, "init"))
            net = models.build(
                c.arch, spec.num_classes, spec.in_channels, spec.mean, spec.std, **arch_kwargs(c)
            )
        net = net.to(self.device)
        if self.device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.model = net
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(net, device_ids=ids)
        self.optimizer = torch.optim.SGD(
            net.parameters(),
            lr=c.lr,
            momentum=c.momentum,
            nesterov=c.nesterov,
            weight_decay=c.weight_decay,
        )
        self.method = methods.from_config(c, self.amp_dtype)
        self.heldout_attack = build_attack(c.heldout_attack, c.norm, c.eps, None, c.seed)
        self.entropy = None
        if c.optimizer == "entropy-sgd":
            self.entropy = regularizers.EntropySGD.from_config(list(net.parameters()), c)
        self.augmenter = (
            None if c.augment == "none" else regularizers.Augmenter(c.augment, self.spec.image_size)
        )

    def _load_data(self) -> None:
        c = self.config
        self.x, self.y = data.load_split(c.dataset, "train", c.train_examples, c.data_dir)
        self.extra = None
        if c.extra_data is not None:
            self.extra = regularizers.load_extra(
                c.extra_data, self.spec.in_channels, self.spec.image_size, self.spec.num_classes
            )
        self.x_held = self.y_held = None
        if self.dist.main:
            self.x_held, self.y_held = data.load_split(
                c.dataset, "heldout", c.heldout_examples, c.data_dir
            )

    def _load_state(self) -> int:
        """Restore the last complete epoch from `trainer_state.pt`; returns it (0: fresh)."""
        start, self.best = rundir.load_state(self.run_dir, self.chash, self.net, self.optimizer)
        return start

    # -- run ------------------------------------------------------------------------------

    def run(self, force: bool) -> TrainResult:
        c = self.config
        message, self.extended = None, None
        if self.dist.main:
            try:
                self.extended = rundir.prepare(self.run_dir, c, self.chash, force)
            except FlatcliError as err:
                message = str(err)
        broadcast_error(self.dist, message)
        self._build()
        self._load_data()
        start = self.done = self._load_state()
        self.started = time.time()
        if start >= c.epochs:
            done = f"{self.run_dir}: all {c.epochs} epochs done already"
            self.emit(TrainEvent("complete", start, c.epochs, done))
            return self._result(start)
        self._write_run_json("running", resumed_at=start)
        self.emit(
            TrainEvent("resume" if start else "start", start, c.epochs, self._describe(start))
        )
        for epoch in range(start, c.epochs):
            try:
                self._epoch(epoch)
            except TrainingDiverged as err:
                if self.dist.main:
                    self._write_run_json("diverged", message=str(err))
                raise
        if self.dist.main:
            self._write_run_json("done")
        self.emit(TrainEvent("done", c.epochs, c.epochs, f"best epoch {self._best_text()}"))
        return self._result(start)

    def _describe(self, start: int) -> str:
        c = self.config
        attack = f"{c.attack} eps={c.eps:g} ({c.norm})" if c.attack else "no attack"
        head = f"resuming at epoch {start + 1}" if start else "training"
        if self.extended:
            head = f"extending from {self.extended['from_epochs']} epochs, at epoch {start + 1}"
        return (
            f"{head}: {c.method} {c.arch} on {c.dataset} ({len(self.y)} examples), {attack}, "
            f"{c.epochs} epochs, {c.schedule} lr {c.lr:g}, device {self.device}"
            + (f", {self.dist.world} processes" if self.dist.active else "")
        )

    def _best_text(self) -> str:
        b = self.best
        if not b:
            return "none (no held-out evaluation)"
        return f"{b['epoch']} (held-out robust error {b['heldout_robust_err']:.4f})"

    def _steps(self) -> tuple[int, int, int]:
        """(labelled per step, extra per step, steps per epoch) for this process."""
        per_rank = self.config.batch_size // self.dist.world
        n_extra = round(self.config.extra_fraction * per_rank) if self.extra is not None else 0
        n_lab = per_rank - n_extra
        shard = math.ceil(len(self.y) / self.dist.world)
        return n_lab, n_extra, math.ceil(shard / n_lab)

    def _lr(self, epoch: int, step: int, steps: int) -> float:
        c = self.config
        return schedules.learning_rate(
            c.schedule,
            c.lr,
            epoch,
            step,
            steps,
            c.epochs,
            c.milestones or (),
            c.lr_factor,
            c.cyclic_peak,
        )

    def _epoch(self, epoch: int) -> None:
        c = self.config
        t0 = time.perf_counter()
        n_lab, n_extra, steps = self._steps()
        rank = self.dist.rank
        gens = {
            "attack": runtime.generator(c.seed, "attack", epoch, rank),
            "labels": runtime.generator(c.seed, "labels", epoch, rank),
            "entropy": runtime.generator(c.seed, "entropy", epoch),  # same on every rank
        }
        passes = c.entropy_steps if self.entropy is not None else 1  # a batch per Langevin step
        extra_order = None
        if n_extra:
            g = runtime.generator(c.seed, "extra", epoch, rank)
            m = len(self.extra[1])
            need = math.ceil(passes * steps * n_extra / m)
            extra_order = torch.cat([torch.randperm(m, generator=g) for _ in range(need)])
        batches = Batches(self, epoch, passes, steps, n_lab, n_extra, extra_order)
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(runtime.unit_seed(c.seed, "global", epoch, rank))
            stats = self._train_epoch(epoch, batches, steps, gens)
        all_reduce(self.dist, stats)
        train_time = time.perf_counter() - t0
        lr = self._lr(epoch, steps - 1, steps)
        done = epoch + 1
        if self.dist.main:
            held = self._heldout(done)
            path = self._save_checkpoint(done)
            row = self._row(done, lr, stats, held, path, train_time, time.perf_counter() - t0)
            tables.write_part(
                self.run_dir, LOG_TABLE, rundir.log_key(self.run_name, done), self.chash, [row]
            )
            if held is not None:
                candidate = {
                    "epoch": done,
                    "heldout_robust_err": held["heldout_robust_err"],
                    "heldout_robust_loss": held["heldout_robust_loss"],
                }
                if self.best is None or _better(candidate, self.best):
                    self.best = candidate
            rundir.save_state(
                self.run_dir, self.chash, done, self.net, self.optimizer, self.best, self.dist.world
            )
            self.done = done
            self._write_run_json("running" if done < c.epochs else "done")
        else:
            row = None
        barrier(self.dist)
        self.emit(TrainEvent("epoch", done, c.epochs, row=row))

    def _train_epoch(self, epoch, batches, steps, gens) -> torch.Tensor:
        """One epoch of `steps` updates; returns [loss sum, examples, clean correct, robust
        correct] (float64) of the batches at the current weights."""
        from flatcli import weights

        c, net, method = self.config, self.net, self.method
        awp = c.method == "awp" and epoch >= c.awp_warmup
        clip_params = [p for _, p in weights.layers(net)] if c.weight_clip else None
        sums = torch.zeros(4, dtype=torch.float64)
        net.train()

        def closure(k: int, step: int):
            """Gradient of batch k at the current weights: (loss, logits, labels, clean)."""
            xb, yb = batches[k]
            target = yb
            if c.label_noise > 0:
                target = regularizers.noisy_labels(
                    yb,
                    c.label_noise,
                    self.spec.num_classes,
                    gens["labels"],
                    c.label_noise_classes,
                )
            x_adv, clean_logits = None, None
            if method.attack is not None:
                net.eval()
                with torch.no_grad(), methods.autocast(self.device, self.amp_dtype):
                    clean_logits = net(xb)
                x_adv = method.adversarial(net, xb, yb, gens["attack"])
                net.train()
            offset = None
            if awp:
                offset = methods.awp_offset(
                    net, x_adv, target, c.awp_gamma, self.amp_dtype, c.awp_layers
                )
            self.optimizer.zero_grad(set_to_none=True)
            with weights.perturbed(net, offset) if offset else contextlib.nullcontext():
                loss, logits = method.loss(self.model, xb, x_adv, target)
                self._check_finite(loss, epoch, step)
                loss.backward()
            return loss.detach(), logits.detach(), yb, clean_logits

        for step in range(steps):
            lr = self._lr(epoch, step, steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if self.entropy is not None:  # a new batch and attack for every Langevin step
                first = self.entropy.gradient(
                    lambda i, step=step: closure(step * c.entropy_steps + i, step),
                    gens["entropy"],
                )
            else:
                first = closure(step, step)
            loss, logits, yb, clean_logits = first
            self.optimizer.step()
            if clip_params:
                regularizers.clip_weights(clip_params, c.weight_clip)
            n = len(yb)
            right = (logits.argmax(1) == yb).sum().item()
            clean_right = (
                right if clean_logits is None else (clean_logits.argmax(1) == yb).sum().item()
            )
            sums += torch.tensor(
                [loss.item() * n, n, clean_right, right if clean_logits is not None else 0],
                dtype=torch.float64,
            )
            self.emit(TrainEvent("batch", epoch + 1, c.epochs, step=step + 1, steps=steps))
        return sums

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0])
        all_reduce(self.dist, bad)
        if bad.item() > 0:
            last = epoch  # the last complete epoch
            kept = "no epoch completed yet" if last == 0 else f"epoch {last} stays (resume state)"
            saved = sorted(self.run_dir.glob("epoch_*.safetensors"))
            if saved:
                kept += f", last checkpoint {saved[-1].name}"
            raise TrainingDiverged(
                f"non-finite training loss ({loss.item()}) in epoch {epoch + 1}, batch {step + 1}:"
                f" training stopped; {kept}; try a lower --lr"
            )

    def _heldout(self, epoch: int) -> dict | None:
        c = self.config
        if epoch % c.heldout_every and epoch != c.epochs:
            return None
        from flatcli import engine

        result = engine.robust_losses(
            self.net,
            self.x_held,
            self.y_held,
            [self.heldout_attack],
            (c.seed, "heldout"),
            HELDOUT_BATCH,
        )
        self.net.train()
        outcome = result.robust[self.heldout_attack.name]
        return {
            "heldout_n": len(self.y_held),
            "heldout_clean_err": engine.error_rate(result.clean_correct),
            "heldout_clean_loss": result.clean_loss.mean().item(),
            "heldout_robust_err": engine.error_rate(outcome.correct),
            "heldout_robust_loss": outcome.loss.mean().item(),
        }

    def _checkpoint_config(self) -> dict:
        return {**config_dict(self.config), "config_hash": self.chash, "run": self.run_name}

    def _save_checkpoint(self, epoch: int) -> Path | None:
        c = self.config
        if epoch % c.save_every and epoch != c.epochs:
            return None
        path = self.run_dir / checkpoints.checkpoint_name(epoch)
        return checkpoints.save_checkpoint(
            path, self.net, c.arch, arch_kwargs(c), c.dataset, epoch, self._checkpoint_config()
        )

    def _row(self, epoch, lr, stats, held, path, train_time, wall) -> dict:
        c = self.config
        loss_sum, n, clean_right, robust_right = stats.tolist()
        return {
            "run": self.run_name,
            "checkpoint": None if path is None else str(path),
            "epoch": epoch,
            "dataset": c.dataset,
            "arch": c.arch,
            "split": "train",
            "n_examples": len(self.y) + (0 if self.extra is None else len(self.extra[1])),
            "eps": c.eps,
            "norm": c.norm,
            "seed": c.seed,
            "config_hash": self.chash,
            "schema_version": tables.SCHEMA_VERSION,
            **runtime.provenance(self.device, "bfloat16" if self.amp_dtype else "float32"),
            "wall_time_s": wall,
            "created_at": runtime.now_iso(),
            "method": c.method,
            "lr": lr,
            "train_loss": loss_sum / n,
            "train_clean_err": 1.0 - clean_right / n,
            "train_robust_err": None if c.method == "clean" else 1.0 - robust_right / n,
            "heldout_attack": c.heldout_attack,
            **(held or {}),
            "epoch_time_s": train_time,
        }

    def _write_run_json(
        self, status: str, resumed_at: int | None = None, message: str | None = None
    ) -> None:
        if not self.dist.main:
            return
        best = dict(self.best) if self.best else None
        if best is not None:
            name = checkpoints.checkpoint_name(best["epoch"])
            best["checkpoint"] = name if (self.run_dir / name).exists() else None
        rundir.write_run_json(
            self.run_dir,
            self.config,
            self.chash,
            {
                "run": self.run_name,
                "status": status,
                "message": message,
                "arch_kwargs": arch_kwargs(self.config),
                "epochs_done": self.done,
                "best": best,
                "world_size": self.dist.world,
                "device": runtime.device_label(self.device),
            },
            resumed_at,
        )

    def _result(self, start: int) -> TrainResult:
        rows = []
        if self.dist.main:
            for epoch in range(1, self.config.epochs + 1):
                key = rundir.log_key(self.run_name, epoch)
                if tables.is_done(self.run_dir, LOG_TABLE, key, self.chash):
                    rows += tables.read_part(self.run_dir, LOG_TABLE, key, self.chash)
        return TrainResult(
            self.run_dir, self.config, self.chash, rows, self.best, start, self.dist.main
        )


def _better(a: dict, b: dict) -> bool:
    """Lower held-out robust error, then lower robust loss; the earlier epoch wins ties."""

    def key(d):
        loss = d["heldout_robust_loss"]
        return (d["heldout_robust_err"], loss if loss == loss else math.inf)

    return key(a) < key(b)


def arch_kwargs(config) -> dict:
    """Architecture keyword arguments a run's model is built with (stored in every checkpoint)."""
    return {} if config.width is None else {"width": config.width}
