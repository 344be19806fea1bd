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


Paths = Annotated[
    list[Path],
    typer.Argument(
        help="Checkpoint files or directories (searched recursively).", show_default=False
    ),
]
Out = Annotated[
    Path, typer.Option("--out", "-o", help="Output directory; tables go to OUT/<table>/.")
]
Dataset = Annotated[
    str | None,
    typer.Option(
        help="digits (bundled), cifar10, cifar100, svhn, mnist, fashion-mnist, or npz:PATH. "
        "Default: from the checkpoints' flatcli metadata."
    ),
]
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="FLATCLI_DATA_DIR",
        help="Root of the torchvision-layout data folders (never downloaded).",
    ),
]
SplitOpt = Annotated[
    Split, typer.Option(help="test (without the held-out part), train, or heldout.")
]
NExamples = Annotated[
    int | None,
    typer.Option(
        help="First N examples of the split. Default: 1000, or the whole split if smaller."
    ),
]
Eps = Annotated[
    str | None,
    typer.Option(help="Radius, e.g. 8/255 or 0.0314 (exact float stored). Default: the dataset's."),
]
StepSize = Annotated[
    str | None,
    typer.Option(
        help="Absolute PGD step size (e.g. 2/255); default: the preset's ratio times eps."
    ),
]
NormOpt = Annotated[Norm, typer.Option(help="Threat model of the input perturbation.")]
Seed = Annotated[
    int, typer.Option(help="Seed; every checkpoint derives its own generator from it.")
]
Device = Annotated[str, typer.Option(envvar="FLATCLI_DEVICE", help="auto | cpu | cuda | cuda:N.")]
BatchSize = Annotated[
    int, typer.Option(help="Examples per batch (halved automatically on out-of-memory).", min=1)
]
Arch = Annotated[
    str | None,
    typer.Option(
        help="Architecture of foreign checkpoints (e.g. preact-resnet18, resnet18, wrn-34-10)."
    ),
]
Normalize = Annotated[
    str | None,
    typer.Option(
        help="Input normalization of foreign checkpoints: cifar10 | cifar100 | svhn | none | "
        "MEAN,STD (per channel: m1,m2,m3,s1,s2,s3)."
    ),
]
FormatOpt = Annotated[
    Format, typer.Option("--format", "-f", help="How results are printed on stdout.")
]
Quiet = Annotated[
    bool,
    typer.Option("--quiet", "-q", envvar="FLATCLI_QUIET", help="No progress or logs on stderr."),
]
Force = Annotated[
    bool, typer.Option("--force", help="Recompute checkpoints already done for this configuration.")
]
DryRun = Annotated[
    bool, typer.Option("--dry-run", help="Show what would be computed and skipped, then exit.")
]
ShardOpt = Annotated[
    str | None,
    typer.Option(
        help="i/n: this process takes every n-th checkpoint from the i-th (0-based); "
        "auto: from SLURM_ARRAY_TASK_ID/COUNT."
    ),
]
Attacks = Annotated[
    str,
    typer.Option(help="Comma-separated presets: " + ", ".join(PRESETS) + ", or pgd<S>x<R>."),
]


def debug_enabled() -> bool:
    return os.environ.get("FLATCLI_DEBUG", "") not in ("", "0")
