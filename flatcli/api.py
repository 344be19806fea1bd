"""The public Python API for notebooks and scripts: the measures as DataFrames, and the readers.

`attack`, `flatness` and `landscape` take their config's fields as keywords (`n_examples=100`,
`eps="8/255"`) and run the CLI's path: kwargs -> config -> validate -> resolve -> sweep.run.
Examples in README.md.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from flatcli import checkpoints, data, tables
from flatcli.config import fields
from flatcli.config.commands import config_hash
from flatcli.errors import CheckpointError, UsageError

PathLike = str | os.PathLike


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


def _measuring(table: str, doc: str):
    """The public function of one measuring command (`attack`, `flatness`, `landscape`)."""

    def run(
        paths: PathLike | Sequence[PathLike],
        out: PathLike | None = None,
        *,
        force: bool = False,
        shard: str | None = None,
        on_event: Callable | None = None,
        **options,
    ):
        return _measure(table, paths, out, force, shard, on_event, options)

    run.__name__ = run.__qualname__ = table
    run.__doc__ = doc
    return run


attack = _measuring(
    "attack",
    """`flatcli attack` as a function: one row per checkpoint and attack, as a DataFrame.

    `options` are AttackConfig fields (e.g. `attacks="pgd20x10"`, `eps="8/255"`,
    `n_examples=100`); rows are written to OUT/attack when `out` is given (and, as in the CLI,
    checkpoints already written for the same configuration are read back, not recomputed), else
    computed in a temporary directory that is removed. `on_event` receives sweep.SweepEvent's.
    """,
)
flatness = _measuring(
    "flatness",
    """`flatcli flatness` as a function: one row per checkpoint, measure and xi, as a DataFrame.

    `options` are FlatnessConfig fields (e.g. `measures="average"`, `xi=0.5`, `samples=10`,
    `attack="pgd20x10"`); `out`, `force`, `shard`, `on_event` as in `attack`.
    """,
)
landscape = _measuring(
    "landscape",
    """`flatcli landscape` as a function: one row per checkpoint, direction and grid point.

    `options` are LandscapeConfig fields (e.g. `directions="random"`, `n_directions=3`,
    `steps=21`, `range=(-1, 1)`); `out`, `force`, `shard`, `on_event` as in `attack`. No figures
    are drawn (the CLI's `--plot` draws them from the same rows).
    """,
)


def make_config(config_type, **options):
    """A validated config from keyword values as a script writes them: `"8/255"` or 0.0314 for
    a float, `"pgd10,aa-lite"` or a list for a tuple, a Path for a str. Unknown names are a
    UsageError naming the valid ones; the CLI's spelling (`measure=` for `measures=`) works too."""
    names = {f.name for f in dataclasses.fields(config_type)}
    for cli_name, field_name in fields.parameters(config_type).items():
        if cli_name != field_name and cli_name in options and cli_name not in names:
            if field_name in options:
                raise UsageError(f"give {field_name} or {cli_name}, not both")
            options[field_name] = options.pop(cli_name)
    unknown = sorted(set(options) - names)
    if unknown:
        raise UsageError(
            f"{config_type.__name__} has no option {unknown[0]!r}; choose from " + ", ".join(names)
        )
    return fields.make(config_type, options, cli=False)


def _measure(table, paths, out, force, shard, on_event, options):
    """The CLI's runner without the terminal (cli/runner.py): resolve, sweep, rows -> DataFrame."""
    from flatcli import measures, runtime, sweep

    entry = measures.table(table)  # torch on use

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    refs = checkpoints.discover([Path(p) for p in paths])
    config = entry.resolve(make_config(entry.config_type, **options), refs)
    shard_spec = sweep.parse_shard(shard)
    device = runtime.resolve_device(config.device)
    with tempfile.TemporaryDirectory(prefix="flatcli-api-") as scratch:
        summary = sweep.run(
            entry.units(config, refs),
            entry.measure(config, device),
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
