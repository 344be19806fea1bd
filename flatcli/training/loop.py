"""The training loop: epochs, a checkpoint per epoch, the train log, the best epoch, resume.

Every draw comes from a generator derived from (seed, purpose, epoch[, rank]), so a resumed run
repeats the interrupted epoch exactly (bitwise on the CPU); docs/method.md, training.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from flatcli import checkpoints, data, runtime, tables
from flatcli.attacks import precision
from flatcli.config.commands import TrainConfig, config_hash
from flatcli.errors import FlatcliError
from flatcli.models import arch_defaults
from flatcli.training import methods, regularizers, rundir, schedules
from flatcli.training.batches import Batches, Resident, extra_draws
from flatcli.training.config import config_dict, extra_per_batch, momentum_of, resolve_config
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
from flatcli.training.step import Step, Tally, memory_format

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
    config, note = precision.usable(config, device, "amp")
    with process_group(dist_info, device):
        return _Trainer(config, Path(out), device, dist_info, on_event, note).run(force)


class _Trainer:
    def __init__(
        self,
        config: TrainConfig,
        run_dir: Path,
        device: torch.device,
        dist_info: Distributed,
        on_event,
        note: str | None = None,
    ):
        self.config, self.note = config, note
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
        self.memory_format = memory_format(net, self.device, self.amp_dtype)
        net = net.to(self.device, memory_format=self.memory_format)
        self.net = net
        self.model = net
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(net, device_ids=ids)
        momentum, nesterov = momentum_of(c)
        self.optimizer = torch.optim.SGD(
            net.parameters(), c.lr, momentum, weight_decay=c.weight_decay, nesterov=nesterov
        )
        self.method = methods.from_config(c, self.amp_dtype)
        self.heldout_attack = build_attack(c.heldout_attack, c.norm, c.eps, None, c.seed)
        self.entropy = None
        if c.optimizer == "entropy-sgd":
            self.entropy = regularizers.EntropySGD.from_config(list(net.parameters()), c)
        self.augmenter = (
            None if c.augment == "none" else regularizers.Augmenter(c.augment, self.spec.image_size)
        )
        n_lab, n_extra, _ = self._steps()
        awp = (c.awp_gamma, c.awp_layers, c.awp_mode)
        self.step = Step(
            net, self.model, self.method, self.optimizer, self.amp_dtype, c.compile,
            self.device, n_lab + n_extra, awp,
        )  # fmt: skip

    def _load_data(self) -> None:
        """The training split (and extra data) moved to the device once; rank 0's held-out split
        too."""
        c = self.config
        x, y = data.load_split(c.dataset, "train", c.train_examples, c.data_dir)
        extra = None
        if c.extra_data is not None:
            extra = regularizers.load_extra(
                c.extra_data, self.spec.in_channels, self.spec.image_size, self.spec.num_classes
            )
        self.data = Resident.on(self.device, x, y, extra)
        self.x_held = self.y_held = None
        if self.dist.main:
            held = data.load_split(c.dataset, "heldout", c.heldout_examples, c.data_dir)
            self.x_held, self.y_held = (t.to(self.device) for t in held)

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
        self._load_data()
        self._build()
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
        head = f"resuming at epoch {start + 1}: " if start else ""
        if self.extended:
            head = f"extending from {self.extended['from_epochs']} epochs, at epoch {start + 1}: "
        return (
            f"{head}{c.method} {c.arch} on {c.dataset} ({len(self.data.y)} examples), {attack}, "
            f"{c.epochs} epochs, {c.schedule} lr {c.lr:g}, device {self.device}"
            + (f", {self.dist.world} processes" if self.dist.active else "")
            + (", compiled (the first epoch includes compiling)" if self.step.compiled else "")
            + (f"; {self.note}" if self.note else "")
        )

    def _best_text(self) -> str:
        b = self.best
        if not b:
            return "none (no held-out evaluation)"
        return f"{b['epoch']} (held-out robust error {b['heldout_robust_err']:.4f})"

    def _steps(self) -> tuple[int, int, int]:
        """(labelled per step, extra per step, steps per epoch) for this process: with extra data
        as many steps as without (`same`, the paper's code) or one pass over the labelled shard."""
        c, per_rank = self.config, self.config.batch_size // self.dist.world
        n_extra = extra_per_batch(c.extra_fraction, per_rank, c.extra_steps) if c.extra_data else 0
        n_lab = per_rank - n_extra
        shard = math.ceil(len(self.data.y) / self.dist.world)
        per_step = n_lab if c.extra_steps == "labelled-pass" else per_rank
        return n_lab, n_extra, math.ceil(shard / per_step)

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
            "attack": self._generator("attack", epoch, rank),
            "labels": self._generator("labels", epoch, rank),
            "entropy": self._generator("entropy", epoch),  # same on every rank
        }
        passes = c.entropy_steps if self.entropy is not None else 1  # a batch per Langevin step
        extra_order = None
        if n_extra:
            g = runtime.generator(c.seed, "extra", epoch, rank)
            extra_order = extra_draws(len(self.data.extra[1]), passes * steps * n_extra, g,
                                      c.extra_steps == "same")  # fmt: skip
        augment = self._generator("augment", epoch, rank)
        batches = Batches(
            self, self.data, epoch, passes, steps, n_lab, n_extra, extra_order, augment
        )
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(runtime.unit_seed(c.seed, "global", epoch, rank))
            tally = self._train_epoch(epoch, batches, steps, gens)
        totals = tally.totals()
        all_reduce(self.dist, totals)
        totals = totals.tolist()  # the epoch's one read of the device
        self._check_finite(tally, totals[4:], epoch)
        stats = totals[:4]
        train_time = time.perf_counter() - t0
        lr = self._lr(epoch, steps - 1, steps)
        done = epoch + 1
        if self.dist.main:
            held = self._heldout(done)
            path = self._save_checkpoint(done)
            row = self._row(done, (lr, steps), stats, held, path, train_time, t0)
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

    def _generator(self, *keys) -> torch.Generator:
        """The generator of one work unit (the run's seed and `keys`), on the training device so
        that drawing from it never waits on the host (on the CPU: `runtime.generator`)."""
        g = torch.Generator(device=self.device)
        return g.manual_seed(runtime.unit_seed(self.config.seed, *keys))

    def _train_epoch(self, epoch, batches, steps, gens) -> Tally:
        """One epoch of `steps` updates; returns its totals, still on the device (the batches'
        losses and correct counts at the weights they were trained at)."""
        c, net = self.config, self.net
        awp = c.method == "awp" and epoch >= c.awp_warmup
        clip_params = regularizers.clipped(net, c.weight_clip_layers) if c.weight_clip else None
        tally = Tally(steps, self.device)
        net.train()

        def closure(k: int):
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
            return (*self.step.gradient(xb, yb, target, gens["attack"], awp), yb)

        for step in range(steps):
            lr = self._lr(epoch, step, steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if self.entropy is not None:  # a new batch and attack for every Langevin step
                first = self.entropy.gradient(
                    lambda i, step=step: closure(step * c.entropy_steps + i), gens["entropy"]
                )
            else:
                first = closure(step)
            loss, logits, clean_logits, yb = first
            self.optimizer.step()
            if clip_params:
                regularizers.clip_weights(clip_params, c.weight_clip)
            tally.add(step, loss, logits, yb, clean_logits)
            self.emit(TrainEvent("batch", epoch + 1, c.epochs, step=step + 1, steps=steps))
        return tally

    def _check_finite(self, tally: Tally, bad: list[float], epoch: int) -> None:
        """Stop (TrainingDiverged) if a step's loss was not finite on any rank; `bad`: per step,
        the number of ranks where it was not. The epoch is not saved: the last complete one
        stays."""
        first = next((i for i, b in enumerate(bad) if b > 0), None)
        if first is None:
            return
        loss = tally.losses[first].item()
        kept = "no epoch completed yet" if epoch == 0 else f"epoch {epoch} stays (resume state)"
        saved = sorted(self.run_dir.glob("epoch_*.safetensors"))
        if saved:
            kept += f", last checkpoint {saved[-1].name}"
        raise TrainingDiverged(
            f"non-finite training loss ({loss}) in epoch {epoch + 1}, batch {first + 1}:"
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

    def _row(self, epoch, lr_steps, stats, held, path, train_time, t0) -> dict:
        c, extra, (lr, steps) = self.config, self.data.extra, lr_steps
        wall = time.perf_counter() - t0
        loss_sum, n, clean_right, robust_right = stats
        return {
            "run": self.run_name,
            "checkpoint": None if path is None else str(path),
            "epoch": epoch,
            "dataset": c.dataset,
            "arch": c.arch,
            "input_normalization": checkpoints.model_normalization(self.net),
            "split": "train",
            "n_examples": len(self.data.y) + (0 if extra is None else len(extra[1])),
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
            "steps": steps,
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
    """Architecture keyword arguments a run's model is built with (stored in every checkpoint);
    the width is written even where it is the architecture's default, so readers see it."""
    width = config.width if config.width is not None else arch_defaults(config.arch).get("width")
    return {} if width is None else {"width": width}
