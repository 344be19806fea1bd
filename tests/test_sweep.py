"""Tables and sweeps: schemas, atomic parts, skip/force/shard, failures, resume.

The mechanics use a stub measure; that shards and a resumed sweep write the rows of one
uninterrupted pass is checked with the real attack measure on the sample checkpoints.
"""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from flatcli import sweep, tables
from flatcli.errors import CheckpointError, UsageError


@dataclass(frozen=True)
class Ref:
    run: str
    epoch: int
    path: Path

    @property
    def key(self) -> str:
        return f"{self.run}__e{self.epoch:04d}"


def _refs(n=4, run="r"):
    return [Ref(run, e, Path(f"/x/{run}/epoch_{e}.pt")) for e in range(1, n + 1)]


def _measure(ref):
    return [{"run": ref.run, "epoch": ref.epoch, "attack": "pgd", "robust_loss": 0.1 * ref.epoch}]


def test_parse_shard():
    assert sweep.parse_shard("1/3") == sweep.Shard(1, 3)
    assert sweep.parse_shard(None) == sweep.Shard(0, 1)
    assert sweep.parse_shard(
        "auto",
        {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "4"},
    ) == sweep.Shard(1, 4)
    for bad in ["3/2", "x", "1/0", "-1/2"]:
        with pytest.raises(UsageError):
            sweep.parse_shard(bad)
    with pytest.raises(UsageError):
        sweep.parse_shard("auto", {})


def test_shards_cover_everything_once_and_read_back_as_one_table(tmp_path):
    refs = _refs(7)
    for i in range(3):
        sweep.run(refs, _measure, "attack", tmp_path, "h" * 16, sweep.Shard(i, 3))
    df = pd.read_parquet(tmp_path / "attack")
    assert sorted(df.epoch) == list(range(1, 8))
    assert df.wall_time_s.notna().all() and df.created_at.notna().all()


def test_rerun_skips_done_and_force_recomputes(tmp_path):
    calls = []
    measure = lambda ref: calls.append(ref) or _measure(ref)
    s1 = sweep.run(_refs(3), measure, "attack", tmp_path, "a" * 16)
    s2 = sweep.run(_refs(3), measure, "attack", tmp_path, "a" * 16)
    assert len(s1.done) == 3 and len(s2.skipped) == 3 and len(calls) == 3
    s3 = sweep.run(_refs(3), measure, "attack", tmp_path, "a" * 16, force=True)
    assert len(s3.done) == 3 and len(calls) == 6
    assert len(pd.read_parquet(tmp_path / "attack")) == 3  # forced rows replace, never duplicate
    s4 = sweep.run(_refs(3), measure, "attack", tmp_path, "b" * 16)  # another configuration
    assert len(s4.done) == 3 and len(tables.read_table(tmp_path, "attack")) == 6


def test_one_bad_checkpoint_is_reported_and_the_others_written(tmp_path):
    events = []

    def measure(ref):
        if ref.epoch == 2:
            raise CheckpointError(f"{ref.path}: cannot read")
        return _measure(ref)

    s = sweep.run(_refs(3), measure, "attack", tmp_path, "c" * 16, on_event=events.append)
    assert s.exit_code == 1 and [r.epoch for r, _ in s.failed] == [2]
    assert [e.kind for e in events if e.kind == "failed"] == ["failed"]
    assert sorted(tables.read_table(tmp_path, "attack").epoch) == [1, 3]


def test_killed_sweep_resumes_where_it_stopped(tmp_path):
    def killed_at_3(ref):
        if ref.epoch == 3:
            raise KeyboardInterrupt
        return _measure(ref)

    with pytest.raises(KeyboardInterrupt):
        sweep.run(_refs(4), killed_at_3, "attack", tmp_path / "a", "d" * 16)
    assert not any(p.name.startswith(".") for p in (tmp_path / "a" / "attack").iterdir())
    resumed = sweep.run(_refs(4), _measure, "attack", tmp_path / "a", "d" * 16)
    assert len(resumed.skipped) == 2 and len(resumed.done) == 2
    assert sorted(tables.read_table(tmp_path / "a", "attack").epoch) == [1, 2, 3, 4]


def test_shards_and_a_resumed_shard_write_the_rows_of_one_uninterrupted_sweep(tmp_path):
    """The real attack measure (PGD with random starts, 32 digits examples) over four checkpoints
    of the sample run: two shards, the first killed after one checkpoint and resumed, each part
    measured by a fresh measure as a separate process would be, write exactly the rows (every
    number) of one uninterrupted sweep, whose measure reuses one model across checkpoints. The
    random starts derive from each checkpoint's content and the configured seed, never from
    which shard, position or process measured it."""
    from flatcli.checkpoints import discover
    from flatcli.config.commands import AttackConfig, config_hash
    from flatcli.measures.attack import attack_measure

    samples = Path(__file__).resolve().parents[1] / "sample_checkpoints" / "at"
    refs = [ref for ref in discover([samples]) if ref.epoch in (1, 9, 17, 25)]
    config = AttackConfig(dataset="digits", n_examples=32, eps=0.15, attacks=("pgd3x2",))
    chash, cpu = config_hash(config), torch.device("cpu")

    def killed_at_17(ref):
        if ref.epoch == 17:
            raise KeyboardInterrupt
        return measure(ref)

    sweep.run(refs, attack_measure(config, cpu), "attack", tmp_path / "whole", chash)
    measure = attack_measure(config, cpu)
    with pytest.raises(KeyboardInterrupt):
        sweep.run(refs, killed_at_17, "attack", tmp_path / "shards", chash, sweep.Shard(0, 2))
    done = [
        sweep.run(refs, attack_measure(config, cpu), "attack", tmp_path / "shards", chash, shard)
        for shard in (sweep.Shard(0, 2), sweep.Shard(1, 2))
    ]
    assert [(len(s.skipped), len(s.done)) for s in done] == [(1, 1), (0, 2)]

    def rows(out):
        table = tables.read_table(out, "attack").drop(columns=["wall_time_s", "created_at"])
        return table.sort_values("epoch").reset_index(drop=True)

    whole, shards = rows(tmp_path / "whole"), rows(tmp_path / "shards")
    assert whole.epoch.tolist() == [1, 9, 17, 25]
    assert whole.robust_loss.nunique() == 4 and (whole.robust_err > whole.clean_err).any()
    pd.testing.assert_frame_equal(shards, whole, check_exact=True)


def test_schema_is_applied_so_all_null_columns_read_back(tmp_path):
    tables.write_part(
        tmp_path,
        "attack",
        "r__e0001",
        "e" * 16,
        [{"run": "r", "epoch": 1, "note": None, "robust_loss": float("nan")}],
    )
    tables.write_part(
        tmp_path,
        "attack",
        "r__e0002",
        "e" * 16,
        [{"run": "r", "epoch": 2, "note": "x", "robust_loss": 1.5}],
    )
    df = pd.read_parquet(tmp_path / "attack")
    assert list(df.columns) == tables.columns("attack")
    assert df.robust_loss.isna().sum() == 1 and set(df.note.dropna()) == {"x"}
    with pytest.raises(ValueError):
        tables.to_arrow([{"not_a_column": 1}], "attack")
