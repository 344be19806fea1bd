"""Identity from content: results follow the checkpoint file, not the name it is found under."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from flatcli import checkpoints, models, tables
from flatcli.checkpoints import save_checkpoint
from flatcli.cli import main

FAST = ["--attacks", "pgd3x2", "--n-examples", "24", "-q", "-f", "json"]


def _save(directory: Path, epoch: int, seed: int) -> Path:
    torch.manual_seed(seed)
    model = models.build("tiny", 10, 1)
    path = directory / f"epoch_{epoch:04d}.safetensors"
    return save_checkpoint(path, model, "tiny", {}, "digits", epoch)


def _attack(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["attack", *map(str, args), *FAST])
    _, err = capsys.readouterr()
    return exit_info.value.code, err


def _table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "attack")


def test_retrained_in_place_is_recomputed_and_its_stale_part_replaced(tmp_path, capsys):
    ckpt = _save(tmp_path / "at", 1, seed=0)
    out = tmp_path / "out"
    assert _attack(capsys, ckpt, "--out", out)[0] == 0
    before = _table(out)
    _save(tmp_path / "at", 1, seed=1)  # retrained: same path, run and epoch, new weights
    code, err = _attack(capsys, ckpt, "--out", out)
    after = _table(out)
    assert code == 0 and "replacing 1 part(s)" in err
    assert len(after) == 1 and len(list((out / "attack").glob("*.parquet"))) == 1
    assert after.checkpoint_digest[0] == checkpoints.content_digest(ckpt)
    assert after.checkpoint_digest[0] != before.checkpoint_digest[0]
    assert after.clean_loss[0] != before.clean_loss[0]


def test_another_file_under_the_same_run_name_is_refused_not_skipped(tmp_path, capsys):
    first = _save(tmp_path / "a" / "at", 1, seed=0)
    second = _save(tmp_path / "b" / "at", 1, seed=1)  # also run `at`, epoch 1, other weights
    out = tmp_path / "out"
    assert _attack(capsys, first, "--out", out)[0] == 0
    code, err = _attack(capsys, second, "--out", out)
    assert code == 1 and "skipped" not in err
    assert str(first) in err and str(second) in err and "--force" in err
    assert _table(out).checkpoint.tolist() == [str(first)]  # never the other model's numbers
    code, _ = _attack(capsys, second, "--out", out, "--force")
    assert code == 0 and _table(out).checkpoint.tolist() == [str(second)]


def test_the_same_file_under_two_names_gives_the_same_numbers(tmp_path, capsys):
    original = _save(tmp_path / "two" / "seed0" / "at", 1, seed=0)
    copy = tmp_path / "elsewhere" / "other-name" / original.name
    copy.parent.mkdir(parents=True)
    shutil.copy(original, copy)
    shutil.copy(checkpoints.sidecar_path(original), checkpoints.sidecar_path(copy))
    assert _attack(capsys, original, "--out", tmp_path / "o1")[0] == 0
    assert _attack(capsys, copy, "--out", tmp_path / "o2")[0] == 0
    one, two = _table(tmp_path / "o1"), _table(tmp_path / "o2")
    assert (one.run[0], two.run[0]) == ("at", "other-name")
    assert one.checkpoint_digest[0] == two.checkpoint_digest[0]
    assert one.robust_loss[0] == two.robust_loss[0] and one.robust_err[0] == two.robust_err[0]


def test_a_truncated_part_is_recomputed_and_named(tmp_path, capsys):
    ckpt = _save(tmp_path / "at", 1, seed=0)
    out = tmp_path / "out"
    assert _attack(capsys, ckpt, "--out", out)[0] == 0
    (part,) = (out / "attack").glob("*.parquet")
    expected = _table(out).robust_loss[0]
    part.write_bytes(part.read_bytes()[:100])
    code, err = _attack(capsys, ckpt, "--out", out)
    assert code == 0 and f"unreadable part {part}" in err
    assert tables.unreadable_reason(part) is None and _table(out).robust_loss[0] == expected


def test_run_names_follow_the_directory_and_collisions_say_so(tmp_path):
    a = _save(tmp_path / "two" / "seed0" / "at", 1, seed=0)
    _save(tmp_path / "two" / "seed1" / "at", 1, seed=1)
    alone = checkpoints.discover([tmp_path / "two" / "seed0"])
    both = checkpoints.discover([tmp_path / "two"])
    assert [r.run for r in alone] == ["at"] and alone[0].note == ""
    assert [r.run for r in both] == ["seed0-at", "seed1-at"]
    assert all("also in a run called 'at'" in r.note for r in both)
    assert alone[0].digest == both[0].digest == checkpoints.content_digest(a)
