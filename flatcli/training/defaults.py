"""`flatcli train`'s configuration and its defaults: `TrainConfig` (every option's default,
help text and check), and what its None fields resolve to, per dataset (`TrainDefaults`) and per
method or option (`METHOD_DEFAULTS`, applied only where the option is in use);
`flatcli.training.config.resolve_config` fills them in. Torch-free, for `flatcli train --help`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flatcli.config import fields, registries
from flatcli.config.fields import (
    ATTACK,
    DATA,
    MEASURE,
    METHOD,
    NORMS,
    OPTIMIZATION,
    OUTPUT,
    RUNTIME,
    THREAT,
    named,
    option,
    require,
    validate_fields,
)
from flatcli.training.registry import METHODS, method_help


@dataclass(frozen=True)
class TrainDefaults:
    """Per-dataset training defaults (`flatcli train`): `milestones` are fractions of `epochs`
    (paper: 60, 90, 120 of 150); `eps=None`: the dataset's (flatcli.data)."""

    epochs: int = 150
    milestones: tuple[float, ...] = (0.4, 0.6, 0.8)
    eps: float | None = None
    augment: str = "crop-flip"
    heldout_every: int = 1


TRAIN_DEFAULTS: dict[str, TrainDefaults] = {
    "cifar10": TrainDefaults(),
    "cifar100": TrainDefaults(),
    # digits, small-cnn width 32, 1200 images (2 CPU cores, final-iterate AT: 100 epochs in
    # 130 s): one decay at epoch 20, then 80 epochs at lr 0.005 in which the held-out robust
    # loss rises (0.50 at epoch 23 -> 0.57 over epochs 81-100) while the training one falls.
    "digits": TrainDefaults(epochs=100, milestones=(0.2,), eps=0.15, augment="none"),
}
TRAIN_FALLBACK = TrainDefaults(augment="none")  # svhn, mnist, npz: no augmentation by default

# Method- and option-specific defaults, applied only where the option is in use (else None).
METHOD_DEFAULTS = {
    "attack": "pgd7",  # docs/method.md: PGD-7, step 0.007 at eps 0.0314, random start
    "random_start": True,
    "attack_point": "best",  # the paper's code trains on the best PGD iterate; "final": Madry's
    "trades_beta": 6.0,  # TRADES' own code
    "mart_beta": 6.0,  # MART's own code
    "awp_gamma": 0.01,  # AWP's own code
    "awp_warmup": 0,
    "awp_layers": "weights",  # AWP's code perturbs weights (dim > 1) only; "all": biases too
    # Entropy-SGD as the paper's code (common/torch/optim.py, after Chaudhari et al.'s):
    "entropy_steps": 5,  # L: Langevin steps per update, each on a new batch and a new attack
    "entropy_lr": 0.1,  # Langevin step size
    "entropy_gamma": 1e-4,  # scope (coupling to the current weights)
    "entropy_noise": 1e-4,  # Langevin noise scale (the step adds noise * sqrt(2 lr) N(0, 1))
    "entropy_alpha": 0.75,  # running average mu <- alpha mu + (1 - alpha) w'
    "entropy_momentum": 0.0,  # the code's get_entropy_optimizer reads its module's momentum, 0
    "extra_fraction": 0.7,  # share of each batch from the pseudo-labelled data (the code)
    "extra_steps": "same",  # the code: ceil(N / batch) batches, extra drawn with replacement
    "weight_clip_layers": "all",  # the code's BoxProjection clips every trainable parameter
    "awp_mode": "eval",  # the code computes the weight perturbation in eval mode
}


_M = METHOD_DEFAULTS  # short, for the help texts below


@dataclass(frozen=True)
class TrainConfig:
    """`flatcli train`: docs/method.md's baseline (PGD-7 AT, SGD 0.05 Nesterov 0.9, weight decay
    5e-4, batch 128, lr x0.1 at 40/60/80 % of the epochs). None means "the default": per dataset
    (TRAIN_DEFAULTS) or per method (METHOD_DEFAULTS), resolved before hashing."""

    dataset: str = option(
        "digits (bundled), cifar10, cifar100, svhn, mnist, fashion-mnist, npz:PATH.",
        DATA,
        default="digits",
    )
    arch: str | None = option(
        "Architecture (tiny, small-cnn, preact-resnet18, resnet18, wrn-28-10, ...). "
        "Default: the dataset's.",
        METHOD,
    )
    width: int | None = option(
        "Channels of the first layer (small-cnn 32, preact-resnet18/resnet18 64).", METHOD, low=1
    )
    method: str = option(method_help() + ".", METHOD, default="at", choices=tuple(METHODS))
    epochs: int | None = option(
        f"Epochs. Default: the dataset's (digits {TRAIN_DEFAULTS['digits'].epochs}, else "
        f"{TrainDefaults.epochs}), divided by --entropy-steps with entropy-sgd (equal compute, "
        "as the paper's code). A finished run is extended to more epochs when its schedule "
        "allows.",
        OPTIMIZATION,
        low=1,
    )
    batch_size: int = option(
        "Global batch size (split over DDP processes).", OPTIMIZATION, default=128, low=1
    )
    lr: float = option(
        "Learning rate (the peak for cyclic).", OPTIMIZATION, default=0.05, positive=True
    )
    momentum: float = option("SGD momentum.", OPTIMIZATION, default=0.9, within="[0, 1)")
    nesterov: bool = option(
        "Nesterov momentum (the paper's code).",
        OPTIMIZATION,
        default=True,
        flags=("--nesterov/--no-nesterov",),
    )
    weight_decay: float = option(
        "Weight decay (the paper's code: 5e-4).", OPTIMIZATION, default=5e-4, low=0
    )
    optimizer: str = named(registries.OPTIMIZERS, OPTIMIZATION, default="sgd", menu=True)
    schedule: str = named(registries.SCHEDULES, OPTIMIZATION, default="multistep", menu=True)
    milestones: tuple[float, ...] | None = option(
        "multistep: comma-separated epochs (60,90,120) or fractions (0.4,0.6,0.8). "
        "Default: the dataset's.",
        OPTIMIZATION,
        parse="numbers",
    )
    lr_factor: float = option(
        "multistep: factor at each milestone.", OPTIMIZATION, default=0.1, within="(0, 1]"
    )
    cyclic_peak: float = option(
        "cyclic: fraction of training at the peak lr.", OPTIMIZATION, default=0.4, within="(0, 1)"
    )
    eps: float | None = option(
        "Radius, e.g. 8/255 or 0.0314. Default: the dataset's training eps (digits "
        f"{TRAIN_DEFAULTS['digits'].eps:g}). Clean runs are evaluated at the default.",
        THREAT,
        parse="number",
    )
    norm: str = option("linf | l2.", THREAT, default="linf", choices=NORMS)
    attack: str | None = option(
        f"PGD preset of the inner attack: {_M['attack']} (default), pgd10, pgd<S>x<R>.",
        ATTACK,
        flags=("--attack", "--attacks"),
    )
    step_size: float | None = option(
        "Absolute step (e.g. 0.007). Default: the preset's ratio times eps.",
        ATTACK,
        parse="number",
        positive=True,
    )
    random_start: bool | None = option(
        "Random start of the inner attack (default: on).",
        ATTACK,
        flags=("--random-start/--no-random-start",),
    )
    attack_point: str | None = named(
        registries.ATTACK_POINTS,
        ATTACK,
        before="The PGD point trained on: ",
        after=f" Default: {_M['attack_point']}.",
    )
    trades_beta: float | None = option(
        f"TRADES beta (default {_M['trades_beta']:g}).", METHOD, low=0
    )
    mart_beta: float | None = option(f"MART beta (default {_M['mart_beta']:g}).", METHOD, low=0)
    awp_gamma: float | None = option(
        f"AWP: relative weight perturbation per layer (default {_M['awp_gamma']:g}).",
        METHOD,
        positive=True,
    )
    awp_warmup: int | None = option(
        f"AWP: epochs of plain AT before the perturbation (default {_M['awp_warmup']}).",
        METHOD,
        low=0,
    )
    awp_layers: str | None = named(
        registries.AWP_LAYERS, METHOD, before="AWP: ", after=f" Default: {_M['awp_layers']}."
    )
    awp_mode: str | None = named(
        registries.AWP_MODES,
        METHOD,
        before="AWP: ",
        after=f" Default: {_M['awp_mode']}.",
        added=True,
    )
    label_smoothing: float = option(
        "Label smoothing of the training loss.", METHOD, default=0.0, within="[0, 1)"
    )
    label_noise: float = option(
        "Probability of a random label per example and batch.", METHOD, default=0.0, within="[0, 1]"
    )
    label_noise_classes: str = named(
        registries.LABEL_NOISE_CLASSES, METHOD, default="all", menu=True
    )
    weight_clip: float | None = option(
        "Clamp parameters to [-C, C] after every step (which: --weight-clip-layers).",
        METHOD,
        positive=True,
    )
    weight_clip_layers: str | None = named(
        registries.WEIGHT_CLIP_LAYERS,
        METHOD,
        before="With --weight-clip: ",
        after=f" Default: {_M['weight_clip_layers']}.",
        added=True,
    )
    augment: str | None = named(
        registries.AUGMENTATIONS,
        DATA,
        after=" Default: the dataset's (crop-flip on CIFAR, none otherwise).",
    )
    entropy_steps: int | None = option(
        "Entropy-SGD: Langevin steps, each on a new batch and attack "
        f"(default {_M['entropy_steps']}).",
        OPTIMIZATION,
        low=1,
    )
    entropy_lr: float | None = option(
        f"Entropy-SGD: Langevin step size (default {_M['entropy_lr']:g}).",
        OPTIMIZATION,
        positive=True,
    )
    entropy_gamma: float | None = option(
        f"Entropy-SGD: scope (default {_M['entropy_gamma']:g}).", OPTIMIZATION, low=0
    )
    entropy_noise: float | None = option(
        f"Entropy-SGD: noise scale (default {_M['entropy_noise']:g}).", OPTIMIZATION, low=0
    )
    entropy_alpha: float | None = option(
        f"Entropy-SGD: running average mu <- a mu + (1 - a) w' (default {_M['entropy_alpha']:g}).",
        OPTIMIZATION,
        within="[0, 1)",
    )
    entropy_momentum: float | None = option(
        "Entropy-SGD: momentum of the Langevin and the outer steps (default "
        f"{_M['entropy_momentum']:g}; --momentum is plain SGD's).",
        OPTIMIZATION,
        within="[0, 1)",
        added=True,
    )
    extra_data: str | None = option(
        "npz with arrays x, y: pseudo-labelled extra data.", DATA, parse="path"
    )
    extra_fraction: float | None = option(
        f"Share of each batch from --extra-data (default {_M['extra_fraction']:g}, the "
        "paper's code).",
        DATA,
        within="(0, 1)",
    )
    extra_steps: str | None = named(
        registries.EXTRA_STEPS,
        DATA,
        before="With --extra-data: ",
        after=f" Default: {_M['extra_steps']}.",
        added=True,
    )
    train_examples: int | None = option("Train on the first N training examples only.", DATA, low=1)
    heldout_attack: str = option(
        "Attack on the held-out split that picks the best epoch.", MEASURE, default="pgd7x5"
    )  # docs/method.md: PGD-7, 5 restarts, on the held-out split
    heldout_every: int | None = option(
        "Evaluate the held-out split every K epochs (and at the end).", MEASURE, low=1
    )
    heldout_examples: int | None = option(
        "First N held-out examples (default: the whole held-out split).", MEASURE, low=1
    )
    amp: str = option(
        "none | bf16 (autocast, fp32 master weights).",
        RUNTIME,
        default="none",
        choices=("none", "bf16"),
    )
    compile: str = fields.compile_policy()
    seed: int = fields.seed()
    world_size: int = dataclasses.field(default=1)  # DDP processes (set by the trainer)
    save_every: int = option(
        "Checkpoint every K epochs (and at the end).", OUTPUT, default=1, runtime=True, low=1
    )
    data_dir: str | None = fields.data_dir()
    device: str = fields.device()

    def validate(self) -> None:  # per-dataset defaults are checked once resolved
        validate_fields(self)
        require(
            self.batch_size % self.world_size == 0,
            f"--batch-size {self.batch_size} must be divisible by the {self.world_size} DDP "
            "processes",
        )
        require(
            self.milestones is None or self.schedule == "multistep",
            f"--milestones applies to --schedule multistep, not {self.schedule}",
        )
        require(
            self.extra_fraction is None or self.extra_data is not None,
            "--extra-fraction needs --extra-data",
        )
        require(
            self.extra_steps is None or self.extra_data is not None,
            "--extra-steps needs --extra-data",
        )
        require(
            self.weight_clip_layers is None or self.weight_clip is not None,
            "--weight-clip-layers needs --weight-clip",
        )
