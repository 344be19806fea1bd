"""`resolve_config`: a `TrainConfig` with every default filled in (per dataset, method and
option) and validated, before any work; what the run directory stores and hashes."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from pathlib import Path

from flatcli import data, runtime
from flatcli.config import METHOD_DEFAULTS, TRAIN_DEFAULTS, TRAIN_FALLBACK, TrainConfig
from flatcli.errors import UsageError
from flatcli.training import methods, regularizers, schedules
from flatcli.training.registry import METHODS

ENTROPY_FIELDS = ("entropy_steps", "entropy_lr", "entropy_gamma", "entropy_noise", "entropy_alpha")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _finite_positive(flag: str, value: float) -> None:
    _check(math.isfinite(value) and value > 0, f"{flag} must be positive, got {value:g}")


def _one_of(flag: str, value: str, choices) -> None:
    _check(value in choices, f"unknown {flag} {value!r}; choose one of {', '.join(choices)}")


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fill every default and validate; `UsageError` (one line) on bad input, before any work.
    The result is explicit: resolving it again changes nothing."""
    c = config
    _check(c.method in METHODS, f"unknown method {c.method!r}; choose one of {', '.join(METHODS)}")
    defaults = TRAIN_DEFAULTS.get(c.dataset, TRAIN_FALLBACK)
    arch = _arch(c)
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
    eps = c.eps if c.eps is not None else defaults.eps
    eps = data.get_spec(c.dataset).eps if eps is None else eps
    attack = _attack(c, eps)
    owned = _method_options(c)
    entropy = _entropy(c)
    epochs = c.epochs
    if epochs is None:  # Entropy-SGD: L batches per update; the code runs 150 / L epochs
        epochs = math.ceil(defaults.epochs / entropy.get("entropy_steps", 1))
    _check(epochs >= 1, f"--epochs must be >= 1, got {epochs}")
    _one_of("schedule", c.schedule, schedules.SCHEDULES)
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
    augment = defaults.augment if c.augment is None else c.augment
    _regularizers(c, augment)
    extra_fraction = _extra_fraction(c)
    heldout_every = defaults.heldout_every if c.heldout_every is None else c.heldout_every
    _data_and_evaluation(c, eps, heldout_every)
    return dataclasses.replace(
        c,
        arch=arch,
        epochs=epochs,
        eps=eps,
        **attack,
        nesterov=bool(c.nesterov and c.momentum > 0),
        milestones=milestones,
        augment=augment,
        extra_fraction=extra_fraction,
        heldout_every=heldout_every,
        **owned,
        **entropy,
    )


def _arch(c: TrainConfig) -> str:
    from flatcli import models

    arch = c.arch or data.get_spec(c.dataset).default_arch
    _check(
        arch in models.ARCHITECTURES,
        f"unknown architecture {arch!r}; choose one of {', '.join(models.ARCHITECTURES)}",
    )
    if c.width is not None:
        _check(c.width >= 1, f"--width must be >= 1, got {c.width}")
        accepts = "width" in inspect.signature(models.ARCHITECTURES[arch].factory).parameters
        _check(accepts, f"--width does not apply to {arch} (wide resnets: widen_factor)")
    return arch


def _attack(c: TrainConfig, eps: float) -> dict:
    """The inner attack's resolved fields (all None for a method without attack)."""
    from flatcli.attacks.presets import build_attack, preset
    from flatcli.evaluation import check_eps

    check_eps(eps, c.norm, c.dataset)
    fields = ("attack", "step_size", "random_start", "attack_point")
    if not METHODS[c.method].attacks:
        given = [_flag(f) for f in (*fields, "eps") if getattr(c, f) is not None]
        _check(not given, f"--method {c.method} trains without an attack; drop {', '.join(given)}")
        return dict.fromkeys(fields)
    attack = c.attack or METHOD_DEFAULTS["attack"]
    _check(
        preset(attack).kind == "pgd",
        f"--attack {attack}: training needs a PGD attack (pgd7, pgd10, pgd<S>x<R>)",
    )
    if c.step_size is not None:
        _finite_positive("--step-size", c.step_size)
    point = c.attack_point or METHOD_DEFAULTS["attack_point"]
    _one_of("--attack-point", point, methods.ATTACK_POINTS)
    return {
        "attack": attack,
        "step_size": build_attack(attack, c.norm, eps, c.step_size).step_size,
        "random_start": (
            METHOD_DEFAULTS["random_start"] if c.random_start is None else c.random_start
        ),
        "attack_point": point,
    }


def _method_options(c: TrainConfig) -> dict:
    """The options the chosen method owns, defaulted; another method's option is refused."""
    for info in METHODS.values():
        for name in info.options:
            _check(
                getattr(c, name) is None or c.method == info.name,
                f"{_flag(name)} applies to --method {info.name}, not --method {c.method}",
            )
    values = {}
    for name in METHODS[c.method].options:
        value = getattr(c, name)
        values[name] = METHOD_DEFAULTS[name] if value is None else value
    for name in ("trades_beta", "mart_beta"):
        if name in values:
            value = values[name]
            _check(
                math.isfinite(value) and value >= 0, f"{_flag(name)} must be >= 0, got {value:g}"
            )
    if c.method == "awp":
        _finite_positive("--awp-gamma", values["awp_gamma"])
        warmup = values["awp_warmup"]
        _check(warmup >= 0, f"--awp-warmup must be >= 0, got {warmup}")
        _one_of("--awp-layers", values["awp_layers"], methods.AWP_LAYERS)
    return values


def _entropy(c: TrainConfig) -> dict:
    _one_of("optimizer", c.optimizer, regularizers.OPTIMIZERS)
    if c.optimizer != "entropy-sgd":
        given = [n for n in ENTROPY_FIELDS if getattr(c, n) is not None]
        _check(not given, f"{_flag(given[0]) if given else ''} needs --optimizer entropy-sgd")
        return {}
    _check(c.method != "awp", "--optimizer entropy-sgd does not combine with --method awp")
    e = {n: METHOD_DEFAULTS[n] if getattr(c, n) is None else getattr(c, n) for n in ENTROPY_FIELDS}
    _check(e["entropy_steps"] >= 1, f"--entropy-steps must be >= 1, got {e['entropy_steps']}")
    _finite_positive("--entropy-lr", e["entropy_lr"])
    _check(
        e["entropy_gamma"] >= 0 and e["entropy_noise"] >= 0,
        "--entropy-gamma and --entropy-noise must be >= 0",
    )
    _check(0 <= e["entropy_alpha"] < 1, "--entropy-alpha must lie in [0, 1)")
    return e


def _regularizers(c: TrainConfig, augment: str) -> None:
    _check(
        0 <= c.label_smoothing < 1,
        f"--label-smoothing must lie in [0, 1), got {c.label_smoothing:g}",
    )
    _check(0 <= c.label_noise <= 1, f"--label-noise must lie in [0, 1], got {c.label_noise:g}")
    _one_of("--label-noise-classes", c.label_noise_classes, regularizers.LABEL_NOISE_CLASSES)
    if c.weight_clip is not None:
        _finite_positive("--weight-clip", c.weight_clip)
    _one_of("augmentation", augment, regularizers.AUGMENTATIONS)


def _extra_fraction(c: TrainConfig) -> float | None:
    if c.extra_data is None:
        _check(c.extra_fraction is None, "--extra-fraction needs --extra-data")
        return None
    _check(
        Path(c.extra_data).expanduser().is_file(),
        f"--extra-data {c.extra_data}: no such file (an npz with arrays x and y)",
    )
    fraction = METHOD_DEFAULTS["extra_fraction"] if c.extra_fraction is None else c.extra_fraction
    _check(0 < fraction < 1, f"--extra-fraction must lie in (0, 1), got {fraction:g}")
    per_rank = c.batch_size // c.world_size
    _check(
        round(fraction * per_rank) < per_rank,
        "--extra-fraction leaves no labelled example in a batch",
    )
    return fraction


def _data_and_evaluation(c: TrainConfig, eps: float, heldout_every: int) -> None:
    from flatcli.attacks.presets import build_attack

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
    _check(heldout_every >= 1, f"--heldout-every must be >= 1, got {heldout_every}")
    _check(c.amp in ("none", "bf16"), f"--amp must be none or bf16, got {c.amp!r}")
    _check(c.save_every >= 1, f"--save-every must be >= 1, got {c.save_every}")
    runtime.resolve_device(c.device)


def config_dict(config: TrainConfig) -> dict:
    """Every field, JSON-ready (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))
