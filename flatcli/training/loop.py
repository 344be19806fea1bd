"""The training loop: epochs, a checkpoint per epoch, the train log, early-stopping choice, resume,
DDP.

A run directory holds:
- `run.json`: the resolved configuration, its hash, versions, model description (arch, kwargs,
  classes, channels, normalization: enough to rebuild the model without flags), start/end times,
  status, and `best` (the epoch with the lowest held-out robust error, ties broken by the
  held-out robust loss, then by the earlier epoch).
- `epoch_NNNN.safetensors` + `epoch_NNNN.json` every `save_every` epochs and at the last one
  (`flatcli.checkpoints.save_checkpoint`; the sidecar's `config` holds the method and
  regularizer settings), which `flatcli attack RUN_DIR` discovers with their epoch numbers.
- `train_log/<run>__eNNNN__<hash8>.parquet`: one row per epoch (`tables.SCHEMAS["train_log"]`).
- `trainer_state.pt`: the resume point, written last in every epoch (atomically, torch.save
  of tensors/dicts/lists/numbers only, loadable with `weights_only=True`): model and optimizer
  state, epoch, best so far. A name that checkpoint discovery ignores.

Determinism and resume: nothing random carries over from one epoch to the next. The shuffling
(DistributedSampler's seed + epoch), the attack's random starts, label noise, extra-data draws
and Entropy-SGD noise use generators derived from (seed, purpose, epoch[, rank]), and the global
generator (augmentation, dropout) is seeded the same way inside `fork_rng` for each epoch. The
learning rate is a pure function of (epoch, step). So resuming from `trainer_state.pt` after a
kill at any moment (mid-epoch, mid-write) repeats the interrupted epoch exactly: on the CPU the
final checkpoint and log are bitwise those of an uninterrupted run. Files of an interrupted epoch
(a checkpoint or log part written before the state) are rewritten with the same contents.

DDP: under `torchrun` (WORLD_SIZE > 1) every process runs this loop on its shard of each epoch
(DistributedSampler; --batch-size is the global batch, split evenly); gradients are averaged by
DistributedDataParallel; attacks (and AWP's offset) are computed per process on the bare module;
rank 0 evaluates the held-out split and writes every file, the others wait at a barrier.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from flatcli import __version__, checkpoints, data, runtime, tables
from flatcli.config import (
    METHOD_DEFAULTS,
    TRAIN_DEFAULTS,
    TRAIN_FALLBACK,
    TrainConfig,
    config_hash,
    hashed_fields,
)
from flatcli.errors import FlatcliError, UsageError
from flatcli.files import atomic_write, atomic_write_text
from flatcli.training import methods, regularizers, schedules

RUN_FILE = "run.json"
STATE_FILE = "trainer_state.pt"
LOG_TABLE = "train_log"
RUN_FORMAT = "flatcli-run"
STATE_FORMAT = "flatcli-trainer-state"
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


# ---------------------------------------------------------------------------------------------
# configuration


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def _finite_positive(flag: str, value: float) -> None:
    _check(math.isfinite(value) and value > 0, f"{flag} must be positive, got {value:g}")


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fill every default (per dataset and per option) and validate; `UsageError` (one line) on
    bad input, before any work. The result is explicit: resolving it again changes nothing."""
    from flatcli import models
    from flatcli.attacks.presets import build_attack, preset
    from flatcli.evaluation import check_eps

    c = config
    _check(
        c.method in methods.METHODS,
        f"unknown method {c.method!r}; choose one of {', '.join(methods.METHODS)}",
    )
    spec = data.get_spec(c.dataset)
    defaults = TRAIN_DEFAULTS.get(c.dataset, TRAIN_FALLBACK)
    arch = c.arch or spec.default_arch
    _check(
        arch in models.ARCHITECTURES,
        f"unknown architecture {arch!r}; choose one of {', '.join(models.ARCHITECTURES)}",
    )
    if c.width is not None:
        _check(c.width >= 1, f"--width must be >= 1, got {c.width}")
        accepts = "width" in inspect.signature(models.ARCHITECTURES[arch].factory).parameters
        _check(accepts, f"--width does not apply to {arch} (wide resnets: widen_factor)")
    epochs = defaults.epochs if c.epochs is None else c.epochs
    _check(epochs >= 1, f"--epochs must be >= 1, got {epochs}")
    _check(c.batch_size >= 1, f"--batch-size must be >= 1, got {c.batch_size}")
    _check(
        c.batch_size % c.world_size == 0,
        f"--batch-size {c.batch_size} must be divisible by the {c.world_size} DDP processes",
    )
    _finite_positive("--lr", c.lr)
    _check(0 <= c.momentum < 1, f"--momentum must lie in [0, 1), got {c.momentum:g}")
    _check(
        math.isfinite(c.weight_decay) and c.weight_decay >= 0,
        f"--weight-decay must be >= 0, got {c.weight_decay:g}",
    )
    _check(c.norm in ("linf", "l2"), f"--norm must be linf or l2, got {c.norm!r}")

    # the inner attack
    adversarial = c.method != "clean"
    if not adversarial:
        given = [
            flag
            for flag, value in (
                ("--eps", c.eps),
                ("--attack", c.attack),
                ("--step-size", c.step_size),
                ("--random-start/--no-random-start", c.random_start),
            )
            if value is not None
        ]
        _check(not given, f"--method clean trains without an attack; drop {', '.join(given)}")
    for flag, value, owner in (
        ("--trades-beta", c.trades_beta, "trades"),
        ("--mart-beta", c.mart_beta, "mart"),
        ("--awp-gamma", c.awp_gamma, "awp"),
        ("--awp-warmup", c.awp_warmup, "awp"),
    ):
        _check(
            value is None or c.method == owner,
            f"{flag} applies to --method {owner}, not --method {c.method}",
        )
    eps = c.eps if c.eps is not None else (defaults.eps if defaults.eps is not None else spec.eps)
    check_eps(eps, c.norm, c.dataset)
    attack = step_size = random_start = None
    if adversarial:
        attack = c.attack or METHOD_DEFAULTS["attack"]
        _check(
            preset(attack).kind == "pgd",
            f"--attack {attack}: training needs a PGD attack (pgd7, pgd10, pgd<S>x<R>)",
        )
        if c.step_size is not None:
            _finite_positive("--step-size", c.step_size)
        step_size = build_attack(attack, c.norm, eps, c.step_size).step_size
        random_start = METHOD_DEFAULTS["random_start"] if c.random_start is None else c.random_start
    method_values = {}
    for name, owner in (
        ("trades_beta", "trades"),
        ("mart_beta", "mart"),
        ("awp_gamma", "awp"),
        ("awp_warmup", "awp"),
    ):
        if c.method == owner:
            value = getattr(c, name)
            method_values[name] = METHOD_DEFAULTS[name] if value is None else value
    for name in ("trades_beta", "mart_beta"):
        if name in method_values:
            value = method_values[name]
            _check(
                math.isfinite(value) and value >= 0,
                f"--{name.replace('_', '-')} must be >= 0, got {value:g}",
            )
    if "awp_gamma" in method_values:
        _finite_positive("--awp-gamma", method_values["awp_gamma"])
        _check(
            method_values["awp_warmup"] >= 0,
            f"--awp-warmup must be >= 0, got {method_values['awp_warmup']}",
        )

    # optimizer and schedule
    _check(
        c.optimizer in regularizers.OPTIMIZERS,
        f"unknown optimizer {c.optimizer!r}; choose one of {', '.join(regularizers.OPTIMIZERS)}",
    )
    entropy_names = (
        "entropy_steps",
        "entropy_lr",
        "entropy_gamma",
        "entropy_noise",
        "entropy_alpha",
    )
    entropy = {}
    if c.optimizer == "entropy-sgd":
        _check(c.method != "awp", "--optimizer entropy-sgd does not combine with --method awp")
        for name in entropy_names:
            value = getattr(c, name)
            entropy[name] = METHOD_DEFAULTS[name] if value is None else value
        _check(
            entropy["entropy_steps"] >= 1,
            f"--entropy-steps must be >= 1, got {entropy['entropy_steps']}",
        )
        _finite_positive("--entropy-lr", entropy["entropy_lr"])
        _check(
            entropy["entropy_gamma"] >= 0 and entropy["entropy_noise"] >= 0,
            "--entropy-gamma and --entropy-noise must be >= 0",
        )
        _check(0 < entropy["entropy_alpha"] <= 1, "--entropy-alpha must lie in (0, 1]")
    else:
        given = [n for n in entropy_names if getattr(c, n) is not None]
        _check(
            not given,
            f"--{given[0].replace('_', '-') if given else ''} needs --optimizer entropy-sgd",
        )
    _check(
        c.schedule in schedules.SCHEDULES,
        f"unknown schedule {c.schedule!r}; choose one of {', '.join(schedules.SCHEDULES)}",
    )
    milestones = None
    if c.schedule == "multistep":
        milestones = schedules.resolve_milestones(
            defaults.milestones if c.milestones is None else c.milestones, epochs
        )
    else:
        _check(
            c.milestones is None, f"--milestones applies to --schedule multistep, not {c.schedule}"
        )
    _check(0 < c.lr_factor <= 1, f"--lr-factor must lie in (0, 1], got {c.lr_factor:g}")
    _check(0 < c.cyclic_peak < 1, f"--cyclic-peak must lie in (0, 1), got {c.cyclic_peak:g}")

    # regularizers
    _check(
        0 <= c.label_smoothing < 1,
        f"--label-smoothing must lie in [0, 1), got {c.label_smoothing:g}",
    )
    _check(0 <= c.label_noise <= 1, f"--label-noise must lie in [0, 1], got {c.label_noise:g}")
    if c.weight_clip is not None:
        _finite_positive("--weight-clip", c.weight_clip)
    augment = defaults.augment if c.augment is None else c.augment
    _check(
        augment in regularizers.AUGMENTATIONS,
        f"unknown augmentation {augment!r}; choose one of {', '.join(regularizers.AUGMENTATIONS)}",
    )
    extra_fraction = c.extra_fraction
    if c.extra_data is None:
        _check(extra_fraction is None, "--extra-fraction needs --extra-data")
    else:
        _check(
            Path(c.extra_data).expanduser().is_file(),
            f"--extra-data {c.extra_data}: no such file (an npz with arrays x and y)",
        )
        extra_fraction = (
            METHOD_DEFAULTS["extra_fraction"] if extra_fraction is None else extra_fraction
        )
        _check(
            0 < extra_fraction < 1, f"--extra-fraction must lie in (0, 1), got {extra_fraction:g}"
        )
        per_rank = c.batch_size // c.world_size
        _check(
            round(extra_fraction * per_rank) < per_rank,
            "--extra-fraction leaves no labelled example in a batch",
        )

    # data and evaluation
    n_train = data.split_size(c.dataset, "train", c.data_dir)  # DataError if missing
    if c.train_examples is not None:
        _check(
            1 <= c.train_examples <= n_train,
            f"--train-examples must lie in [1, {n_train}] for {c.dataset}, got {c.train_examples}",
        )
    n_heldout = data.split_size(c.dataset, "heldout", c.data_dir)
    if c.heldout_examples is not None:
        _check(
            1 <= c.heldout_examples <= n_heldout,
            f"--heldout-examples must lie in [1, {n_heldout}] for {c.dataset}, "
            f"got {c.heldout_examples}",
        )
    build_attack(c.heldout_attack, c.norm, eps, None, c.seed)  # unknown names fail here
    heldout_every = defaults.heldout_every if c.heldout_every is None else c.heldout_every
    _check(heldout_every >= 1, f"--heldout-every must be >= 1, got {heldout_every}")
    _check(c.amp in ("none", "bf16"), f"--amp must be none or bf16, got {c.amp!r}")
    _check(c.save_every >= 1, f"--save-every must be >= 1, got {c.save_every}")
    runtime.resolve_device(c.device)

    return dataclasses.replace(
        c,
        arch=arch,
        epochs=epochs,
        eps=eps,
        attack=attack,
        step_size=step_size,
        random_start=random_start,
        nesterov=bool(c.nesterov and c.momentum > 0),
        milestones=milestones,
        augment=augment,
        extra_fraction=extra_fraction,
        heldout_every=heldout_every,
        **method_values,
        **entropy,
    )


def config_dict(config: TrainConfig) -> dict:
    """Every field, JSON-ready (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


# ---------------------------------------------------------------------------------------------
# the run directory


def _write_json(path: Path, payload: dict) -> None:
    text = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_text(path, text)


def read_run(run_dir: str | os.PathLike) -> dict:
    """A run directory's `run.json` (for the report and other commands)."""
    return json.loads((Path(run_dir) / RUN_FILE).read_text(encoding="utf-8"))


def _ours(path: Path) -> bool:
    name = path.name
    return name in (RUN_FILE, STATE_FILE, LOG_TABLE) or (
        name.startswith("epoch_") and name.endswith((".safetensors", ".json"))
    )


def _clear(run_dir: Path) -> None:
    """Remove the files a previous run wrote (and only those)."""
    for path in run_dir.iterdir():
        if not _ours(path):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _differences(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return ", ".join(diffs[:4]) + (", ..." if len(diffs) > 4 else "")


def _prepare_run_dir(run_dir: Path, config: TrainConfig, chash: str, force: bool) -> None:
    """Create/validate the run directory: same config -> resume; other config -> refuse (or,
    with --force, discard the old run's files and start over)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"--out {run_dir}: not writable ({err.strerror or err})") from None
    run_file = run_dir / RUN_FILE
    if run_file.exists():
        try:
            old = json.loads(run_file.read_text(encoding="utf-8"))
            old_hash = old.get("config_hash")
        except (OSError, ValueError, AttributeError):
            old, old_hash = {}, None
        if old_hash != chash or force:
            if not force:
                old_cfg = old.get("config") if isinstance(old.get("config"), dict) else {}
                new_cfg = {
                    k: v for k, v in config_dict(config).items() if k in hashed_fields(config)
                }
                old_cfg = {k: v for k, v in old_cfg.items() if k in new_cfg}
                raise UsageError(
                    f"{run_dir} holds a run with another configuration "
                    f"({_differences(old_cfg, new_cfg) or 'unreadable run.json'}); "
                    "use another --out, or --force to discard it and start over"
                )
            _clear(run_dir)
    else:
        others = [p.name for p in run_dir.iterdir() if not p.name.startswith(".")]
        if others and not force:
            raise UsageError(
                f"--out {run_dir} is not empty and holds no flatcli run (no run.json); use a new "
                "directory, or --force to train into it anyway"
            )
        if force:
            _clear(run_dir)


# ---------------------------------------------------------------------------------------------
# DDP


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def distributed_from_env(environ=os.environ) -> Distributed:
    """The torchrun process layout (WORLD_SIZE, RANK, LOCAL_RANK), or a single process."""
    world = int(environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return Distributed()
    rank = int(environ.get("RANK", "0"))
    return Distributed(rank, world, int(environ.get("LOCAL_RANK", rank)))


def _broadcast_error(dist_info: Distributed, message: str | None) -> None:
    """Rank 0's setup error reaches every rank, so all stop the same way (no rank hangs)."""
    if dist_info.active:
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message:
        raise UsageError(message)


# ---------------------------------------------------------------------------------------------
# training


def train(
    config: TrainConfig,
    out: str | os.PathLike,
    force: bool = False,
    on_event: Callable[[TrainEvent], None] | None = None,
) -> TrainResult:
    """Train (or resume) the run in `out`; returns its log. See the module docstring."""
    dist_info = distributed_from_env()
    config = resolve_config(dataclasses.replace(config, world_size=dist_info.world))
    device = runtime.resolve_device(config.device)
    if dist_info.active and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    initialized = False
    if dist_info.active:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            initialized = True
    try:
        trainer = _Trainer(config, Path(out), device, dist_info, on_event)
        return trainer.run(force)
    finally:
        if initialized:
            import torch.distributed as dist

            dist.destroy_process_group()


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
        attack = None
        if c.method != "clean":
            attack = dataclasses.replace(
                build_attack(c.attack, c.norm, c.eps, c.step_size, c.seed),
                random_start=c.random_start,
            )
        beta = c.trades_beta if c.method == "trades" else c.mart_beta
        self.method = methods.Method(
            c.method, attack, 6.0 if beta is None else beta, c.label_smoothing, self.amp_dtype
        )
        self.heldout_attack = build_attack(c.heldout_attack, c.norm, c.eps, None, c.seed)
        self.entropy = None
        if c.optimizer == "entropy-sgd":
            self.entropy = regularizers.EntropySGD(
                list(net.parameters()),
                c.entropy_steps,
                c.entropy_lr,
                c.entropy_gamma,
                c.entropy_noise,
                c.entropy_alpha,
            )
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
        path = self.run_dir / STATE_FILE
        self.best = None
        if not path.exists():
            return 0
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT or state.get("config_hash") != self.chash:
            raise UsageError(f"{path}: resume state of another configuration; use --force")
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.best = dict(state["best"]) if state.get("best") else None
        return int(state["epoch"])

    # -- run ------------------------------------------------------------------------------

    def run(self, force: bool) -> TrainResult:
        c = self.config
        message = None
        if self.dist.main:
            try:
                _prepare_run_dir(self.run_dir, c, self.chash, force)
            except FlatcliError as err:
                message = str(err)
        _broadcast_error(self.dist, message)
        self._build()
        self._load_data()
        start = self.done = self._load_state()
        self.started = time.time()
        if start >= c.epochs:
            self.emit(
                TrainEvent(
                    "complete",
                    start,
                    c.epochs,
                    f"{self.run_dir}: all {c.epochs} epochs done already",
                )
            )
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
        from torch.utils.data.distributed import DistributedSampler

        c = self.config
        t0 = time.perf_counter()
        n_lab, n_extra, steps = self._steps()
        sampler = DistributedSampler(
            range(len(self.y)),
            num_replicas=self.dist.world,
            rank=self.dist.rank,
            shuffle=True,
            seed=runtime.unit_seed(c.seed, "shuffle") % 2**62,
            drop_last=False,
        )
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.int64)
        rank = self.dist.rank
        gens = {
            "attack": runtime.generator(c.seed, "attack", epoch, rank),
            "labels": runtime.generator(c.seed, "labels", epoch, rank),
            "entropy": runtime.generator(c.seed, "entropy", epoch),  # same on every rank
        }
        extra_order = None
        if n_extra:
            g = runtime.generator(c.seed, "extra", epoch, rank)
            m = len(self.extra[1])
            need = math.ceil(steps * n_extra / m)
            extra_order = torch.cat([torch.randperm(m, generator=g) for _ in range(need)])
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(runtime.unit_seed(c.seed, "global", epoch, rank))
            stats = self._train_epoch(epoch, order, extra_order, n_lab, n_extra, steps, gens)
        if self.dist.active:
            import torch.distributed as dist

            dist.all_reduce(stats)
        train_time = time.perf_counter() - t0
        lr = self._lr(epoch, steps - 1, steps)
        done = epoch + 1
        if self.dist.main:
            held = self._heldout(done)
            path = self._save_checkpoint(done)
            row = self._row(done, lr, stats, held, path, train_time, time.perf_counter() - t0)
            tables.write_part(self.run_dir, LOG_TABLE, self._key(done), self.chash, [row])
            if held is not None:
                candidate = {
                    "epoch": done,
                    "heldout_robust_err": held["heldout_robust_err"],
                    "heldout_robust_loss": held["heldout_robust_loss"],
                }
                if self.best is None or _better(candidate, self.best):
                    self.best = candidate
            self._save_state(done)
            self.done = done
            self._write_run_json("running" if done < c.epochs else "done")
        else:
            row = None
        if self.dist.active:
            import torch.distributed as dist

            dist.barrier()
        self.emit(TrainEvent("epoch", done, c.epochs, row=row))

    def _train_epoch(self, epoch, order, extra_order, n_lab, n_extra, steps, gens) -> torch.Tensor:
        """One pass; returns [loss sum, examples, clean correct, robust correct] (float64)."""
        from flatcli import weights

        c, net, method = self.config, self.net, self.method
        awp = c.method == "awp" and epoch >= c.awp_warmup
        clip_params = [p for _, p in weights.layers(net)] if c.weight_clip else None
        sums = torch.zeros(4, dtype=torch.float64)
        net.train()
        for step in range(steps):
            idx = order[step * n_lab : (step + 1) * n_lab]
            xb, yb = self.x[idx], self.y[idx]
            if n_extra:
                eidx = extra_order[step * n_extra : (step + 1) * n_extra]
                xb = torch.cat([xb, self.extra[0][eidx]])
                yb = torch.cat([yb, self.extra[1][eidx]])
            if self.augmenter is not None:
                xb = self.augmenter(xb)
            xb, yb = xb.to(self.device), yb.to(self.device)
            if self.device.type == "cuda":
                xb = xb.contiguous(memory_format=torch.channels_last)
            target = yb
            if c.label_noise > 0:
                target = regularizers.noisy_labels(
                    yb, c.label_noise, self.spec.num_classes, gens["labels"]
                )
            lr = self._lr(epoch, step, steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x_adv, clean_logits = None, None
            if method.attack is not None:
                net.eval()
                with torch.no_grad(), methods.autocast(self.device, self.amp_dtype):
                    clean_logits = net(xb)
                x_adv = method.adversarial(net, xb, yb, gens["attack"])
                net.train()

            def closure(xb=xb, x_adv=x_adv, target=target, step=step):
                self.optimizer.zero_grad(set_to_none=True)
                loss, logits = method.loss(self.model, xb, x_adv, target)
                self._check_finite(loss, epoch, step)
                loss.backward()
                return loss.detach(), logits.detach()

            if awp:
                offset = methods.awp_offset(net, x_adv, target, c.awp_gamma, self.amp_dtype)
                with weights.perturbed(net, offset):
                    loss, logits = closure()
            elif self.entropy is not None:
                loss, logits = self.entropy.gradient(closure, gens["entropy"])
            else:
                loss, logits = closure()
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
        if self.dist.active:
            import torch.distributed as dist

            dist.all_reduce(bad)
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
            "heldout_clean_err": 1.0 - result.clean_correct.float().mean().item(),
            "heldout_clean_loss": result.clean_loss.mean().item(),
            "heldout_robust_err": 1.0 - outcome.correct.float().mean().item(),
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

    def _key(self, epoch: int) -> str:
        return checkpoints.safe_name(f"{self.run_name}__e{epoch:04d}")

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

    def _save_state(self, epoch: int) -> None:
        state = {
            "format": STATE_FORMAT,
            "version": 1,
            "config_hash": self.chash,
            "epoch": epoch,
            "model": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "best": self.best or {},
            "world_size": self.dist.world,
        }
        atomic_write(self.run_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))

    def _write_run_json(
        self, status: str, resumed_at: int | None = None, message: str | None = None
    ) -> None:
        if not self.dist.main:
            return
        path = self.run_dir / RUN_FILE
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
            if old.get("config_hash") != self.chash:
                old = {}
        except (OSError, ValueError):
            old = {}
        now = runtime.now_iso()
        c, spec = self.config, self.spec
        best = dict(self.best) if self.best else None
        if best is not None:
            name = checkpoints.checkpoint_name(best["epoch"])
            best["checkpoint"] = name if (self.run_dir / name).exists() else None
        resumes = list(old.get("resumes", []))
        if resumed_at:
            resumes.append({"epoch": resumed_at, "at": now})
        payload = {
            "format": RUN_FORMAT,
            "format_version": 1,
            "run": self.run_name,
            "status": status,
            "message": message,
            "config": config_dict(c),
            "config_hash": self.chash,
            "dataset": c.dataset,
            "arch": c.arch,
            "arch_kwargs": arch_kwargs(c),
            "num_classes": spec.num_classes,
            "in_channels": spec.in_channels,
            "image_size": spec.image_size,
            "mean": list(spec.mean),
            "std": list(spec.std),
            "seed": c.seed,
            "epochs": c.epochs,
            "epochs_done": self.done,
            "best": best,
            "world_size": self.dist.world,
            "device": runtime.device_label(self.device),
            "flatcli_version": __version__,
            "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "platform": platform.platform(),
            "command": sys.argv,
            "started_at": old.get("started_at", now),
            "updated_at": now,
            "finished_at": now if status == "done" else None,
            "resumes": resumes,
        }
        _write_json(path, payload)

    def _result(self, start: int) -> TrainResult:
        rows = []
        if self.dist.main:
            for epoch in range(1, self.config.epochs + 1):
                if tables.is_done(self.run_dir, LOG_TABLE, self._key(epoch), self.chash):
                    rows += tables.read_part(self.run_dir, LOG_TABLE, self._key(epoch), self.chash)
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
