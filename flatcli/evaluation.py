"""The evaluation context every measure receives, and the resolving of an evaluation config.

A config is resolved against the checkpoints (`resolve_common`); then, built once per sweep
(`Evaluation`), come the examples, the device and one shared model per architecture, and per
checkpoint (`Context`) its model, seed keys and key columns. The measures (`flatcli.measures`)
compute rows from a context.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from flatcli import checkpoints, data, models, runtime, tables, weights
from flatcli.attacks import precision
from flatcli.attacks.precision import DTYPE_COLUMN
from flatcli.attacks.presets import build_attack
from flatcli.config.commands import config_hash
from flatcli.errors import CheckpointError, UsageError


def resolve_dataset(refs: Sequence, explicit: str | None) -> str:
    """--dataset if given; else the one dataset named by the checkpoints' flatcli metadata."""
    if explicit:
        data.get_spec(explicit)
        return explicit
    named = {(checkpoints.read_sidecar(r.path) or {}).get("dataset") for r in refs}
    named.discard(None)
    if len(named) == 1:
        return named.pop()
    if len(named) > 1:
        raise UsageError(
            f"checkpoints come from several datasets ({', '.join(sorted(named))}); pass --dataset"
        )
    raise UsageError("--dataset is needed: these checkpoints carry no flatcli metadata naming one")


def default_eps(refs: Sequence, norm: str, dataset_eps: float) -> float:
    """The eps the checkpoints were trained with (flatcli metadata), when they all agree and
    used this norm; otherwise the dataset's default. Read from the sidecars, without torch."""
    trained = set()
    for ref in refs:
        config = (checkpoints.read_sidecar(ref.path) or {}).get("config") or {}
        if config.get("eps") is not None and config.get("norm", "linf") == norm:
            trained.add(float(config["eps"]))
    return trained.pop() if len(trained) == 1 else dataset_eps


def resolve_common(config, refs: Sequence):
    """What every evaluation config shares (dataset, split, n_examples, eps, norm, step_size,
    normalize, arch, data_dir): fill the dataset's defaults and check what the fields' own
    checks (`config.validate()`, called first) cannot: the data, the normalization, the arch."""
    dataset = resolve_dataset(refs, config.dataset)
    spec = data.get_spec(dataset)
    eps = config.eps if config.eps is not None else default_eps(refs, config.norm, spec.eps)
    eps = data.check_eps(eps, config.norm, dataset)
    n = config.n_examples or data.default_n_examples(dataset, config.split, config.data_dir)
    data.check_examples(dataset, config.split, n, config.data_dir)  # fails early, no copies
    if config.normalize is not None:
        checkpoints.parse_normalize(config.normalize)
    if config.arch is not None:
        models.parse_arch(config.arch)  # name and arguments, checked before any work
    return dataclasses.replace(config, dataset=dataset, eps=eps, n_examples=n)


def eval_attack(config, name: str):
    """Attack `name` as an evaluation config sets it up (ball, step, seed, precision, restart
    choice)."""
    return build_attack(name, config.norm, config.eps, config.step_size, config.seed,
                        config.precision, config.restart_choice)  # fmt: skip


def loss_attack(config, pgd_only: str | None = None, flag: str = "--attack"):
    """`config.attack`, built to check it before any work: it must estimate the robust loss,
    and be a PGD where `pgd_only` names what needs its step size ("the Hessian")."""
    attack = build_attack(
        config.attack, config.norm, config.eps, config.step_size, 0, config.precision
    )
    if not attack.estimates_loss:
        raise UsageError(
            f"{flag} {config.attack} does not estimate the robust loss; use a pgd preset or "
            "apgd-ce"
        )
    if pgd_only is not None and not hasattr(attack, "step_size"):
        raise UsageError(f"--attack {config.attack}: {pgd_only} needs a pgd preset")
    return attack


def key_columns(ref, info, config, chash: str, device: torch.device) -> dict:
    """The key and provenance columns of every row (tables.COMMON), but the sweep's timing."""
    return {
        "run": ref.run,
        "checkpoint": str(ref.path),
        "checkpoint_digest": checkpoints.ref_of(ref).digest or None,
        "epoch": ref.epoch,
        "dataset": config.dataset,
        "arch": info.arch,
        "input_normalization": checkpoints.normalization_name(info.mean, info.std),
        "split": config.split,
        "n_examples": config.n_examples,
        "eps": config.eps,
        "norm": config.norm,
        "seed": config.seed,
        "config_hash": chash,
        "schema_version": tables.SCHEMA_VERSION,
        **runtime.provenance(device, DTYPE_COLUMN[getattr(config, "precision", "fp32")]),
    }


def seed_keys(config, ref) -> tuple:
    """What a work unit's random draws (starts, directions) derive from: the configured seed and
    the checkpoint's content digest, so the same file gives the same numbers under any run name
    or path, and a retrained file gets fresh draws."""
    return (config.seed, checkpoints.ref_of(ref).digest)


def load_for_eval(ref, config, device: torch.device):
    """The checkpoint's model (eval mode, frozen weights, on device) and its info."""
    model, info = checkpoints.load_model(
        ref.path,
        arch=config.arch,
        normalize=config.normalize,
        dataset=config.dataset,
        device=device,
    )
    # A user's npz may hold another sample of the training distribution (CIFAR-10.1 as npz):
    # load_model has checked its classes and channels against the checkpoint.
    if info.dataset not in (None, config.dataset) and not config.dataset.startswith("npz:"):
        raise CheckpointError(f"{ref.path}: trained on {info.dataset}, not {config.dataset}")
    for p in model.parameters():
        p.requires_grad_(False)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model, info


class SharedModels:
    """One model instance per architecture (its class, names, shapes and dtypes of every
    parameter and buffer, device): each checkpoint's weights are copied into it in place, so
    compiled code and the compile's caches serve every checkpoint of an architecture.
    For callers that use one checkpoint at a time: loading the next overwrites the previous."""

    def __init__(self, on_note=None):
        self._models: dict[tuple, torch.nn.Module] = {}
        self._on_note = on_note

    def load(self, ref, config, device: torch.device):
        """`load_for_eval(ref, config, device)`, in the shared instance of its architecture; a
        foreign file's missing normalization goes to `on_note` (one line)."""
        model, info = load_for_eval(ref, config, device)
        warning = checkpoints.normalization_warning(info, str(ref.path))
        if warning is not None and self._on_note is not None:
            self._on_note(warning)
        tensors = _tensors(model)
        key = (type(model), str(device), info.arch, repr(sorted(info.arch_kwargs.items())),
               tuple((name, t.shape, t.dtype) for name, t in tensors))
        shared = self._models.setdefault(key, model)
        if shared is not model:
            with torch.no_grad():
                for (_, mine), (_, theirs) in zip(_tensors(shared), tensors, strict=True):
                    mine.copy_(theirs)  # keeps the shared tensor's memory format
        return shared, info


def _tensors(model) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and buffer (persistent or not, e.g. the input normalization)."""
    return list(model.named_parameters()) + list(model.named_buffers())


def require_layers(ctx: Context) -> None:
    """A `CheckpointError` (that checkpoint fails, the sweep goes on) when the context's model has
    no layer a weight offset could move."""
    if not weights.layers(ctx.model):
        raise CheckpointError(
            f"{ctx.unit.path}: no perturbable layers (weights or biases outside normalization)"
        )


def nonfinite_note(model) -> str | None:
    """'non-finite weights' when any parameter or buffer holds NaN/inf (the row is marked)."""
    tensors = list(model.parameters()) + list(model.buffers())
    bad = any(not torch.isfinite(t).all() for t in tensors if t.is_floating_point())
    return "non-finite weights" if bad else None


def compile_note(seconds: float, ref) -> str | None:
    """The one line that reports a compile (None when nothing was compiled)."""
    if seconds <= 0:
        return None
    return (f"torch.compile: {seconds:.1f} s (run {ref.run}, epoch {ref.epoch}; reused by the "
            "next checkpoints of this architecture)")


def noting_compile(measure, policy: str, device: torch.device, on_note):
    """`measure(unit) -> rows` that also passes `on_note` the line of any torch.compile time
    spent in a call (compiling happens inside the engine, on the first unit of an architecture)."""
    if on_note is None or not runtime.enabled(policy, device):
        return measure

    def noted(unit) -> list[dict]:
        start = runtime.compile_seconds()
        rows = measure(unit)
        line = compile_note(runtime.compile_seconds() - start, unit)
        if line is not None:
            on_note(line)
        return rows

    return noted


@dataclass(frozen=True, kw_only=True)
class Context:
    """One work unit prepared for a measure: the unit (a checkpoint ref, or a landscape's
    (checkpoint, direction)), its model (eval mode, frozen weights, on `device`: the shared
    instance of its architecture) and info, the examples (x float [n, C, H, W] in [0, 1], y int64
    [n]), the seed keys of its random draws (`seed_keys`), the key columns of its rows
    (`key_columns`), and `on_batch(done, total)`, the progress inside the unit."""

    unit: object
    model: torch.nn.Module
    info: object
    x: torch.Tensor
    y: torch.Tensor
    keys: tuple
    device: torch.device
    base: dict
    on_batch: Callable[[int, int], None] | None = None


class Evaluation:
    """What a sweep prepares once for its measure: the resolved config, its hash, the device,
    the examples (on the device with `examples_on_device`, else kept on the CPU and moved per
    batch), one shared model per architecture (compiled code reused across checkpoints), and the
    progress and note callbacks."""

    def __init__(self, config, device: torch.device, on_batch=None, on_note=None, *,
                 examples_on_device: bool = False):  # fmt: skip
        self.config = config
        self.chash = config_hash(config)
        self.device = device
        self.on_batch = on_batch
        self.on_note = on_note
        x, y = data.load_split(config.dataset, config.split, config.n_examples, config.data_dir)
        self.x, self.y = (x.to(device), y.to(device)) if examples_on_device else (x, y)
        self.models = SharedModels(on_note)

    def context(self, unit) -> Context:
        """`unit`'s checkpoint loaded into its architecture's shared model, as a `Context`."""
        ref = checkpoints.ref_of(unit)
        model, info = self.models.load(ref, self.config, self.device)
        return Context(
            unit=unit,
            model=model,
            info=info,
            x=self.x,
            y=self.y,
            keys=seed_keys(self.config, unit),
            device=self.device,
            base=key_columns(ref, info, self.config, self.chash, self.device),
            on_batch=self.on_batch,
        )

    def measure(self, rows: Callable[[Context], list[dict]]) -> Callable[[object], list[dict]]:
        """The sweep's `unit -> rows`: `rows(self.context(unit))`, with TF32 off under fp32
        (`precision.in_fp32`) and any compile time passed to `on_note`."""
        return self.measure_units(lambda unit: rows(self.context(unit)))

    def measure_units(self, rows: Callable[[object], list[dict]]) -> Callable[[object], list[dict]]:
        """`rows(unit)` (a measure that builds its own contexts) wrapped as `measure`."""
        return precision.in_fp32(
            noting_compile(rows, self.config.compile, self.device, self.on_note)
        )
