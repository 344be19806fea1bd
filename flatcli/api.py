"""The public Python API for notebooks and scripts: the measures as DataFrames, and the readers.

from flatcli import api
df = api.attack("sample_checkpoints/at", attacks="pgd20x10", n_examples=100)
flat = api.flatness("sample_checkpoints/at", out="out", measures="average", samples=3)
model = api.load_model("sample_checkpoints/at/epoch_0010.safetensors")   # eval mode, [0, 1] inputs
x, y = api.load_examples("digits", "test", 200)

`attack`, `flatness` and `landscape` take the fields of AttackConfig, FlatnessConfig and
LandscapeConfig (flatcli.config) as keywords, the CLI options of the same name (`--n-examples` is
`n_examples`), and run the CLI's code path: config -> resolve -> measure -> sweep.run.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

from flatcli import checkpoints, data, tables
from flatcli.errors import CheckpointError, UsageError

PathLike = str | os.PathLike
_CLI_NAMES = {"measure": "measures"}  # CLI option -> config field, where they differ


def load_model(
    path: PathLike,
    arch: str | None = None,
    normalize: str | None = None,
    dataset: str | None = None,
    device: str = "cpu",
):
    """The model of a checkpoint (flatcli's own or a foreign format), in eval mode on `device`.

    It takes inputs in [0, 1] and owns its normalization; `arch`/`normalize`/`dataset` are needed
    only for foreign checkpoints (see `flatcli attack --help`).
    """
    model, _ = checkpoints.load_model(
        path, arch=arch, normalize=normalize, dataset=dataset, device=device
    )
    return model


def load_examples(
    dataset: str = "digits",
    split: str = "test",
    n: int | None = None,
    data_dir: PathLike | None = None,
):
    """The first `n` examples of a split: x float32 [n, C, H, W] in [0, 1], y int64 [n]."""
    return data.load_split(dataset, split, n, data_dir)


def read_table(out: PathLike, name: str):
    """A whole flatcli table (e.g. "attack") under the output directory `out`, as a DataFrame."""
    return tables.read_table(out, name)


def attack(
    paths: PathLike | Sequence[PathLike],
    out: PathLike | None = None,
    *,
    force: bool = False,
    shard: str | None = None,
    on_event: Callable | None = None,
    **options,
):
    """`flatcli attack` as a function: one row per checkpoint and attack, as a DataFrame.

    `options` are AttackConfig fields (e.g. `attacks="pgd20x10"`, `eps="8/255"`,
    `n_examples=100`); rows are written to OUT/attack when `out` is given (and, as in the CLI,
    checkpoints already written for the same configuration are read back, not recomputed), else
    computed in a temporary directory that is removed. `on_event` receives sweep.SweepEvent's.
    """
    from flatcli import evaluation
    from flatcli.config import AttackConfig

    return _measure(
        "attack",
        AttackConfig,
        evaluation.resolve_attack_config,
        lambda config, refs: refs,
        evaluation.attack_measure,
        paths,
        out,
        force,
        shard,
        on_event,
        options,
    )


def flatness(
    paths: PathLike | Sequence[PathLike],
    out: PathLike | None = None,
    *,
    force: bool = False,
    shard: str | None = None,
    on_event: Callable | None = None,
    **options,
):
    """`flatcli flatness` as a function: one row per checkpoint, measure and xi, as a DataFrame.

    `options` are FlatnessConfig fields (e.g. `measures="average"`, `xi=0.5`, `samples=10`,
    `attack="pgd20x10"`); `out`, `force`, `shard`, `on_event` as in `attack`.
    """
    from flatcli import flatness as core
    from flatcli.config import FlatnessConfig

    return _measure(
        "flatness",
        FlatnessConfig,
        core.resolve_flatness_config,
        lambda config, refs: refs,
        core.flatness_measure,
        paths,
        out,
        force,
        shard,
        on_event,
        options,
    )


def landscape(
    paths: PathLike | Sequence[PathLike],
    out: PathLike | None = None,
    *,
    force: bool = False,
    shard: str | None = None,
    on_event: Callable | None = None,
    **options,
):
    """`flatcli landscape` as a function: one row per checkpoint, direction and grid point.

    `options` are LandscapeConfig fields (e.g. `directions="random"`, `n_directions=3`,
    `steps=21`, `range=(-1, 1)`); `out`, `force`, `shard`, `on_event` as in `attack`. No figures
    are drawn (the CLI's `--plot` draws them from the same rows).
    """
    from flatcli import landscape as core
    from flatcli.config import LandscapeConfig

    return _measure(
        "landscape",
        LandscapeConfig,
        core.resolve_landscape_config,
        lambda config, refs: core.units(refs, config.n_directions),
        core.landscape_measure,
        paths,
        out,
        force,
        shard,
        on_event,
        options,
    )


def make_config(config_type, **options):
    """A config dataclass from keyword values as a script writes them: `"8/255"` or 0.0314 for a
    float, `"pgd10,aa-lite"` or a list for a tuple, a Path for a str. Unknown names are a
    UsageError naming the valid ones. `measure=` (the CLI's --measure) is accepted for
    `measures=`."""
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    for cli_name, field_name in _CLI_NAMES.items():  # the CLI's spelling works too
        if cli_name in options and cli_name not in fields and field_name in fields:
            if field_name in options:
                raise UsageError(f"give {field_name} or {cli_name}, not both")
            options[field_name] = options.pop(cli_name)
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise UsageError(
            f"{config_type.__name__} has no option {unknown[0]!r}; choose from " + ", ".join(fields)
        )
    values = {name: _coerce(name, value, str(fields[name].type)) for name, value in options.items()}
    return config_type(**values)


def _measure(
    table, config_type, resolve, units_of, measure_of, paths, out, force, shard, on_event, options
):
    """The CLI's runner without the terminal (cli/runner.py): resolve, sweep, rows -> DataFrame."""
    from flatcli import runtime, sweep
    from flatcli.config import config_hash

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    refs = checkpoints.discover([Path(p) for p in paths])
    config = resolve(make_config(config_type, **options), refs)
    shard_spec = sweep.parse_shard(shard)
    device = runtime.resolve_device(config.device)
    with tempfile.TemporaryDirectory(prefix="flatcli-api-") as scratch:
        summary = sweep.run(
            units_of(config, refs),
            measure_of(config, device),
            table,
            scratch if out is None else out,
            config_hash(config),
            shard_spec,
            force,
            on_event,
        )
    if summary.failed:
        ref, message = summary.failed[0]
        others = f" (and {len(summary.failed) - 1} more)" if len(summary.failed) > 1 else ""
        raise CheckpointError(f"{ref.path}: {message}{others}")
    return tables.to_arrow(summary.rows, table).to_pandas()


def _coerce(name: str, value, annotation: str):
    if value is None:
        return None
    if annotation.startswith("tuple"):
        if isinstance(value, str):
            items = [i.strip() for i in value.split(",") if i.strip()]
        elif isinstance(value, (int, float)):
            items = [value]
        else:
            items = list(value)
        if "float" in annotation:
            return tuple(_number(name, i) for i in items)
        return tuple(str(i) for i in items)
    if isinstance(value, os.PathLike):
        return str(value)
    if annotation.startswith("float") and isinstance(value, (str, int)):
        return _number(name, value)
    return value


def _number(name: str, value) -> float:
    """`8/255`, "0.0314" or 0.0314 -> float, as the CLI's --eps parses it."""
    if isinstance(value, bool):
        raise UsageError(f"{name}={value!r} is not a number")
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(Fraction(str(value).replace(" ", "")))
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"{name}={value!r} is not a number or a fraction like 8/255") from None
