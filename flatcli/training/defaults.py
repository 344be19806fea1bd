"""Training defaults: per dataset (`TrainDefaults`) and per method or option
(`METHOD_DEFAULTS`, applied only where the option is in use). `flatcli.config.TrainConfig` reads
them for its help texts; `flatcli.training.config.resolve_config` fills them in."""

from __future__ import annotations

from dataclasses import dataclass


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
