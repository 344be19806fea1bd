"""Frozen configurations per command: the paper's defaults live here, once.

`config_hash` covers only the fields that change results (not device, batch size, output format
or directory), so a rerun on another GPU or with another batch size skips finished work.
Fields marked `meta(hash=False)` are excluded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field


def _runtime(default):
    """A field that does not change results: kept out of `config_hash`."""
    return field(default=default, metadata={"hash": False})


_NEVER = object()  # no value equals it: the field is always hashed


def _added(default):
    """A result-affecting field added after results were written: hashed only when it differs
    from `default`, so rows written before it existed keep their config_hash."""
    return field(default=default, metadata={"hash_unless": default})


@dataclass(frozen=True)
class EvalConfig:
    """What every evaluation of checkpoints shares: the examples, the threat model, the seed, how
    foreign checkpoints are read (all hashed), and where it runs (data_dir, device, batch_size:
    not hashed).

    `dataset=None` means the checkpoints' metadata; `eps=None` their training eps, else the
    dataset's; `n_examples=None` the first 1000 (or the whole split), all resolved before hashing.
    """

    dataset: str | None = None  # None: from the checkpoints' metadata
    split: str = "test"
    n_examples: int | None = None
    eps: float | None = None
    norm: str = "linf"
    step_size: float | None = None
    seed: int = 0
    arch: str | None = None
    normalize: str | None = None
    data_dir: str | None = _runtime(None)
    device: str = _runtime("auto")
    batch_size: int = _runtime(512)
    precision: str = _added("fp32")  # the attack's search: fp32 | tf32 | bf16 (reports fp32)
    compile: str = _runtime("auto")  # torch.compile: auto (CUDA only) | on | off


@dataclass(frozen=True)
class AttackConfig(EvalConfig):
    """`flatcli attack`: docs/method.md's evaluation protocol.

    Robust loss from PGD-20 with 10 restarts (step 0.007 at eps 0.0314), robust error from the
    strongest attack (default: that PGD and APGD-CE + APGD-T); the first `n_examples` of `split`.
    `eps=None` / `n_examples=None` mean the dataset's defaults (resolved before hashing).
    """

    attacks: tuple[str, ...] = ("pgd20x10", "aa-lite")


def hashed_fields(config) -> dict:
    """The fields of a config dataclass that determine its results."""
    def counts(f) -> bool:
        unless = f.metadata.get("hash_unless", _NEVER)
        return f.metadata.get("hash", True) and getattr(config, f.name) != unless

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if counts(f)}


def config_hash(config) -> str:
    """A stable hex digest of the result-affecting fields (and the config's type)."""
    payload = {"type": type(config).__name__, **hashed_fields(config)}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainDefaults:
    """Per-dataset training defaults (`flatcli train`), the one registry of them.

    `milestones` are fractions of `epochs` (paper: 60, 90, 120 of 150 epochs); `eps=None` means
    the dataset's eps in `flatcli.data`; `heldout_every`: epochs between held-out evaluations.
    """

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
    "extra_fraction": 0.7,  # share of each batch from the pseudo-labelled data (the code)
}


@dataclass(frozen=True)
class TrainConfig:
    """`flatcli train`: docs/method.md's baseline (PGD-7 AT, SGD 0.05 Nesterov momentum 0.9, weight
    decay 5e-4 as in the code, batch 128, lr x0.1 at 40/60/80 % of the epochs).

    None means "the default": per dataset from `TRAIN_DEFAULTS` (epochs, eps, milestones,
    augment, heldout_every), per method/option from `METHOD_DEFAULTS`; `flatcli.training`
    resolves them before hashing, so a run's stored config is fully explicit.
    """

    dataset: str = "digits"
    arch: str | None = None
    width: int | None = None  # channels of the first layer (small-cnn 32, resnets 64); None: arch's
    method: str = "at"  # a name in flatcli.training.registry.METHODS
    epochs: int | None = None  # None: the dataset's; with entropy-sgd divided by entropy_steps
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    optimizer: str = "sgd"  # sgd | entropy-sgd
    schedule: str = "multistep"  # multistep | cyclic | cosine
    milestones: tuple[float, ...] | None = None  # epochs (>= 1) or fractions of epochs (< 1)
    lr_factor: float = 0.1  # multistep decay factor
    cyclic_peak: float = 0.4  # cyclic: fraction of training at which lr peaks
    eps: float | None = None
    norm: str = "linf"
    attack: str | None = None
    step_size: float | None = None
    random_start: bool | None = None
    attack_point: str | None = None  # best (the paper's code) | final (Madry et al.'s PGD-AT)
    trades_beta: float | None = None
    mart_beta: float | None = None
    awp_gamma: float | None = None
    awp_warmup: int | None = None
    awp_layers: str | None = None  # weights (AWP's code) | all (biases too)
    label_smoothing: float = 0.0
    label_noise: float = 0.0
    label_noise_classes: str = "all"  # all: uniform over all K (the code) | others: a wrong label
    weight_clip: float | None = None
    augment: str | None = None  # none | crop-flip | cutout | autoaugment
    entropy_steps: int | None = None
    entropy_lr: float | None = None
    entropy_gamma: float | None = None
    entropy_noise: float | None = None
    entropy_alpha: float | None = None
    extra_data: str | None = None  # npz with x, y (pseudo-labelled)
    extra_fraction: float | None = None
    train_examples: int | None = None  # first N training examples (None: all)
    heldout_attack: str = "pgd7x5"  # docs/method.md: PGD-7, 5 restarts, on the held-out split
    heldout_every: int | None = None
    heldout_examples: int | None = None
    amp: str = "none"  # none | bf16 (autocast; fp32 master weights)
    compile: str = _runtime("auto")  # torch.compile: auto (CUDA only) | on | off
    seed: int = 0
    world_size: int = 1  # DDP processes (set by the trainer)
    save_every: int = _runtime(1)
    data_dir: str | None = _runtime(None)
    device: str = _runtime("auto")


AVERAGE_XI = 0.5  # docs/method.md: average-case flatness, relative L2 radius
WORST_XI = 0.00075  # docs/method.md main text and per-epoch code (its supplement tables use 0.003)


@dataclass(frozen=True)
class FlatnessConfig(EvalConfig):
    """`flatcli flatness`: docs/method.md's flatness of the robust loss.

    Average case: `samples` random offsets on the per-layer relative sphere, the attack re-run on
    each. Worst case: joint ascent over a weight offset (normalized step `weight_lr`, relative
    to each layer's norm; 0.01 in the code, 0.001 in the text) and the input (step 0.2229 * eps,
    or `step_size`), `iterations` steps x `restarts`, by `worst_estimator`: paper (one offset for
    the set, updated per batch of `weight_batch`, final iterate, unclamped) or per-batch (one
    offset per batch, best iterate, re-attack, clamped). Hessian: `iterations` Lanczos steps,
    `samples` Hutchinson probes. `conv_scale`: conv weights multiplied before measuring (the
    paper's scale-invariance check). `xi=None`: the paper's default per measure (AVERAGE_XI,
    WORST_XI); eps/n_examples None: the dataset's defaults.
    """

    measures: tuple[str, ...] = ("average", "worst")
    xi: tuple[float, ...] | None = None
    samples: int = 10
    attack: str = "pgd20x10"
    iterations: int = 20
    restarts: int = 10
    weight_lr: float = 0.01
    weight_norm: str = "l2"  # l2: ||nu_l|| <= xi ||w_l||; linf: |nu_i| <= xi |w_i|
    weight_batch: int = 128
    worst_estimator: str = "paper"  # paper | per-batch
    worst_reattack: bool = False  # paper: also re-run the attack at the final nu (a column)
    conv_scale: float = 1.0


LANDSCAPE_SCALE = {"random": 0.5, "adversarial": 0.025}  # paper: relative direction lengths
LANDSCAPE_SCALE_MAXABS = {"random": 0.5, "adversarial": 0.01}  # the code's, with layer-maxabs


@dataclass(frozen=True)
class LandscapeConfig(EvalConfig):
    """`flatcli landscape`: docs/method.md's landscapes of the robust (and clean) loss.

    Robust and clean loss at w + alpha d (1-D) or w + alpha d1 + beta d2 (2-D) on a `steps` (x
    `steps`) grid over `range`, for `n_directions` directions (planes in 2-D) of kind `directions`:
    random | adversarial (the weight attack on the `adversarial_loss`, clean as the code or robust,
    radius `adversarial_xi`, `adversarial_iterations` steps of `weight_lr`) | hessian (top
    eigenvectors, `iterations` subspace steps) | interpolate (d = w_to - w). `normalization`:
    layer (each d_l to s ||w_l||, the paper) | layer-maxabs (d_l s max|w_l| / max|d_l|, the code) |
    filter | none; `scale` s None: 0.5 random, 0.025 adversarial (0.01 with layer-maxabs), 1
    hessian; interpolate is never rescaled. n_examples None: 128 (docs/method.md).
    """

    n_examples: int | None = 128  # docs/method.md: one batch of 128 test examples
    directions: str = "random"
    dims: int = 1
    steps: int = 51
    range: tuple[float, float] | None = None  # None: (-1, 1); (0, 1) for interpolate
    n_directions: int | None = None  # None: 10 in 1-D, 1 plane in 2-D
    normalization: str = "layer"  # layer | layer-maxabs | filter | none
    scale: float | None = None
    loss: str = "both"  # robust | clean | both
    attack: str = "pgd20x10"
    to: str | None = None  # interpolate: the other checkpoint
    iterations: int = 20
    weight_lr: float = 0.01
    adversarial_loss: str = "clean"  # the code's adversarial directions: clean-loss weight attack
    adversarial_xi: float = 0.005  # the code's weight-attack radius for directions
    adversarial_iterations: int = 7  # the code's weight-attack steps for directions
    conv_scale: float = 1.0
    point_batch: int = _runtime(1)  # grid points per stacked pass (results equal up to rounding)
