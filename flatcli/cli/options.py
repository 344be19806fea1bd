"""Options shared by the subcommands, declared once (Typer `Annotated` aliases) and their parsers.

Nothing here imports torch: `flatcli --help` must stay fast.
"""

from __future__ import annotations

import os
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import Annotated

import typer

from flatcli.attacks.presets import PRESETS
from flatcli.errors import UsageError


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    jsonl = "jsonl"


class Norm(str, Enum):
    linf = "linf"
    l2 = "l2"


class Precision(str, Enum):
    fp32 = "fp32"
    tf32 = "tf32"
    bf16 = "bf16"


class Compile(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


class Split(str, Enum):
    train = "train"
    test = "test"
    heldout = "heldout"


def parse_eps(text: str | None, option: str = "--eps") -> float | None:
    """`8/255`, `0.0314` or `1e-2` -> float; None (option not given) -> None; anything else is a
    usage error (one line) naming `option`."""
    if text is None:
        return None
    try:
        if "/" in text:
            num, den = text.split("/")
            return float(Fraction(num.strip()) / Fraction(den.strip()))
        return float(text)
    except ZeroDivisionError:
        raise UsageError(f"{option} {text}: division by zero") from None
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a number or a fraction like 8/255") from None


def csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


# Help panels, spelled the same in every command (train adds Method, Optimization, Data).
INPUTS = "Inputs"
THREAT = "Threat model"
ATTACK = "Attack"
MEASURE = "Measure"
OUTPUT = "Output"
RUNTIME = "Runtime"

Paths = Annotated[
    list[Path],
    typer.Argument(
        metavar="CHECKPOINTS...",
        help="Checkpoint files or directories (searched recursively).",
        show_default=False,
    ),
]
Out = Annotated[
    Path,
    typer.Option(
        "--out",
        "-o",
        metavar="DIR",
        help="Output directory; tables go to OUT/<table>/.",
        rich_help_panel=OUTPUT,
    ),
]
Dataset = Annotated[
    str | None,
    typer.Option(
        metavar="NAME",
        help="digits (bundled), cifar10, cifar100, svhn, mnist, fashion-mnist, or npz:PATH.",
        show_default="the checkpoints' flatcli metadata",
        rich_help_panel=INPUTS,
    ),
]
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="FLATCLI_DATA_DIR",
        metavar="DIR",
        help="Root of the torchvision-layout data folders (never downloaded).",
        rich_help_panel=INPUTS,
    ),
]
SplitOpt = Annotated[
    Split,
    typer.Option(
        help="test (without the held-out part), train, or heldout.", rich_help_panel=INPUTS
    ),
]
NExamples = Annotated[
    int | None,
    typer.Option(
        metavar="N",
        help="First N examples of the split.",
        show_default="1000, or the whole split if smaller",
        rich_help_panel=INPUTS,
    ),
]
Eps = Annotated[
    str | None,
    typer.Option(
        metavar="EPS",
        help="Radius, e.g. 8/255 or 0.0314 (the exact float is stored).",
        show_default="checkpoint's training eps, else the dataset's",
        rich_help_panel=THREAT,
    ),
]
StepSize = Annotated[
    str | None,
    typer.Option(
        metavar="STEP",
        help="Absolute PGD step size, e.g. 2/255.",
        show_default="the preset's ratio times eps",
        rich_help_panel=ATTACK,
    ),
]
NormOpt = Annotated[
    Norm, typer.Option(help="Threat model of the input perturbation.", rich_help_panel=THREAT)
]
Seed = Annotated[
    int,
    typer.Option(
        metavar="INT",
        help="Seed; every checkpoint derives its own generator from it.",
        rich_help_panel=RUNTIME,
    ),
]
Device = Annotated[
    str,
    typer.Option(
        envvar="FLATCLI_DEVICE",
        metavar="DEVICE",
        help="auto | cpu | cuda | cuda:N.",
        rich_help_panel=RUNTIME,
    ),
]
PrecisionOpt = Annotated[
    Precision,
    typer.Option(
        help="What the attack searches in: fp32; tf32 (CUDA TF32 matmuls/convolutions); bf16 "
        "(autocast). Reported losses and errors are re-evaluated in fp32 at the points found; "
        "weights stay fp32. tf32/bf16 need a pgd attack. Part of the configuration.",
        rich_help_panel=RUNTIME,
    ),
]
CompileOpt = Annotated[
    Compile,
    typer.Option(
        "--compile",
        help="torch.compile the model: auto (on CUDA only), on, off. Results equal eager up to "
        "float rounding; compile time is reported on stderr. Not part of the configuration.",
        rich_help_panel=RUNTIME,
    ),
]
BatchSize = Annotated[
    int,
    typer.Option(
        metavar="N",
        help="Examples per batch (halved automatically on out-of-memory).",
        min=1,
        rich_help_panel=RUNTIME,
    ),
]
Arch = Annotated[
    str | None,
    typer.Option(
        metavar="ARCH",
        help="Architecture of foreign checkpoints (e.g. preact-resnet18, resnet18, wrn-34-10).",
        show_default="the checkpoint's flatcli metadata",
        rich_help_panel=INPUTS,
    ),
]
Normalize = Annotated[
    str | None,
    typer.Option(
        metavar="NAME|MEAN,STD",
        help="Input normalization of foreign checkpoints: cifar10 | cifar100 | svhn | none | "
        "MEAN,STD (per channel: m1,m2,m3,s1,s2,s3).",
        show_default="the checkpoint's flatcli metadata, else none",
        rich_help_panel=INPUTS,
    ),
]
FormatOpt = Annotated[
    Format,
    typer.Option(
        "--format", "-f", help="How results are printed on stdout.", rich_help_panel=OUTPUT
    ),
]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        envvar="FLATCLI_QUIET",
        help="No progress or logs on stderr (failures still).",
        rich_help_panel=OUTPUT,
    ),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Recompute checkpoints already done for this configuration.",
        rich_help_panel=OUTPUT,
    ),
]
DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Show what would be computed and skipped, then exit.",
        rich_help_panel=OUTPUT,
    ),
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        metavar="I/N|auto",
        help="i/n: this process takes every n-th checkpoint from the i-th (0-based); "
        "auto: from SLURM_ARRAY_TASK_ID/COUNT.",
        show_default="all checkpoints",
        rich_help_panel=OUTPUT,
    ),
]
Attacks = Annotated[
    str,
    typer.Option(
        metavar="PRESETS",
        help="Comma-separated presets: " + ", ".join(PRESETS) + ", or pgd<S>x<R>.",
        rich_help_panel=ATTACK,
    ),
]


def debug_enabled() -> bool:
    return os.environ.get("FLATCLI_DEBUG", "") not in ("", "0")
