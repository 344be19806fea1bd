"""Table schemas (one explicit pyarrow schema per table), part files, and reading.

Part names, atomicity and why every write applies the schema: docs/method.md, "Implementation
notes"."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from flatcli.files import atomic_write

SCHEMA_VERSION = 3  # 2: checkpoint_digest, flatness estimator/errors, landscape, report se, Holm p
# 3: estimator_version; checkpoint_digest over the tensors

# Key and provenance columns shared by every table, in order.
COMMON = [
    pa.field("run", pa.string()),
    pa.field("checkpoint", pa.string()),
    pa.field("checkpoint_digest", pa.string()),  # sha256 of the tensors; results follow weights
    pa.field("epoch", pa.int64()),
    pa.field("dataset", pa.string()),
    pa.field("arch", pa.string()),
    pa.field("input_normalization", pa.string()),  # none, a dataset's name, or MEAN,STD values
    pa.field("split", pa.string()),
    pa.field("n_examples", pa.int64()),
    pa.field("eps", pa.float64()),
    pa.field("norm", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("config_hash", pa.string()),
    pa.field("schema_version", pa.int64()),
    pa.field("estimator_version", pa.int64()),  # flatcli.measures.versions; null where no estimate
    pa.field("flatcli_version", pa.string()),
    pa.field("torch_version", pa.string()),
    pa.field("device", pa.string()),
    pa.field("dtype", pa.string()),
    pa.field("wall_time_s", pa.float64()),
    pa.field("created_at", pa.string()),
]


def _with_common(*fields: pa.Field) -> pa.Schema:
    """A sweep table's schema: the COMMON columns, then its own."""
    return pa.schema(COMMON + list(fields))


SCHEMAS: dict[str, pa.Schema] = {
    # `flatcli train`: one row per epoch (split "train"; n_examples = training examples). The
    # train_* columns are over the batches seen in the epoch (train mode, the training attack);
    # heldout_* come from `heldout_attack` on the held-out split (null on epochs not evaluated).
    "train_log": _with_common(
        pa.field("method", pa.string()),
        pa.field("lr", pa.float64()),
        pa.field("steps", pa.int64()),  # optimizer steps in the epoch (per process)
        pa.field("train_loss", pa.float64()),
        pa.field("train_clean_err", pa.float64()),
        pa.field("train_robust_err", pa.float64()),  # null for --method clean
        pa.field("heldout_attack", pa.string()),
        pa.field("heldout_n", pa.int64()),
        pa.field("heldout_clean_err", pa.float64()),
        pa.field("heldout_clean_loss", pa.float64()),
        pa.field("heldout_robust_err", pa.float64()),
        pa.field("heldout_robust_loss", pa.float64()),
        pa.field("epoch_time_s", pa.float64()),  # training only; wall_time_s includes eval
    ),
    "attack": _with_common(
        pa.field("attack", pa.string()),
        pa.field("steps", pa.int64()),
        pa.field("restarts", pa.int64()),
        pa.field("step_size", pa.float64()),
        pa.field("clean_err", pa.float64()),
        pa.field("clean_loss", pa.float64()),
        pa.field("robust_err", pa.float64()),
        pa.field("robust_loss", pa.float64()),  # nats; null when the attack gives no loss
        pa.field("note", pa.string()),  # e.g. "non-finite weights"; null when all is well
        # standard errors (flatcli.uncertainty): binomial for errors, over examples for losses
        pa.field("clean_err_se", pa.float64()),
        pa.field("robust_err_se", pa.float64()),
        pa.field("clean_loss_se", pa.float64()),
        pa.field("robust_loss_se", pa.float64()),
    ),
    # `flatcli flatness`: one row per (checkpoint, measure, xi). Clean measures have eps 0 and hold
    # clean losses in the *_robust_loss columns; hessian rows fill lambda_max/hessian_trace instead.
    "flatness": _with_common(
        pa.field("measure", pa.string()),  # registries.MEASURES
        pa.field("estimator", pa.string()),  # mean (average) | paper | per-batch | flatcli
        pa.field("xi", pa.float64()),  # relative radius; null for the Hessian
        pa.field("conv_scale", pa.float64()),  # conv weights multiplied by this before
        pa.field("samples", pa.int64()),  # offsets (average) or Hutchinson probes (hessian)
        pa.field("iterations", pa.int64()),  # attack steps / joint ascent steps / Lanczos
        pa.field("restarts", pa.int64()),
        pa.field("attack", pa.string()),  # the attack behind robust_loss; null when clean
        pa.field("sample_attack", pa.string()),  # average: the attack re-run at every w + nu
        pa.field("weight_lr", pa.float64()),  # worst case: normalized relative weight step
        pa.field("robust_loss", pa.float64()),  # at the checkpoint's weights, nats
        pa.field("robust_err", pa.float64()),  # at the checkpoint's weights, fraction
        pa.field("perturbed_robust_loss", pa.float64()),  # mean (average) / worst found
        pa.field("perturbed_robust_err", pa.float64()),  # mean (average) / at the worst point
        pa.field("joint_loss", pa.float64()),  # worst: the joint ascent's own value
        pa.field("reattack_loss", pa.float64()),  # worst per-batch: the attack re-run at nu*
        pa.field("unclamped_flatness", pa.float64()),  # worst: before any clamp at RCE(w)
        pa.field("flatness", pa.float64()),  # perturbed_robust_loss - robust_loss
        pa.field("flatness_std", pa.float64()),  # over samples (average)
        pa.field("lambda_max", pa.float64()),  # Hessian's largest eigenvalue (Lanczos)
        pa.field("hessian_trace", pa.float64()),  # Hutchinson
        pa.field("per_sample", pa.list_(pa.float64())),  # per-sample flatness / trace probes
        pa.field("note", pa.string()),
        # average: SE over offsets and examples; worst: the spread (std) over restarts, whose
        # flatness values are in per_sample (flatcli.uncertainty)
        pa.field("flatness_se", pa.float64()),
        pa.field("robust_loss_se", pa.float64()),  # over examples, at the checkpoint's weights
    ),
    # `flatcli landscape`: one row per (checkpoint, direction, alpha[, beta]); the loss at
    # w + alpha d (1-D) or w + alpha d1 + beta d2 (2-D, `direction` numbers the plane).
    "landscape": _with_common(
        pa.field("direction_kind", pa.string()),  # random | adversarial | hessian | interpolate
        pa.field("direction", pa.int64()),
        pa.field("alpha", pa.float64()),
        pa.field("beta", pa.float64()),  # null in 1-D
        pa.field("attack", pa.string()),  # the attack behind robust_*; null for --loss clean
        pa.field("clean_loss", pa.float64()),
        pa.field("clean_err", pa.float64()),
        pa.field("robust_loss", pa.float64()),  # nats; null for --loss clean
        pa.field("robust_err", pa.float64()),
        pa.field("normalization", pa.string()),  # layer | layer-maxabs | filter | none
        pa.field("scale", pa.float64()),  # relative length of the directions
        pa.field("adversarial_loss", pa.string()),  # adversarial: clean | robust weight attack
        pa.field("conv_scale", pa.float64()),  # conv weights multiplied by this before
        pa.field("note", pa.string()),
        pa.field("clean_loss_se", pa.float64()),  # over examples
        pa.field("robust_loss_se", pa.float64()),
    ),
    # `flatcli report`: one wide row per (run, epoch) joining attack (test and train split),
    # flatness, landscape and train_log, with run.json's method and regularizers. Not a sweep
    # table: the whole table is rewritten (atomically) by every report.
    "report": pa.schema(
        [
            pa.field("run", pa.string()),
            pa.field("epoch", pa.int64()),
            pa.field("checkpoint", pa.string()),
            pa.field("run_dir", pa.string()),  # where run.json/train_log were found
            pa.field("dataset", pa.string()),
            pa.field("arch", pa.string()),
            pa.field("width", pa.int64()),  # run.json (else the checkpoint's metadata)
            pa.field("n_params", pa.int64()),  # parameters (BN statistics excluded)
            pa.field("eps", pa.float64()),
            pa.field("norm", pa.string()),
            pa.field("method", pa.string()),  # run.json: clean | at | trades | mart | awp
            pa.field("regularizers", pa.string()),  # run.json, e.g. "ls 0.2, wd 0.001"
            pa.field("label_smoothing", pa.float64()),
            pa.field("weight_decay", pa.float64()),
            pa.field("awp_gamma", pa.float64()),
            pa.field("trades_beta", pa.float64()),
            pa.field("test_attacks", pa.string()),  # attacks behind the test_* columns
            pa.field("test_n", pa.int64()),
            pa.field("test_clean_err", pa.float64()),
            pa.field("test_clean_loss", pa.float64()),
            pa.field("test_robust_err", pa.float64()),  # strongest attack (largest error)
            pa.field("test_robust_loss", pa.float64()),  # largest estimate, nats
            pa.field("train_attacks", pa.string()),
            pa.field("train_n", pa.int64()),
            pa.field("train_clean_err", pa.float64()),
            pa.field("train_clean_loss", pa.float64()),
            pa.field("train_robust_err", pa.float64()),
            pa.field("train_robust_loss", pa.float64()),
            pa.field("rce_gap", pa.float64()),  # test_robust_loss - train_robust_loss
            pa.field("rerr_gap", pa.float64()),  # test_robust_err - train_robust_err
            pa.field("lr", pa.float64()),  # train_log
            pa.field("train_loss", pa.float64()),  # train_log: the training objective
            pa.field("heldout_robust_err", pa.float64()),  # train_log
            pa.field("heldout_robust_loss", pa.float64()),
            pa.field("best_epoch", pa.int64()),  # early stopping (held-out robust error)
            pa.field("is_best", pa.bool_()),
            pa.field("is_last", pa.bool_()),
            pa.field("flatness_average", pa.float64()),
            pa.field("flatness_average_std", pa.float64()),
            pa.field("flatness_average_se", pa.float64()),  # std / sqrt(samples), the mean's SE
            pa.field("flatness_average_xi", pa.float64()),
            pa.field("flatness_worst", pa.float64()),
            pa.field("flatness_worst_std", pa.float64()),
            pa.field("flatness_worst_se", pa.float64()),
            pa.field("flatness_worst_xi", pa.float64()),
            pa.field("flatness_clean_average", pa.float64()),
            pa.field("flatness_clean_average_std", pa.float64()),
            pa.field("flatness_clean_average_se", pa.float64()),
            pa.field("flatness_clean_average_xi", pa.float64()),
            pa.field("flatness_clean_worst", pa.float64()),
            pa.field("flatness_clean_worst_std", pa.float64()),
            pa.field("flatness_clean_worst_se", pa.float64()),
            pa.field("flatness_clean_worst_xi", pa.float64()),
            pa.field("lambda_max", pa.float64()),
            pa.field("hessian_trace", pa.float64()),
            # mean over directions of RCE at the ends of the range minus RCE at alpha = 0
            pa.field("landscape_random_rise", pa.float64()),
            pa.field("landscape_adversarial_rise", pa.float64()),
            # standard errors (flatcli.uncertainty): over examples, and across seeds where
            # repeats that differ only in seed were averaged (n_seeds of them)
            pa.field("test_clean_err_se", pa.float64()),
            pa.field("test_clean_loss_se", pa.float64()),
            pa.field("test_robust_err_se", pa.float64()),
            pa.field("test_robust_loss_se", pa.float64()),
            pa.field("train_clean_err_se", pa.float64()),
            pa.field("train_clean_loss_se", pa.float64()),
            pa.field("train_robust_err_se", pa.float64()),
            pa.field("train_robust_loss_se", pa.float64()),
            pa.field("rce_gap_se", pa.float64()),
            pa.field("rerr_gap_se", pa.float64()),
            # seed repeats: how many were averaged, and the across-seed share of each *_se
            pa.field("test_n_seeds", pa.int64()),
            pa.field("test_clean_err_seed_se", pa.float64()),
            pa.field("test_clean_loss_seed_se", pa.float64()),
            pa.field("test_robust_err_seed_se", pa.float64()),
            pa.field("test_robust_loss_seed_se", pa.float64()),
            pa.field("train_n_seeds", pa.int64()),
            pa.field("train_clean_err_seed_se", pa.float64()),
            pa.field("train_clean_loss_seed_se", pa.float64()),
            pa.field("train_robust_err_seed_se", pa.float64()),
            pa.field("train_robust_loss_seed_se", pa.float64()),
            pa.field("flatness_average_n_seeds", pa.int64()),
            pa.field("flatness_average_seed_se", pa.float64()),
            pa.field("flatness_worst_n_seeds", pa.int64()),
            pa.field("flatness_worst_seed_se", pa.float64()),
            pa.field("flatness_clean_average_n_seeds", pa.int64()),
            pa.field("flatness_clean_average_seed_se", pa.float64()),
            pa.field("flatness_clean_worst_n_seeds", pa.int64()),
            pa.field("flatness_clean_worst_seed_se", pa.float64()),
        ]
    ),
    # `flatcli report`: one row per (scope, run, measure, target) with 3 pairs or more; scipy.stats,
    # two-sided p across runs only (the epochs of one run, or pooled, are not independent: no p).
    "correlations": pa.schema(
        [
            pa.field("scope", pa.string()),  # across runs | all checkpoints | within run
            pa.field("run", pa.string()),  # within run: the run; else null
            pa.field("select", pa.string()),  # last | best | all: the rows correlated
            pa.field("measure", pa.string()),  # a report column: flatness_*, lambda_max, ...
            pa.field("target", pa.string()),  # test_robust_err | test_robust_loss | *_gap
            pa.field("n", pa.int64()),  # pairs where both are finite
            pa.field("kendall", pa.float64()),  # tau-b; null below 3 pairs or constant input
            pa.field("kendall_p", pa.float64()),
            pa.field("spearman", pa.float64()),
            pa.field("spearman_p", pa.float64()),
            pa.field("pearson", pa.float64()),
            pa.field("pearson_p", pa.float64()),
            pa.field("tests", pa.int64()),  # Holm's family: the p-values of this coefficient
            pa.field("kendall_p_holm", pa.float64()),  # Holm-adjusted over `tests`
            pa.field("spearman_p_holm", pa.float64()),
            pa.field("pearson_p_holm", pa.float64()),
        ]
    ),
}


def schema(table: str) -> pa.Schema:
    return SCHEMAS[table]


def columns(table: str) -> list[str]:
    return schema(table).names


def part_path(out: str | os.PathLike, table: str, key: str, config_hash: str) -> Path:
    """Where the rows of one work unit live."""
    return Path(out) / table / f"{key}__{config_hash[:8]}.parquet"


def is_done(out: str | os.PathLike, table: str, key: str, config_hash: str) -> bool:
    """The work unit's part exists and is readable (`unreadable_reason` is None)."""
    path = part_path(out, table, key, config_hash)
    return path.is_file() and unreadable_reason(path) is None


def unreadable_reason(path: Path) -> str | None:
    """Why a part file cannot be read (truncated, not Parquet), or None when its footer reads.

    The footer is written last, so a part cut short by a full disk or a copy fails here."""
    try:
        pq.read_metadata(path)
    except (OSError, pa.ArrowException) as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return None


def other_parts(
    out: str | os.PathLike, table: str, key: str, digest8: str, config_hash: str
) -> list[Path]:
    """Parts of the same name and configuration as `key` but another content digest (and
    parts written before keys carried a digest): rows of a file that has since changed."""
    if not digest8 or f"__{digest8}" not in key:
        return []
    directory = Path(out) / table
    wildcard = key.replace(f"__{digest8}", "__" + "?" * len(digest8), 1)
    legacy = key.replace(f"__{digest8}", "", 1)
    found = list(directory.glob(f"{wildcard}__{config_hash[:8]}.parquet"))
    found += [p for p in [directory / f"{legacy}__{config_hash[:8]}.parquet"] if p.is_file()]
    mine = part_path(out, table, key, config_hash)
    return sorted(p for p in found if p != mine)


def _clean(value):
    """Non-finite floats become null (JSON/Parquet friendly, and honest: not a number)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_arrow(rows: list[dict], table: str) -> pa.Table:
    """Rows (dicts) -> an Arrow table with exactly the table's schema (missing keys -> null)."""
    sch = schema(table)
    unknown = set().union(*(r.keys() for r in rows)) - set(sch.names) if rows else set()
    if unknown:
        raise ValueError(f"{table}: columns not in the schema: {sorted(unknown)}")
    data = {name: [_clean(r.get(name)) for r in rows] for name in sch.names}
    return pa.Table.from_pydict(data, schema=sch)


def write_part(
    out: str | os.PathLike, table: str, key: str, config_hash: str, rows: list[dict]
) -> Path:
    """Write one work unit's rows atomically (temp dot-file in the same directory + os.replace)."""
    return _write_rows(part_path(out, table, key, config_hash), table, rows)


def write_table(out: str | os.PathLike, table: str, rows: list[dict]) -> Path:
    """Write a whole table as one part, `OUT/<table>/<table>.parquet` (atomic; for tables that
    are recomputed whole, like the report's)."""
    return _write_rows(Path(out) / table / f"{table}.parquet", table, rows)


def _write_rows(path: Path, table: str, rows: list[dict]) -> Path:
    arrow = to_arrow(rows, table)
    return atomic_write(path, lambda tmp: pq.write_table(arrow, tmp))


def read_part(out: str | os.PathLike, table: str, key: str, config_hash: str) -> list[dict]:
    """The rows one work unit wrote (as dicts with the schema's columns)."""
    return pq.read_table(part_path(out, table, key, config_hash), schema=schema(table)).to_pylist()


def read_table(out: str | os.PathLike, table: str, unreadable: list | None = None):
    """The whole table under `OUT/<table>` as a pandas DataFrame (empty with the schema if none).

    A part that cannot be read raises, unless `unreadable` is a list: then it is skipped and
    `(path, reason)` appended to it.
    """
    directory = Path(out) / table
    if table not in SCHEMAS:
        raise ValueError(f"unknown table {table!r}; known: {', '.join(SCHEMAS)}")
    parts = sorted(p for p in directory.glob("*.parquet") if not p.name.startswith("."))
    tables = []
    for part in parts:
        try:
            tables.append(pq.read_table(part, schema=schema(table)))
        except (OSError, pa.ArrowException) as err:
            if unreadable is None:
                raise
            unreadable.append((part, str(err).splitlines()[0] if str(err) else type(err).__name__))
    if not tables:
        return schema(table).empty_table().to_pandas()
    return pa.concat_tables(tables).to_pandas()
