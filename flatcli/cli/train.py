"""`flatcli train`: adversarial training with a checkpoint every epoch, resumable, DDP-ready."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer
from typer import Exit

from flatcli.cli import options as o
from flatcli.cli.output import err_console, render
from flatcli.config import METHOD_DEFAULTS, TrainConfig
from flatcli.training.registry import method_help

SUMMARY = [
    "epoch",
    "lr",
    "train_loss",
    "train_clean_err",
    "train_robust_err",
    "heldout_clean_err",
    "heldout_robust_err",
    "wall_time_s",
]

# Help panels shared across commands (DESIGN.md), plus train's own.
_METHOD, _THREAT, _ATTACK, _OPT = "Method", "Threat model", "Attack", "Optimization"
_DATA, _MEASURE, _OUTPUT, _RUNTIME = "Data", "Measure", "Output", "Runtime"
_D = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # the one source of defaults
_M = METHOD_DEFAULTS


def _opt(help_text: str, panel: str, *names: str, **kwargs):
    return typer.Option(*names, help=help_text, rich_help_panel=panel, **kwargs)


def train(
    out: Annotated[Path, _opt("Run directory (created; rerun to resume).", _OUTPUT, "--out", "-o")],
    dataset: Annotated[
        str,
        _opt("digits (bundled), cifar10, cifar100, svhn, mnist, fashion-mnist, npz:PATH.", _DATA),
    ] = _D["dataset"],
    arch: Annotated[
        str | None,
        _opt(
            "Architecture (tiny, small-cnn, preact-resnet18, resnet18, wrn-28-10, "
            "...). Default: the dataset's.",
            _METHOD,
        ),
    ] = _D["arch"],
    width: Annotated[
        int | None,
        _opt("Channels of the first layer (small-cnn 32, preact-resnet18/resnet18 64).", _METHOD),
    ] = _D["width"],
    method: Annotated[str, _opt(method_help() + ".", _METHOD)] = _D["method"],
    trades_beta: Annotated[
        float | None, _opt(f"TRADES beta (default {_M['trades_beta']:g}).", _METHOD)
    ] = _D["trades_beta"],
    mart_beta: Annotated[
        float | None, _opt(f"MART beta (default {_M['mart_beta']:g}).", _METHOD)
    ] = _D["mart_beta"],
    awp_gamma: Annotated[
        float | None,
        _opt(
            f"AWP: relative weight perturbation per layer (default {_M['awp_gamma']:g}).", _METHOD
        ),
    ] = _D["awp_gamma"],
    awp_warmup: Annotated[
        int | None,
        _opt(
            f"AWP: epochs of plain AT before the perturbation (default {_M['awp_warmup']}).",
            _METHOD,
        ),
    ] = _D["awp_warmup"],
    awp_layers: Annotated[
        str | None,
        _opt(
            f"AWP: weights (tensors with dim > 1, AWP's code) | all (biases too). "
            f"Default: {_M['awp_layers']}.",
            _METHOD,
        ),
    ] = _D["awp_layers"],
    label_smoothing: Annotated[float, _opt("Label smoothing of the training loss.", _METHOD)] = _D[
        "label_smoothing"
    ],
    label_noise: Annotated[
        float, _opt("Probability of a random label per example and batch.", _METHOD)
    ] = _D["label_noise"],
    label_noise_classes: Annotated[
        str,
        _opt("all: drawn from all K classes (the paper's code) | others: a wrong one.", _METHOD),
    ] = _D["label_noise_classes"],
    weight_clip: Annotated[
        float | None, _opt("Clamp weights and biases to [-C, C] after every step.", _METHOD)
    ] = _D["weight_clip"],
    eps: Annotated[
        str | None,
        _opt(
            "Radius, e.g. 8/255 or 0.0314. Default: the dataset's training eps "
            "(digits 0.15). Clean runs are evaluated at the default.",
            _THREAT,
        ),
    ] = _D["eps"],
    norm: Annotated[str, _opt("linf | l2.", _THREAT)] = _D["norm"],
    attack: Annotated[
        str | None,
        _opt(
            f"PGD preset of the inner attack: {_M['attack']} (default), pgd10, pgd<S>x<R>.", _ATTACK
        ),
    ] = _D["attack"],
    step_size: Annotated[
        str | None,
        _opt("Absolute step (e.g. 0.007). Default: the preset's ratio times eps.", _ATTACK),
    ] = _D["step_size"],
    random_start: Annotated[
        bool | None,
        _opt(
            "Random start of the inner attack (default: on).",
            _ATTACK,
            "--random-start/--no-random-start",
        ),
    ] = _D["random_start"],
    attack_point: Annotated[
        str | None,
        _opt(
            "The PGD point trained on: best (largest loss over the iterates, the paper's code) | "
            f"final (last iterate, Madry et al.). Default: {_M['attack_point']}.",
            _ATTACK,
        ),
    ] = _D["attack_point"],
    epochs: Annotated[
        int | None,
        _opt(
            "Epochs. Default: the dataset's (digits 100, else 150), divided by --entropy-steps "
            "with entropy-sgd (equal compute, as the paper's code). A finished run is extended "
            "to more epochs when its schedule allows.",
            _OPT,
        ),
    ] = _D["epochs"],
    batch_size: Annotated[int, _opt("Global batch size (split over DDP processes).", _OPT)] = _D[
        "batch_size"
    ],
    lr: Annotated[float, _opt("Learning rate (the peak for cyclic).", _OPT)] = _D["lr"],
    momentum: Annotated[float, _opt("SGD momentum.", _OPT)] = _D["momentum"],
    nesterov: Annotated[
        bool, _opt("Nesterov momentum (the paper's code).", _OPT, "--nesterov/--no-nesterov")
    ] = _D["nesterov"],
    weight_decay: Annotated[float, _opt("Weight decay (the paper's code: 5e-4).", _OPT)] = _D[
        "weight_decay"
    ],
    schedule: Annotated[str, _opt("multistep | cyclic | cosine.", _OPT)] = _D["schedule"],
    milestones: Annotated[
        str | None,
        _opt(
            "multistep: comma-separated epochs (60,90,120) or fractions "
            "(0.4,0.6,0.8). Default: the dataset's.",
            _OPT,
        ),
    ] = _D["milestones"],
    lr_factor: Annotated[float, _opt("multistep: factor at each milestone.", _OPT)] = _D[
        "lr_factor"
    ],
    cyclic_peak: Annotated[float, _opt("cyclic: fraction of training at the peak lr.", _OPT)] = _D[
        "cyclic_peak"
    ],
    optimizer: Annotated[str, _opt("sgd | entropy-sgd.", _OPT)] = _D["optimizer"],
    entropy_steps: Annotated[
        int | None,
        _opt(
            f"Entropy-SGD: Langevin steps, each on a new batch and attack "
            f"(default {_M['entropy_steps']}).",
            _OPT,
        ),
    ] = _D["entropy_steps"],
    entropy_lr: Annotated[
        float | None, _opt(f"Entropy-SGD: Langevin step size (default {_M['entropy_lr']:g}).", _OPT)
    ] = _D["entropy_lr"],
    entropy_gamma: Annotated[
        float | None, _opt(f"Entropy-SGD: scope (default {_M['entropy_gamma']:g}).", _OPT)
    ] = _D["entropy_gamma"],
    entropy_noise: Annotated[
        float | None, _opt(f"Entropy-SGD: noise scale (default {_M['entropy_noise']:g}).", _OPT)
    ] = _D["entropy_noise"],
    entropy_alpha: Annotated[
        float | None,
        _opt(
            f"Entropy-SGD: running average mu <- a mu + (1 - a) w' (default "
            f"{_M['entropy_alpha']:g}).",
            _OPT,
        ),
    ] = _D["entropy_alpha"],
    train_examples: Annotated[
        int | None, _opt("Train on the first N training examples only.", _DATA)
    ] = _D["train_examples"],
    augment: Annotated[
        str | None,
        _opt(
            "none | crop-flip | cutout | autoaugment. Default: the dataset's "
            "(crop-flip on CIFAR, none otherwise).",
            _DATA,
        ),
    ] = _D["augment"],
    extra_data: Annotated[
        Path | None, _opt("npz with arrays x, y: pseudo-labelled extra data.", _DATA)
    ] = _D["extra_data"],
    extra_fraction: Annotated[
        float | None,
        _opt(
            f"Share of each batch from --extra-data (default {_M['extra_fraction']:g}, the "
            "paper's code).",
            _DATA,
        ),
    ] = _D["extra_fraction"],
    heldout_attack: Annotated[
        str, _opt("Attack on the held-out split that picks the best epoch.", _MEASURE)
    ] = _D["heldout_attack"],
    heldout_every: Annotated[
        int | None, _opt("Evaluate the held-out split every K epochs (and at the end).", _MEASURE)
    ] = _D["heldout_every"],
    heldout_examples: Annotated[
        int | None,
        _opt("First N held-out examples (default: the whole held-out split).", _MEASURE),
    ] = _D["heldout_examples"],
    save_every: Annotated[int, _opt("Checkpoint every K epochs (and at the end).", _OUTPUT)] = _D[
        "save_every"
    ],
    amp: Annotated[str, _opt("none | bf16 (autocast, fp32 master weights).", _RUNTIME)] = _D["amp"],
    compile: o.CompileOpt = o.Compile(_D["compile"]),
    seed: o.Seed = _D["seed"],
    data_dir: o.DataDir = _D["data_dir"],
    device: o.Device = _D["device"],
    fmt: o.FormatOpt = o.Format.table,
    quiet: o.Quiet = False,
    force: Annotated[
        bool, _opt("Discard an existing run in --out and start over.", _OUTPUT, "--force")
    ] = False,
):
    """Train a model and save a checkpoint every epoch into OUT; rerun to resume.

    OUT gets run.json (config, versions, best epoch by held-out robust error),
    epoch_NNNN.safetensors (flatcli attack OUT finds every epoch), train_log/*.parquet and
    trainer_state.pt (resume).
    On N GPUs or processes: torchrun --nproc-per-node N -m flatcli train ...

    Example: flatcli train --dataset digits --method at --epochs 60 --out runs/at

    docs/method.md's CIFAR-10 baseline: flatcli train --dataset cifar10 --arch resnet18 --method at
    --epochs 150 --lr 0.05 --milestones 60,90,120 --eps 0.0314 --attack pgd7 --step-size 0.007
    --weight-decay 5e-4 --nesterov --augment crop-flip --out runs/cifar10-at
    """
    from flatcli.errors import UsageError
    from flatcli.training import TrainEvent
    from flatcli.training import train as run_training

    try:
        parsed_milestones = (
            None if milestones is None else tuple(float(m) for m in o.csv_list(milestones))
        )
    except ValueError:
        raise UsageError(f"--milestones {milestones!r}: expected numbers like 60,90,120") from None
    config = TrainConfig(
        dataset=dataset,
        arch=arch,
        width=width,
        method=method,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        optimizer=optimizer,
        schedule=schedule,
        milestones=parsed_milestones,
        lr_factor=lr_factor,
        cyclic_peak=cyclic_peak,
        eps=o.parse_eps(eps),
        norm=norm,
        attack=attack,
        step_size=o.parse_eps(step_size, "--step-size"),
        random_start=random_start,
        attack_point=attack_point,
        trades_beta=trades_beta,
        mart_beta=mart_beta,
        awp_gamma=awp_gamma,
        awp_warmup=awp_warmup,
        awp_layers=awp_layers,
        label_smoothing=label_smoothing,
        label_noise=label_noise,
        label_noise_classes=label_noise_classes,
        weight_clip=weight_clip,
        augment=augment,
        entropy_steps=entropy_steps,
        entropy_lr=entropy_lr,
        entropy_gamma=entropy_gamma,
        entropy_noise=entropy_noise,
        entropy_alpha=entropy_alpha,
        extra_data=None if extra_data is None else str(extra_data),
        extra_fraction=extra_fraction,
        train_examples=train_examples,
        heldout_attack=heldout_attack,
        heldout_every=heldout_every,
        heldout_examples=heldout_examples,
        amp=amp,
        compile=compile.value,
        seed=seed,
        save_every=save_every,
        data_dir=None if data_dir is None else str(data_dir),
        device=device,
    )

    def log(message: str) -> None:
        if not quiet:
            err_console.print(message, markup=False)

    def on_event(event: TrainEvent) -> None:
        if event.kind == "epoch":
            log(_epoch_line(event))
        elif event.kind in ("start", "resume", "done", "complete"):
            log(f"train: {event.message}")

    result = run_training(config, out, force=force, on_event=on_event)
    if result.is_main:
        from flatcli import tables

        render(result.rows, tables.columns("train_log"), fmt.value, SUMMARY)
    raise Exit(0)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _epoch_line(event) -> str:
    r = event.row or {}
    held = ""
    if r.get("heldout_robust_err") is not None:
        held = (
            f"  heldout clean/robust err {_pct(r['heldout_clean_err'])}/"
            f"{_pct(r['heldout_robust_err'])}"
        )
    return (
        f"epoch {event.epoch}/{event.epochs}  lr {r.get('lr', 0):.4g}  "
        f"loss {r.get('train_loss', float('nan')):.4f}  train clean/robust err "
        f"{_pct(r.get('train_clean_err'))}/{_pct(r.get('train_robust_err'))}{held}  "
        f"{r.get('wall_time_s', 0):.1f}s"
    )
