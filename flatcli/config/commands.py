"""Frozen configurations per command: every default, help text and check lives here, once
(`flatcli train`'s: TrainConfig in flatcli.training.defaults, beside the defaults it resolves).

Each field carries its option (flatcli.config.fields.option: help, panel, parser, checks); the CLI's
options are built from them. `config_hash` covers the result-affecting fields only (docs/method.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from flatcli.attacks.presets import PRESETS
from flatcli.checkpoints import zoos
from flatcli.config import fields, registries
from flatcli.config.fields import (
    ATTACK,
    INPUTS,
    MEASURE,
    NORMS,
    RUNTIME,
    THREAT,
    named,
    option,
    require,
    validate_fields,
)
from flatcli.training.defaults import (  # noqa: F401 (re-exported: their old home)
    METHOD_DEFAULTS,
    TRAIN_DEFAULTS,
    TRAIN_FALLBACK,
    TrainConfig,
    TrainDefaults,
)

SPLITS = ("train", "test", "heldout")
PRECISIONS = ("fp32", "tf32", "bf16")  # flatcli.attacks.precision.PRECISIONS
LOSSES = ("robust", "clean", "both")
EVAL_BATCH = 512  # examples per evaluation batch (halved on out-of-memory)
SAMPLES = 10  # random offsets per xi (average case); Hutchinson probes (Hessian)
ITERATIONS = 20  # joint worst-case ascent steps; Lanczos / subspace-iteration steps (Hessian)
_NEVER = object()  # no value equals it: the field is always hashed


def _conv_scale(help_text: str):
    return option(help_text, INPUTS, default=1.0, flags=("--conv-scale",), positive=True)


def _weight_lr(help_text: str):
    return option(help_text, MEASURE, default=0.01, flags=("--weight-lr",), positive=True)


_ESTIMATING = ", ".join(p for p in PRESETS if p.startswith("pgd") or p == "apgd-ce")


@dataclass(frozen=True)
class EvalConfig:
    """What every evaluation of checkpoints shares. `dataset`, `eps`, `n_examples` None: from
    the checkpoints' metadata / their training eps / the first 1000, resolved before hashing."""

    dataset: str | None = option(
        "digits (bundled), cifar10, cifar100, svhn, mnist, fashion-mnist, or npz:PATH.",
        INPUTS,
        metavar="NAME",
        show_default="the checkpoints' flatcli metadata",
    )
    split: str = option(
        "test (without the held-out part), train, or heldout.",
        INPUTS,
        default="test",
        menu=True,
        choices=SPLITS,
    )
    n_examples: int | None = option(
        "First N examples of the split.",
        INPUTS,
        metavar="N",
        positive=True,
        show_default="1000, or the whole split if smaller",
    )
    eps: float | None = option(
        "Radius, e.g. 8/255 or 0.0314 (the exact float is stored).",
        THREAT,
        metavar="X",
        parse="number",
        show_default="checkpoint's training eps, else the dataset's",
    )
    norm: str = option(
        "Threat model of the input perturbation.", THREAT, default="linf", menu=True, choices=NORMS
    )
    step_size: float | None = option(
        "Absolute PGD step size, e.g. 2/255.",
        ATTACK,
        metavar="X",
        parse="number",
        positive=True,
        show_default="the preset's ratio times eps",
    )
    seed: int = fields.seed()
    arch: str | None = option(
        "Architecture of foreign checkpoints (e.g. preact-resnet18, resnet18, wrn-34-10). "
        + zoos.help_line(),
        INPUTS,
        metavar="ARCH",
        show_default="the checkpoint's flatcli metadata",
    )
    normalize: str | None = option(
        "Input normalization of foreign checkpoints: cifar10 | cifar100 | svhn | none | "
        "MEAN,STD (per channel: m1,m2,m3,s1,s2,s3).",
        INPUTS,
        metavar="NAME|MEAN,STD",
        show_default="the checkpoint's flatcli metadata, else none",
    )
    data_dir: str | None = fields.data_dir()
    device: str = fields.device()
    batch_size: int = option(
        "Examples per batch (halved automatically on out-of-memory).",
        RUNTIME,
        default=EVAL_BATCH,
        runtime=True,
        metavar="N",
        low=1,
        min=1,
    )
    precision: str = option(
        "What the attack searches in: fp32 (TF32 off); tf32 (CUDA TF32 matmuls/convolutions); "
        "bf16 (autocast). Reported losses and errors are IEEE fp32, re-evaluated at the points "
        "found; weights stay fp32. tf32/bf16 need pgd or apgd-ce. Part of the configuration.",
        RUNTIME,
        default="fp32",
        added=True,
        menu=True,
        choices=PRECISIONS,
    )
    compile: str = fields.compile_policy()
    restart_choice: str = named(
        registries.RESTART_CHOICES,
        ATTACK,
        before="PGD with restarts, per example: ",
        default="wrong-class",
        flags=("--restart-choice",),
        menu=True,
        added=True,
    )

    def validate(self) -> None:
        """The checks that need no data or checkpoint; UsageError (one line) on bad input."""
        validate_fields(self)


@dataclass(frozen=True)
class AttackConfig(EvalConfig):
    """`flatcli attack`: docs/method.md's evaluation protocol (PGD-20 x 10 robust loss; robust
    error from the strongest attack)."""

    attacks: tuple[str, ...] = option(
        "Comma-separated presets: " + ", ".join(PRESETS) + ", or pgd<S>x<R>.",
        ATTACK,
        default=("pgd20x10", "aa-lite"),
        metavar="LIST",
        parse="names",
        flags=("--attacks", "--attack"),
    )


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


AVERAGE_XI = 0.5  # docs/method.md: average-case flatness, relative L2 radius
WORST_XI = 0.00075  # docs/method.md main text and per-epoch code (its supplement tables use 0.003)


@dataclass(frozen=True)
class FlatnessConfig(EvalConfig):
    """`flatcli flatness`: docs/method.md's average- and worst-case flatness of the robust loss
    and the Hessian. `xi=None`: AVERAGE_XI / WORST_XI per measure."""

    measures: tuple[str, ...] = option(
        "Repeatable or comma-separated; default: average,worst. "
        f"{registries.describe(registries.MEASURES)}.",
        MEASURE,
        default=("average", "worst"),
        param="measure",
        flags=("--measure", "-m"),
        parse="names",
        repeat=True,
        show_default=False,
        choices=tuple(registries.MEASURES),
    )
    xi: tuple[float, ...] | None = option(
        "Relative radius of the weight ball (||nu_l|| <= xi ||w_l|| per layer); repeatable "
        f"or comma-separated, one row per value. Default: {AVERAGE_XI:g} (average), "
        f"{WORST_XI:g} (worst).",
        MEASURE,
        flags=("--xi",),
        parse="numbers",
        repeat=True,
        show_default=False,
    )
    samples: int = option(
        "Random offsets per xi (average); Hutchinson probes (hessian).",
        MEASURE,
        default=SAMPLES,
        low=1,
    )
    attack: str = option(
        "Attack behind the robust loss at w, RCE(w), that every measure subtracts: "
        f"{_ESTIMATING}, or pgd<S>x<R>.",
        ATTACK,
        default="pgd20x10",
        flags=("--attack", "--attacks"),
    )
    sample_attack: str | None = option(
        "Average case: the attack re-run at every w + nu (its mean minus RCE(w) from "
        "--attack). Give --attack's name to run it in full.",
        ATTACK,
        added=True,
        show_default="--attack with one restart (pgd20x10 -> pgd20, the paper's code)",
    )
    iterations: int = option(
        "Steps of the joint worst-case ascent; Lanczos steps (hessian).",
        MEASURE,
        default=ITERATIONS,
        low=1,
    )
    restarts: int = option(
        "Attempts of the worst-case ascent (paper: the max over attempts).",
        MEASURE,
        default=10,
        low=1,
    )
    weight_lr: float = _weight_lr(
        "Worst case: normalized weight step, relative to ||w_l|| (code 0.01, text 0.001)."
    )
    weight_norm: str = option(
        "Weight ball: l2 (per layer, docs/method.md) or linf (per element; per-batch only).",
        MEASURE,
        default="l2",
        flags=("--weight-norm",),
        menu=True,
        choices=("l2", "linf"),
    )
    weight_batch: int = option(
        "Worst case: examples per weight step (paper) or per offset (per-batch).",
        MEASURE,
        default=128,
        flags=("--weight-batch",),
        low=1,
    )
    worst_estimator: str = named(
        registries.WORST_ESTIMATORS,
        MEASURE,
        default="paper",
        flags=("--worst-estimator",),
        menu=True,
    )
    worst_reattack: bool = option(
        "paper estimator: also re-run --attack at the final nu (column reattack_loss; the "
        "flatness stays the paper's).",
        MEASURE,
        default=False,
        flags=("--worst-reattack/--no-worst-reattack",),
    )
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
        "First N examples of the split (paper: 128).", INPUTS, default=128, positive=True
    )  # docs/method.md: one batch of 128 test examples
    directions: str = named(registries.DIRECTIONS, MEASURE, default="random", menu=True)
    dims: int = option(
        "1: a line per direction; 2: a steps x steps plane.", MEASURE, default=1, choices=(1, 2)
    )
    steps: int = option("Grid points per axis (>= 2).", MEASURE, default=51, low=2)
    range: tuple[float, float] | None = option(
        "MIN,MAX of alpha (and beta). Default: -1,1; 0,1 for interpolate.",
        MEASURE,
        flags=("--range",),
        parse="pair",
        show_default=False,
    )
    n_directions: int | None = option(
        "Directions (planes in 2-D), one work unit each. Default: 10 in 1-D, 1 in 2-D.",
        MEASURE,
        flags=("--n-directions",),
        low=1,
        show_default=False,
    )
    normalization: str = named(
        registries.NORMALIZATIONS,
        MEASURE,
        after=" Normalization layers are never directions.",
        default="layer",
        menu=True,
    )
    scale: float | None = option(
        "Relative length s of the directions. Default: "
        f"{LANDSCAPE_SCALE['random']:g} random, {LANDSCAPE_SCALE['adversarial']:g} adversarial "
        f"(docs/method.md; {LANDSCAPE_SCALE_MAXABS['adversarial']:g} with layer-maxabs, the "
        "code), 1 hessian.",
        MEASURE,
        parse="number",
        positive=True,
        show_default=False,
    )
    loss: str = option(
        "robust (re-runs --attack at every point; clean comes free) | clean | both.",
        MEASURE,
        default="both",
        choices=LOSSES,
    )
    attack: str = option(
        "Attack behind the robust loss: a pgd preset, pgd<S>x<R>, or apgd-ce.",
        ATTACK,
        default="pgd20x10",
        flags=("--attack", "--attacks"),
    )
    to: str | None = option(
        "interpolate: the checkpoint at alpha = 1.",
        INPUTS,
        flags=("--to",),
        parse="path",
        show_default=False,
    )
    iterations: int = option(
        "hessian: subspace-iteration steps.", MEASURE, default=ITERATIONS, low=1
    )
    weight_lr: float = _weight_lr("adversarial: normalized weight step, relative to ||w_l||.")
    adversarial_loss: str = named(
        registries.ADVERSARIAL_LOSSES,
        MEASURE,
        before="adversarial: ",
        default="robust-fixed",
        flags=("--adversarial-loss",),
        menu=True,
    )
    adversarial_xi: float = option(
        "adversarial: radius of the weight attack (relative, per layer; the code's 0.005).",
        MEASURE,
        default=0.005,
        flags=("--adversarial-xi",),
    )
    adversarial_iterations: int = option(
        "adversarial: steps of the weight attack (the code's 7).",
        MEASURE,
        default=7,
        flags=("--adversarial-iterations",),
        low=1,
    )
    conv_scale: float = _conv_scale(
        "Multiply every conv weight by this first (the paper's scale-invariance check)."
    )
    point_batch: int | None = option(
        "Grid points evaluated in one stacked pass (torch.func.vmap; same results up to float "
        "rounding). More than 1 needs an attack that attacks every example (pgd*, apgd-ce).",
        RUNTIME,
        runtime=True,
        low=1,
        metavar="N",
        show_default="what fits in free GPU memory; 1 on CPU, where stacking is no faster",
    )

    def validate(self) -> None:
        validate_fields(self)
        lo, hi = self.range or (0.0, 1.0)
        require(math.isfinite(lo + hi), f"--range {lo:g},{hi:g}: expected two finite numbers")
        require(lo < hi, f"--range {lo:g},{hi:g}: MIN must be smaller than MAX")
        interpolate = self.directions == "interpolate"
        needs_to = "--directions interpolate needs --to CKPT (the other end)"
        require(not interpolate or self.to, needs_to)
        require(interpolate or self.to is None, "--to is only used with --directions interpolate")
