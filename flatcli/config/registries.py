"""Names -> help of flatness measures, worst-case estimators, landscape directions,
normalizations and adversarial losses, and training's schedules, optimizers, augmentations and
attack options. Torch-free, so `--help` lists them without importing torch; the config fields take
their choices from here, and `flatcli.measures` and `flatcli.training` dispatch on them (a test
checks that every flatness measure named here is registered by its module)."""

from __future__ import annotations

from dataclasses import dataclass

from flatcli.errors import UsageError


@dataclass(frozen=True)
class Choice:
    """A named option value and its one-line help."""

    name: str
    help: str


@dataclass(frozen=True)
class Measure:
    """A flatness measure: its family (average | worst | hessian), whether it needs the robust
    loss (an attack), and its help line."""

    name: str
    family: str
    robust: bool
    help: str


def _table(*entries):
    return {e.name: e for e in entries}


MEASURES: dict[str, Measure] = _table(
    Measure("average", "average", True, "mean RCE(w + nu) - RCE(w), nu on the relative sphere"),
    Measure("worst", "worst", True, "max of the robust loss over the relative ball - RCE(w)"),
    Measure("clean-average", "average", False, "the average case of the clean loss (eps 0)"),
    Measure("clean-worst", "worst", False, "the worst case of the clean loss (eps 0)"),
    Measure("hessian", "hessian", True, "lambda_max and trace at the PGD points, every layer"),
    Measure("clean-hessian", "hessian", False, "lambda_max and trace of the clean loss"),
    Measure(
        "paper-hessian",
        "hessian",
        False,
        "the paper's: clean loss on the held-out split, weights with dim > 1, summed batches",
    ),
)
WORST_ESTIMATORS: dict[str, Choice] = _table(
    Choice("paper", "the paper's code: one nu for the set, per-batch steps, final iterate"),
    Choice("per-batch", "one nu per batch, best iterate, re-attack at nu*, clamped at RCE(w)"),
)
DIRECTIONS: dict[str, Choice] = _table(
    Choice("random", "a Gaussian per layer"),
    Choice("adversarial", "the weight attack's offset (clean loss as the code, or robust)"),
    Choice("hessian", "top eigenvectors of the Hessian of the robust loss"),
    Choice("interpolate", "the straight line to --to (never rescaled)"),
)
NORMALIZATIONS: dict[str, Choice] = _table(
    Choice("layer", "each d_l to s ||w_l|| (docs/method.md)"),
    Choice("layer-maxabs", "each d_l times s max|w_l| / max|d_l| (the paper's code)"),
    Choice("filter", "each output filter to s times the same filter's norm of w"),
    Choice("none", "the whole d to s ||w||"),
)
ADVERSARIAL_LOSSES: dict[str, Choice] = _table(
    Choice("robust-fixed", "the weight attack on the robust loss at PGD-10 points fixed at w"),
    Choice("clean", "the weight attack on the clean loss"),
    Choice("robust", "the joint weight and input attack on the robust loss"),
)
RESTART_CHOICES: dict[str, Choice] = _table(
    Choice("wrong-class", "the restart with the largest wrong-class probability"),
    Choice("loss", "the restart with the largest cross-entropy"),
)

SCHEDULES: dict[str, Choice] = _table(
    Choice("multistep", "lr times --lr-factor at each milestone (the paper's code)"),
    Choice("cyclic", "linear up to --lr at --cyclic-peak of training, then down to 0"),
    Choice("cosine", "cosine from --lr down to 0"),
)
OPTIMIZERS: dict[str, Choice] = _table(
    Choice("sgd", "SGD with momentum"),
    Choice("entropy-sgd", "Entropy-SGD as the paper's code (Langevin inner loop)"),
)
AUGMENTATIONS: dict[str, Choice] = _table(
    Choice("none", "the images as they are"),
    Choice("crop-flip", "random crop, zero padding of size // 8 (4 px on 32), horizontal flip"),
    Choice("cutout", "crop-flip, then a zeroed square of a quarter of the image area"),
    Choice("autoaugment", "crop-flip, then torchvision's AutoAugment (CIFAR-10 policy)"),
)
ATTACK_POINTS: dict[str, Choice] = _table(
    Choice("best", "largest loss over the iterates (the paper's code)"),
    Choice("final", "last iterate (Madry et al.)"),
)
EXTRA_STEPS: dict[str, Choice] = _table(
    Choice("same", "ceil(N / batch) steps, as without extra data; extra drawn with replacement"),
    Choice("labelled-pass", "every labelled example once: ceil(N / labelled per batch) steps"),
)
WEIGHT_CLIP_LAYERS: dict[str, Choice] = _table(
    Choice("all", "every trainable parameter, normalization layers' scale and shift too"),
    Choice("weights", "the layers (weights and biases), normalization layers not"),
)
AWP_MODES: dict[str, Choice] = _table(
    Choice("eval", "the offset computed in eval mode (BN running statistics)"),
    Choice("train", "the offset computed in train mode (batch statistics)"),
)
AWP_LAYERS: dict[str, Choice] = _table(
    Choice("weights", "tensors with dim > 1 (AWP's code)"),
    Choice("all", "biases too"),
)
LABEL_NOISE_CLASSES: dict[str, Choice] = _table(
    Choice("all", "drawn from all K classes (the paper's code)"),
    Choice("others", "a wrong one"),
)


def describe(registry: dict) -> str:
    """'name: help; name: help' for a `--help` text."""
    return "; ".join(f"{name}: {entry.help}" for name, entry in registry.items())


def require_paper_ball(estimator: str, weight_norm: str) -> None:
    """The paper's worst-case estimator is defined on the relative l2 ball only."""
    if estimator == "paper" and weight_norm != "l2":
        raise UsageError("--worst-estimator paper uses the l2 ball; use --weight-norm l2")
