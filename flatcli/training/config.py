"""`resolve_config`: a `TrainConfig` with every default filled in (per dataset, method and
option) and checked, before any work; the field checks live with TrainConfig
(flatcli.training.defaults)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from pathlib import Path

from flatcli import data, runtime
from flatcli.config.commands import METHOD_DEFAULTS, TRAIN_DEFAULTS, TRAIN_FALLBACK, TrainConfig
from flatcli.config.fields import require
from flatcli.training import schedules
from flatcli.training.registry import METHODS

ENTROPY_FIELDS = (
    "entropy_steps", "entropy_lr", "entropy_gamma", "entropy_noise", "entropy_alpha",
    "entropy_momentum",
)  # fmt: skip


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resolve_config(config: TrainConfig) -> TrainConfig:
    """Fill every default and validate; `UsageError` (one line) on bad input, before any work.
    The result is explicit: resolving it again changes nothing."""
    c = config
    c.validate()
    defaults = TRAIN_DEFAULTS.get(c.dataset, TRAIN_FALLBACK)
    arch = _arch(c)
    eps = c.eps if c.eps is not None else defaults.eps
    eps = data.get_spec(c.dataset).eps if eps is None else eps
    attack = _attack(c, eps)
    owned = _method_options(c)
    entropy = _entropy(c)
    epochs = c.epochs
    if epochs is None:  # Entropy-SGD: L batches per update; the code runs 150 / L epochs
        epochs = math.ceil(defaults.epochs / entropy.get("entropy_steps", 1))
    milestones = None
    if c.schedule == "multistep":
        milestones = schedules.resolve_milestones(
            defaults.milestones if c.milestones is None else c.milestones, epochs
        )
    augment = defaults.augment if c.augment is None else c.augment
    extra_fraction = _extra_fraction(c)
    extra_steps = None
    if c.extra_data is not None:
        extra_steps = c.extra_steps or METHOD_DEFAULTS["extra_steps"]
    clip_layers = None
    if c.weight_clip is not None:
        clip_layers = c.weight_clip_layers or METHOD_DEFAULTS["weight_clip_layers"]
    heldout_every = defaults.heldout_every if c.heldout_every is None else c.heldout_every
    _data_and_evaluation(c, eps)
    resolved = dataclasses.replace(
        c,
        arch=arch,
        epochs=epochs,
        eps=eps,
        **attack,
        nesterov=bool(c.nesterov and c.momentum > 0),
        milestones=milestones,
        augment=augment,
        extra_fraction=extra_fraction,
        extra_steps=extra_steps,
        weight_clip_layers=clip_layers,
        heldout_every=heldout_every,
        **owned,
        **entropy,
    )
    resolved.validate()  # the defaults filled in, too
    return resolved


def _arch(c: TrainConfig) -> str:
    from flatcli import models

    arch = c.arch or data.get_spec(c.dataset).default_arch
    require(
        arch in models.ARCHITECTURES,
        f"unknown architecture {arch!r}; choose one of {', '.join(models.ARCHITECTURES)}",
    )
    if c.width is not None:
        accepts = "width" in inspect.signature(models.ARCHITECTURES[arch].factory).parameters
        require(accepts, f"--width does not apply to {arch} (wide resnets: widen_factor)")
    return arch


def _attack(c: TrainConfig, eps: float) -> dict:
    """The inner attack's resolved fields (all None for a method without attack)."""
    from flatcli.attacks.presets import build_attack, preset
    from flatcli.data import check_eps

    check_eps(eps, c.norm, c.dataset)
    fields = ("attack", "step_size", "random_start", "attack_point")
    if not METHODS[c.method].attacks:
        given = [_flag(f) for f in (*fields, "eps") if getattr(c, f) is not None]
        require(not given, f"--method {c.method} trains without an attack; drop {', '.join(given)}")
        return dict.fromkeys(fields)
    attack = c.attack or METHOD_DEFAULTS["attack"]
    require(
        preset(attack).kind == "pgd",
        f"--attack {attack}: training needs a PGD attack (pgd7, pgd10, pgd<S>x<R>)",
    )
    point = c.attack_point or METHOD_DEFAULTS["attack_point"]
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
            require(
                getattr(c, name) is None or c.method == info.name,
                f"{_flag(name)} applies to --method {info.name}, not --method {c.method}",
            )
    values = {}
    for name in METHODS[c.method].options:
        value = getattr(c, name)
        values[name] = METHOD_DEFAULTS[name] if value is None else value
    return values


def _entropy(c: TrainConfig) -> dict:
    if c.optimizer != "entropy-sgd":
        given = [n for n in ENTROPY_FIELDS if getattr(c, n) is not None]
        require(not given, f"{_flag(given[0]) if given else ''} needs --optimizer entropy-sgd")
        return {}
    require(c.method != "awp", "--optimizer entropy-sgd does not combine with --method awp")
    given = {n: getattr(c, n) for n in ENTROPY_FIELDS}
    return {n: METHOD_DEFAULTS[n] if v is None else v for n, v in given.items()}


def _extra_fraction(c: TrainConfig) -> float | None:
    if c.extra_data is None:
        return None
    require(
        Path(c.extra_data).expanduser().is_file(),
        f"--extra-data {c.extra_data}: no such file (an npz with arrays x and y)",
    )
    fraction = METHOD_DEFAULTS["extra_fraction"] if c.extra_fraction is None else c.extra_fraction
    per_rank = c.batch_size // c.world_size
    require(
        extra_per_batch(fraction, per_rank, c.extra_steps or METHOD_DEFAULTS["extra_steps"])
        < per_rank,
        "--extra-fraction leaves no labelled example in a batch",
    )
    return fraction


def extra_per_batch(fraction: float, per_rank: int, steps: str) -> int:
    """Extra examples in a batch of `per_rank`: int(fraction * batch), as the paper's code's
    SemiSupervisedSampler (89 of 128 at 0.7); `labelled-pass` rounds (90 of 128)."""
    return round(fraction * per_rank) if steps == "labelled-pass" else int(fraction * per_rank)


def _data_and_evaluation(c: TrainConfig, eps: float) -> None:
    from flatcli.attacks.presets import build_attack

    n_train = data.split_size(c.dataset, "train", c.data_dir)  # DataError if missing
    if c.train_examples is not None:
        require(
            1 <= c.train_examples <= n_train,
            f"--train-examples must lie in [1, {n_train}] for {c.dataset}, got {c.train_examples}",
        )
    n_heldout = data.split_size(c.dataset, "heldout", c.data_dir)
    if c.heldout_examples is not None:
        require(
            1 <= c.heldout_examples <= n_heldout,
            f"--heldout-examples must lie in [1, {n_heldout}] for {c.dataset}, "
            f"got {c.heldout_examples}",
        )
    build_attack(c.heldout_attack, c.norm, eps, None, c.seed)  # unknown names fail here
    runtime.resolve_device(c.device)


def momentum_of(c: TrainConfig) -> tuple[float, bool]:
    """(momentum, nesterov) of the SGD steps: Entropy-SGD's own momentum (the paper's code: 0)
    for its Langevin and outer steps, else --momentum; Nesterov only with momentum."""
    momentum = c.entropy_momentum if c.optimizer == "entropy-sgd" else c.momentum
    return momentum, bool(c.nesterov and momentum > 0)


def config_dict(config: TrainConfig) -> dict:
    """Every field, JSON-ready (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))
