"""Frozen configurations per command: every default, help text and check lives here, once.

Each field carries its option (flatcli.fields.option: help, panel, parser, checks); the CLI's
options are built from them. `config_hash` covers the result-affecting fields only (docs/method.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from flatcli import registries
from flatcli.attacks.presets import PRESETS
from flatcli.checkpoints import zoos
from flatcli.fields import (
    ATTACK,
    DATA,
    INPUTS,
    MEASURE,
    METHOD,
    OPTIMIZATION,
    OUTPUT,
    RUNTIME,
    THREAT,
    option,
    require,
    validate_fields,
)
from flatcli.training.defaults import (  # noqa: F401 (re-exported: the defaults' old home)
    METHOD_DEFAULTS,
    TRAIN_DEFAULTS,
    TRAIN_FALLBACK,
    TrainDefaults,
)
from flatcli.training.registry import METHODS, method_help

NORMS = ("linf", "l2")
SPLITS = ("train", "test", "heldout")
PRECISIONS = ("fp32", "tf32", "bf16")  # flatcli.attacks.precision.PRECISIONS
COMPILE_POLICIES = ("auto", "on", "off")  # flatcli.compilation.COMPILE_CHOICES
LOSSES = ("robust", "clean", "both")
EVAL_BATCH = 512  # examples per evaluation batch (halved on out-of-memory)
SAMPLES = 10  # random offsets per xi (average case); Hutchinson probes (Hessian)
ITERATIONS = 20  # joint worst-case ascent steps; Lanczos / subspace-iteration steps (Hessian)
_NEVER = object()  # no value equals it: the field is always hashed


def _seed():
    return option(0, "Seed; every checkpoint derives its own generator from it.", RUNTIME,
                  metavar="N")  # fmt: skip


def _data_dir():
    return option(
        None, "Root of the torchvision-layout data folders (never downloaded).", INPUTS,
        runtime=True, flags=("--data-dir",), envvar="FLATCLI_DATA_DIR", metavar="PATH",
        parse="path",
    )  # fmt: skip


def _device():
    return option("auto", "auto | cpu | cuda | cuda:N.", RUNTIME, runtime=True,
                  envvar="FLATCLI_DEVICE", metavar="DEVICE")  # fmt: skip


def _compile():
    return option(
        "auto", "torch.compile the model: auto (on CUDA only), on, off. Results equal eager up to "
        "float rounding; compile time is reported on stderr. Not part of the configuration.",
        RUNTIME, runtime=True, flags=("--compile",), menu=True, choices=COMPILE_POLICIES,
    )  # fmt: skip


def _named(default, registry: dict, panel: str, before: str = "", after: str = "", **cli):
    """A field whose value is a name in `registry` (flatcli.registries): choices and help."""
    help_text = f"{before}{registries.describe(registry)}.{after}"
    return option(default, help_text, panel, choices=tuple(registry), **cli)


def _conv_scale(help_text: str):
    return option(1.0, help_text, INPUTS, flags=("--conv-scale",), positive=True)


def _weight_lr(help_text: str):
    return option(0.01, help_text, MEASURE, flags=("--weight-lr",), positive=True)


_ESTIMATING = ", ".join(p for p in PRESETS if p.startswith("pgd") or p == "apgd-ce")
@dataclass(frozen=True)
class EvalConfig:
    """What every evaluation of checkpoints shares. `dataset`, `eps`, `n_examples` None: from
    the checkpoints' metadata / their training eps / the first 1000, resolved before hashing."""

    dataset: str | None = option(
        None, "digits (bundled), cifar10, cifar100, svhn, mnist, fashion-mnist, or npz:PATH.",
        INPUTS, metavar="NAME", show_default="the checkpoints' flatcli metadata",
    )  # fmt: skip
    split: str = option("test", "test (without the held-out part), train, or heldout.", INPUTS,
                        menu=True, choices=SPLITS)  # fmt: skip
    n_examples: int | None = option(
        None, "First N examples of the split.", INPUTS, metavar="N", positive=True,
        show_default="1000, or the whole split if smaller",
    )  # fmt: skip
    eps: float | None = option(
        None, "Radius, e.g. 8/255 or 0.0314 (the exact float is stored).", THREAT,
        metavar="X", parse="number", show_default="checkpoint's training eps, else the dataset's",
    )  # fmt: skip
    norm: str = option("linf", "Threat model of the input perturbation.", THREAT, menu=True,
                       choices=NORMS)  # fmt: skip
    step_size: float | None = option(
        None, "Absolute PGD step size, e.g. 2/255.", ATTACK, metavar="X", parse="number",
        positive=True, show_default="the preset's ratio times eps",
    )  # fmt: skip
    seed: int = _seed()
    arch: str | None = option(
        None, "Architecture of foreign checkpoints (e.g. preact-resnet18, resnet18, wrn-34-10). "
        + zoos.help_line(), INPUTS, metavar="ARCH",
        show_default="the checkpoint's flatcli metadata",
    )  # fmt: skip
    normalize: str | None = option(
        None, "Input normalization of foreign checkpoints: cifar10 | cifar100 | svhn | none | "
        "MEAN,STD (per channel: m1,m2,m3,s1,s2,s3).", INPUTS, metavar="NAME|MEAN,STD",
        show_default="the checkpoint's flatcli metadata, else none",
    )  # fmt: skip
    data_dir: str | None = _data_dir()
    device: str = _device()
    batch_size: int = option(EVAL_BATCH, "Examples per batch (halved automatically on "
                             "out-of-memory).",
                             RUNTIME, runtime=True, metavar="N", low=1, min=1)  # fmt: skip
    precision: str = option(
        "fp32", "What the attack searches in: fp32 (TF32 off); tf32 (CUDA TF32 matmuls/"
        "convolutions); bf16 (autocast). Reported losses and errors are IEEE fp32, re-evaluated "
        "at the points found; "
        "weights stay fp32. tf32/bf16 need pgd or apgd-ce. Part of the configuration.",
        RUNTIME, added=True, menu=True, choices=PRECISIONS,
    )  # fmt: skip
    compile: str = _compile()
    restart_choice: str = _named(
        "wrong-class", registries.RESTART_CHOICES, ATTACK, "PGD with restarts, per example: ",
        flags=("--restart-choice",), menu=True, added=True,
    )  # fmt: skip

    def validate(self) -> None:
        """The checks that need no data or checkpoint; UsageError (one line) on bad input."""
        validate_fields(self)


@dataclass(frozen=True)
class AttackConfig(EvalConfig):
    """`flatcli attack`: docs/method.md's evaluation protocol (PGD-20 x 10 robust loss; robust
    error from the strongest attack)."""

    attacks: tuple[str, ...] = option(
        ("pgd20x10", "aa-lite"), "Comma-separated presets: " + ", ".join(PRESETS)
        + ", or pgd<S>x<R>.", ATTACK, metavar="LIST", parse="names",
        flags=("--attacks", "--attack"),
    )  # fmt: skip


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


_M = METHOD_DEFAULTS


@dataclass(frozen=True)
class TrainConfig:
    """`flatcli train`: docs/method.md's baseline (PGD-7 AT, SGD 0.05 Nesterov 0.9, weight decay
    5e-4, batch 128, lr x0.1 at 40/60/80 % of the epochs). None means "the default": per dataset
    (TRAIN_DEFAULTS) or per method (METHOD_DEFAULTS), resolved before hashing."""

    dataset: str = option(
        "digits", "digits (bundled), cifar10, cifar100, svhn, mnist, fashion-mnist, npz:PATH.", DATA
    )
    arch: str | None = option(
        None, "Architecture (tiny, small-cnn, preact-resnet18, resnet18, wrn-28-10, ...). "
        "Default: the dataset's.", METHOD,
    )  # fmt: skip
    width: int | None = option(
        None, "Channels of the first layer (small-cnn 32, preact-resnet18/resnet18 64).", METHOD,
        low=1,
    )  # fmt: skip
    method: str = option("at", method_help() + ".", METHOD, choices=tuple(METHODS))
    epochs: int | None = option(
        None, f"Epochs. Default: the dataset's (digits {TRAIN_DEFAULTS['digits'].epochs}, else "
        f"{TrainDefaults.epochs}), divided by --entropy-steps "
        "with entropy-sgd (equal compute, as the paper's code). A finished run is extended to "
        "more epochs when its schedule allows.", OPTIMIZATION, low=1,
    )  # fmt: skip
    batch_size: int = option(128, "Global batch size (split over DDP processes).", OPTIMIZATION,
                             low=1)  # fmt: skip
    lr: float = option(0.05, "Learning rate (the peak for cyclic).", OPTIMIZATION, positive=True)
    momentum: float = option(0.9, "SGD momentum.", OPTIMIZATION, within="[0, 1)")
    nesterov: bool = option(True, "Nesterov momentum (the paper's code).", OPTIMIZATION,
                            flags=("--nesterov/--no-nesterov",))  # fmt: skip
    weight_decay: float = option(5e-4, "Weight decay (the paper's code: 5e-4).", OPTIMIZATION,
                                 low=0)  # fmt: skip
    optimizer: str = _named("sgd", registries.OPTIMIZERS, OPTIMIZATION, menu=True)
    schedule: str = _named("multistep", registries.SCHEDULES, OPTIMIZATION, menu=True)
    milestones: tuple[float, ...] | None = option(
        None, "multistep: comma-separated epochs (60,90,120) or fractions (0.4,0.6,0.8). "
        "Default: the dataset's.", OPTIMIZATION, parse="numbers",
    )  # fmt: skip
    lr_factor: float = option(0.1, "multistep: factor at each milestone.", OPTIMIZATION,
                              within="(0, 1]")  # fmt: skip
    cyclic_peak: float = option(0.4, "cyclic: fraction of training at the peak lr.", OPTIMIZATION,
                                within="(0, 1)")  # fmt: skip
    eps: float | None = option(
        None, "Radius, e.g. 8/255 or 0.0314. Default: the dataset's training eps (digits "
        f"{TRAIN_DEFAULTS['digits'].eps:g}). "
        "Clean runs are evaluated at the default.", THREAT, parse="number",
    )  # fmt: skip
    norm: str = option("linf", "linf | l2.", THREAT, choices=NORMS)
    attack: str | None = option(
        None, f"PGD preset of the inner attack: {_M['attack']} (default), pgd10, pgd<S>x<R>.",
        ATTACK, flags=("--attack", "--attacks"),
    )  # fmt: skip
    step_size: float | None = option(
        None, "Absolute step (e.g. 0.007). Default: the preset's ratio times eps.", ATTACK,
        parse="number", positive=True,
    )  # fmt: skip
    random_start: bool | None = option(
        None, "Random start of the inner attack (default: on).", ATTACK,
        flags=("--random-start/--no-random-start",),
    )  # fmt: skip
    attack_point: str | None = _named(
        None, registries.ATTACK_POINTS, ATTACK, "The PGD point trained on: ",
        f" Default: {_M['attack_point']}.",
    )
    trades_beta: float | None = option(None, f"TRADES beta (default {_M['trades_beta']:g}).",
                                       METHOD, low=0)  # fmt: skip
    mart_beta: float | None = option(None, f"MART beta (default {_M['mart_beta']:g}).", METHOD,
                                     low=0)  # fmt: skip
    awp_gamma: float | None = option(
        None, f"AWP: relative weight perturbation per layer (default {_M['awp_gamma']:g}).",
        METHOD, positive=True,
    )  # fmt: skip
    awp_warmup: int | None = option(
        None, f"AWP: epochs of plain AT before the perturbation (default {_M['awp_warmup']}).",
        METHOD, low=0,
    )  # fmt: skip
    awp_layers: str | None = _named(
        None, registries.AWP_LAYERS, METHOD, "AWP: ", f" Default: {_M['awp_layers']}."
    )
    awp_mode: str | None = _named(
        None, registries.AWP_MODES, METHOD, "AWP: ", f" Default: {_M['awp_mode']}.", added=True
    )
    label_smoothing: float = option(0.0, "Label smoothing of the training loss.", METHOD,
                                    within="[0, 1)")  # fmt: skip
    label_noise: float = option(0.0, "Probability of a random label per example and batch.",
                                METHOD, within="[0, 1]")  # fmt: skip
    label_noise_classes: str = _named("all", registries.LABEL_NOISE_CLASSES, METHOD, menu=True)
    weight_clip: float | None = option(None, "Clamp parameters to [-C, C] after every step "
                                       "(which: --weight-clip-layers).", METHOD,
                                       positive=True)  # fmt: skip
    weight_clip_layers: str | None = _named(
        None, registries.WEIGHT_CLIP_LAYERS, METHOD, "With --weight-clip: ",
        f" Default: {_M['weight_clip_layers']}.", added=True,
    )  # fmt: skip
    augment: str | None = _named(
        None, registries.AUGMENTATIONS, DATA,
        after=" Default: the dataset's (crop-flip on CIFAR, none otherwise).",
    )
    entropy_steps: int | None = option(
        None, "Entropy-SGD: Langevin steps, each on a new batch and attack "
        f"(default {_M['entropy_steps']}).", OPTIMIZATION, low=1,
    )  # fmt: skip
    entropy_lr: float | None = option(
        None, f"Entropy-SGD: Langevin step size (default {_M['entropy_lr']:g}).", OPTIMIZATION,
        positive=True,
    )  # fmt: skip
    entropy_gamma: float | None = option(
        None, f"Entropy-SGD: scope (default {_M['entropy_gamma']:g}).", OPTIMIZATION, low=0
    )
    entropy_noise: float | None = option(
        None, f"Entropy-SGD: noise scale (default {_M['entropy_noise']:g}).", OPTIMIZATION, low=0
    )
    entropy_alpha: float | None = option(
        None, "Entropy-SGD: running average mu <- a mu + (1 - a) w' (default "
        f"{_M['entropy_alpha']:g}).", OPTIMIZATION, within="[0, 1)",
    )  # fmt: skip
    entropy_momentum: float | None = option(
        None, "Entropy-SGD: momentum of the Langevin and the outer steps (default "
        f"{_M['entropy_momentum']:g}; --momentum is plain SGD's).", OPTIMIZATION, within="[0, 1)",
        added=True,
    )  # fmt: skip
    extra_data: str | None = option(None, "npz with arrays x, y: pseudo-labelled extra data.",
                                    DATA, parse="path")  # fmt: skip
    extra_fraction: float | None = option(
        None, f"Share of each batch from --extra-data (default {_M['extra_fraction']:g}, the "
        "paper's code).", DATA, within="(0, 1)",
    )  # fmt: skip
    extra_steps: str | None = _named(
        None, registries.EXTRA_STEPS, DATA, "With --extra-data: ",
        f" Default: {_M['extra_steps']}.", added=True,
    )  # fmt: skip
    train_examples: int | None = option(None, "Train on the first N training examples only.",
                                        DATA, low=1)  # fmt: skip
    heldout_attack: str = option(
        "pgd7x5", "Attack on the held-out split that picks the best epoch.", MEASURE
    )  # docs/method.md: PGD-7, 5 restarts, on the held-out split
    heldout_every: int | None = option(None, "Evaluate the held-out split every K epochs (and "
                                       "at the end).", MEASURE, low=1)  # fmt: skip
    heldout_examples: int | None = option(
        None, "First N held-out examples (default: the whole held-out split).", MEASURE, low=1
    )
    amp: str = option("none", "none | bf16 (autocast, fp32 master weights).", RUNTIME,
                      choices=("none", "bf16"))  # fmt: skip
    compile: str = _compile()
    seed: int = _seed()
    world_size: int = dataclasses.field(default=1)  # DDP processes (set by the trainer)
    save_every: int = option(1, "Checkpoint every K epochs (and at the end).", OUTPUT,
                             runtime=True, low=1)  # fmt: skip
    data_dir: str | None = _data_dir()
    device: str = _device()

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


AVERAGE_XI = 0.5  # docs/method.md: average-case flatness, relative L2 radius
WORST_XI = 0.00075  # docs/method.md main text and per-epoch code (its supplement tables use 0.003)


@dataclass(frozen=True)
class FlatnessConfig(EvalConfig):
    """`flatcli flatness`: docs/method.md's average- and worst-case flatness of the robust loss
    and the Hessian. `xi=None`: AVERAGE_XI / WORST_XI per measure."""

    measures: tuple[str, ...] = option(
        ("average", "worst"), "Repeatable or comma-separated; default: average,worst. "
        + registries.describe(registries.MEASURES) + ".", MEASURE, param="measure",
        flags=("--measure", "-m"), parse="names", repeat=True, show_default=False,
        choices=tuple(registries.MEASURES),
    )  # fmt: skip
    xi: tuple[float, ...] | None = option(
        None, "Relative radius of the weight ball (||nu_l|| <= xi ||w_l|| per layer); repeatable "
        f"or comma-separated, one row per value. Default: {AVERAGE_XI:g} (average), "
        f"{WORST_XI:g} (worst).", MEASURE, flags=("--xi",), parse="numbers", repeat=True,
        show_default=False,
    )  # fmt: skip
    samples: int = option(SAMPLES, "Random offsets per xi (average); Hutchinson probes (hessian).",
                          MEASURE, low=1)  # fmt: skip
    attack: str = option(
        "pgd20x10", "Attack behind the robust loss at w, RCE(w), that every measure subtracts: "
        + _ESTIMATING + ", or pgd<S>x<R>.", ATTACK, flags=("--attack", "--attacks"),
    )  # fmt: skip
    sample_attack: str | None = option(
        None, "Average case: the attack re-run at every w + nu (its mean minus RCE(w) from "
        "--attack). Give --attack's name to run it in full.", ATTACK, added=True,
        show_default="--attack with one restart (pgd20x10 -> pgd20, the paper's code)",
    )  # fmt: skip
    iterations: int = option(ITERATIONS, "Steps of the joint worst-case ascent; Lanczos steps "
                             "(hessian).", MEASURE, low=1)  # fmt: skip
    restarts: int = option(10, "Attempts of the worst-case ascent (paper: the max over attempts).",
                           MEASURE, low=1)  # fmt: skip
    weight_lr: float = _weight_lr(
        "Worst case: normalized weight step, relative to ||w_l|| (code 0.01, text 0.001)."
    )
    weight_norm: str = option(
        "l2", "Weight ball: l2 (per layer, docs/method.md) or linf (per element; per-batch only).",
        MEASURE, flags=("--weight-norm",), menu=True, choices=("l2", "linf"),
    )  # fmt: skip
    weight_batch: int = option(
        128, "Worst case: examples per weight step (paper) or per offset (per-batch).", MEASURE,
        flags=("--weight-batch",), low=1,
    )  # fmt: skip
    worst_estimator: str = _named(
        "paper", registries.WORST_ESTIMATORS, MEASURE, flags=("--worst-estimator",), menu=True
    )
    worst_reattack: bool = option(
        False, "paper estimator: also re-run --attack at the final nu (column reattack_loss; the "
        "flatness stays the paper's).", MEASURE,
        flags=("--worst-reattack/--no-worst-reattack",),
    )  # fmt: skip
    conv_scale: float = _conv_scale(
        "Multiply every conv weight by this before measuring (the paper's x0.5 / x2 "
        "scale-invariance check: flatness stays, lambda_max scales by 1/a^2)."
    )

    def validate(self) -> None:
        validate_fields(self)
        registries.require_paper_ball(self.worst_estimator, self.weight_norm)


LANDSCAPE_SCALE = {"random": 0.5, "adversarial": 0.025}  # paper: relative direction lengths
LANDSCAPE_SCALE_MAXABS = {"random": 0.5, "adversarial": 0.01}  # the code's, with layer-maxabs


@dataclass(frozen=True)
class LandscapeConfig(EvalConfig):
    """`flatcli landscape`: docs/method.md's landscapes of the robust and clean loss along weight
    directions. `range`, `n_directions`, `scale` None: per direction kind (the help texts)."""

    n_examples: int | None = option(
        128, "First N examples of the split (paper: 128).", INPUTS, positive=True
    )  # docs/method.md: one batch of 128 test examples
    directions: str = _named("random", registries.DIRECTIONS, MEASURE, menu=True)
    dims: int = option(1, "1: a line per direction; 2: a steps x steps plane.", MEASURE,
                       choices=(1, 2))  # fmt: skip
    steps: int = option(51, "Grid points per axis (>= 2).", MEASURE, low=2)
    range: tuple[float, float] | None = option(
        None, "MIN,MAX of alpha (and beta). Default: -1,1; 0,1 for interpolate.", MEASURE,
        flags=("--range",), parse="pair", show_default=False,
    )  # fmt: skip
    n_directions: int | None = option(
        None, "Directions (planes in 2-D), one work unit each. Default: 10 in 1-D, 1 in 2-D.",
        MEASURE, flags=("--n-directions",), low=1, show_default=False,
    )  # fmt: skip
    normalization: str = _named(
        "layer", registries.NORMALIZATIONS, MEASURE,
        after=" Normalization layers are never directions.", menu=True,
    )
    scale: float | None = option(
        None, "Relative length s of the directions. Default: "
        f"{LANDSCAPE_SCALE['random']:g} random, {LANDSCAPE_SCALE['adversarial']:g} adversarial "
        f"(docs/method.md; {LANDSCAPE_SCALE_MAXABS['adversarial']:g} with layer-maxabs, the "
        "code), 1 hessian.", MEASURE,
        parse="number", positive=True, show_default=False,
    )  # fmt: skip
    loss: str = option(
        "both", "robust (re-runs --attack at every point; clean comes free) | clean | both.",
        MEASURE, choices=LOSSES,
    )  # fmt: skip
    attack: str = option("pgd20x10", "Attack behind the robust loss: a pgd preset, pgd<S>x<R>, "
                         "or apgd-ce.", ATTACK, flags=("--attack", "--attacks"))  # fmt: skip
    to: str | None = option(None, "interpolate: the checkpoint at alpha = 1.", INPUTS,
                            flags=("--to",), parse="path", show_default=False)  # fmt: skip
    iterations: int = option(ITERATIONS, "hessian: subspace-iteration steps.", MEASURE, low=1)
    weight_lr: float = _weight_lr("adversarial: normalized weight step, relative to ||w_l||.")
    adversarial_loss: str = _named(
        "robust-fixed", registries.ADVERSARIAL_LOSSES, MEASURE, "adversarial: ",
        flags=("--adversarial-loss",), menu=True,
    )
    adversarial_xi: float = option(
        0.005, "adversarial: radius of the weight attack (relative, per layer; the code's 0.005).",
        MEASURE, flags=("--adversarial-xi",),
    )  # fmt: skip
    adversarial_iterations: int = option(
        7, "adversarial: steps of the weight attack (the code's 7).", MEASURE,
        flags=("--adversarial-iterations",), low=1,
    )  # fmt: skip
    conv_scale: float = _conv_scale(
        "Multiply every conv weight by this first (the paper's scale-invariance check)."
    )
    point_batch: int | None = option(
        None, "Grid points evaluated in one stacked pass (torch.func.vmap; same results up to "
        "float rounding). More than 1 needs an attack that attacks every example (pgd*, "
        "apgd-ce).", RUNTIME, runtime=True, low=1, metavar="N",
        show_default="what fits in free GPU memory; 1 on CPU, where stacking is no faster",
    )  # fmt: skip

    def validate(self) -> None:
        validate_fields(self)
        lo, hi = self.range or (0.0, 1.0)
        require(math.isfinite(lo + hi), f"--range {lo:g},{hi:g}: expected two finite numbers")
        require(lo < hi, f"--range {lo:g},{hi:g}: MIN must be smaller than MAX")
        interpolate = self.directions == "interpolate"
        needs_to = "--directions interpolate needs --to CKPT (the other end)"
        require(not interpolate or self.to, needs_to)
        require(interpolate or self.to is None, "--to is only used with --directions interpolate")
