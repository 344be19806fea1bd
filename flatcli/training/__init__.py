"""`flatcli train`: adversarial training with the methods PAPER.md compares.

- `loop.py`: epochs, checkpoints, the train log, best epoch, resume, DDP (`train`, `resolve_config`)
- `methods.py`: clean, AT, TRADES, MART losses and AWP's weight offset
- `regularizers.py`: augmentation, label noise, weight clipping, Entropy-SGD, extra data
- `schedules.py`: multistep / cyclic / cosine learning rates as pure functions of the step

Importing this package imports torch; the CLI imports it inside the command.

Digits defaults (`flatcli.config.TRAIN_DEFAULTS["digits"]`), measured with `flatcli train --out
RUN` (small-cnn, PGD-7 AT at eps 0.15, SGD 0.05 Nesterov, wd 5e-4, batch 128, 1200 training
images, held-out PGD-7x5 on the 197 held-out images every epoch) on 2 CPU threads: 100 epochs
in 130 s (0.77 s of training and 0.44 s of held-out evaluation and writes per epoch), lr x0.1
once, at epoch 20. Robust overfitting shows after the decay in the robust loss: held-out robust
loss lowest at epoch 23 (0.50), 0.57 on average over epochs 81-100, while the training robust
loss keeps falling (0.086 over epochs 21-30 -> 0.040 over 81-100). The held-out robust error
barely moves (best 15.7 % at epoch 51, 17.1 % on average over 81-100: a few of 197 examples).
Other settings tried: at eps 0.2 the loss rises less (0.72 -> 0.81) and the error stays at ~25 %;
at eps 0.25 nothing rises within 100 epochs; with two decays (PAPER.md's first digits
measurement: 30 and 45 of 60 epochs) the second decay freezes training before anything rises.
"""

from flatcli.training.loop import (
    TrainEvent,
    TrainingDiverged,
    TrainResult,
    read_run,
    resolve_config,
    train,
)

__all__ = ["TrainEvent", "TrainResult", "TrainingDiverged", "read_run", "resolve_config", "train"]
