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


# ------------------------------------------------------------ same weights, same numbers

PROVENANCE = {"run", "checkpoint", "wall_time_s", "created_at"}
MEASURES = {
    "attack": FAST,
    "flatness": ["-m", "average", "--n-examples", "16", "--samples", "2", "--attack", "pgd2",
                 "-q", "-f", "json"],
    "landscape": ["--n-examples", "16", "--attack", "pgd2", "--steps", "3", "--n-directions", "1",
                  "-q", "-f", "json"],
}


def _rows(capsys, command: str, paths, out: Path) -> pd.DataFrame:
    with pytest.raises(SystemExit) as exit_info:
        main([command, *map(str, paths), "--out", str(out), *MEASURES[command]])
    assert exit_info.value.code == 0, capsys.readouterr().err
    capsys.readouterr()
    table = pd.read_parquet(out / command)
    return table.sort_values([c for c in ("run", "measure", "alpha", "attack") if c in table])


def _same_numbers(one: pd.DataFrame, two: pd.DataFrame) -> None:
    keep = [c for c in one.columns if c not in PROVENANCE]
    assert len(one) == len(two) > 0
    pd.testing.assert_frame_equal(
        one[keep].reset_index(drop=True), two[keep].reset_index(drop=True)
    )


def test_same_weights_trained_in_two_folders_give_identical_rows(tmp_path, capsys):
    """Two runs of one training into differently named folders hold the same tensors (their
    files differ: the metadata names the run); every measure gives them the same rows."""
    runs = [tmp_path / "a" / "at", tmp_path / "b" / "other-name"]
    for run in runs:
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--arch", "tiny", "--epochs", "1", "--train-examples", "64",
                  "--heldout-examples", "16", "--batch-size", "32", "-q", "--out", str(run)])
        assert exit_info.value.code == 0
    capsys.readouterr()
    files = [run / "epoch_0001.safetensors" for run in runs]
    assert files[0].read_bytes() != files[1].read_bytes()
    assert checkpoints.content_digest(files[0]) == checkpoints.content_digest(files[1])
    for command in MEASURES:
        one = _rows(capsys, command, [runs[0]], tmp_path / "o1")
        two = _rows(capsys, command, [runs[1]], tmp_path / "o2")
        assert set(one.run) == {"at"} and set(two.run) == {"other-name"}
        _same_numbers(one, two)


def _one_model() -> torch.nn.Module:
    torch.manual_seed(3)
    return models.build("tiny", 10, 1)


def test_pt_safetensors_and_metadata_only_changes_give_identical_rows(tmp_path, capsys):
    model = _one_model()
    paths = [
        save_checkpoint(tmp_path / "st" / "epoch_0001.safetensors", model, "tiny", {}, "digits", 1),
        save_checkpoint(tmp_path / "pt" / "epoch_0001.pt", model, "tiny", {}, "digits", 1),
        save_checkpoint(tmp_path / "meta" / "epoch_0001.safetensors", model, "tiny", {}, "digits",
                        1, config={"method": "at", "note": "another field"}),
    ]
    # a metadata-only edit of the file itself: another flatcli version in its header
    edited = tmp_path / "edited" / "epoch_0001.safetensors"
    edited.parent.mkdir()
    raw = bytearray(paths[0].read_bytes())
    at = raw.index(b'flatcli_version\\": \\"') + len(b'flatcli_version\\": \\"')
    raw[at : at + 1] = b"9" if raw[at : at + 1] != b"9" else b"8"  # same length, valid header
    edited.write_bytes(bytes(raw))
    assert edited.read_bytes() != paths[0].read_bytes()
    paths.append(edited)
    digests = {checkpoints.content_digest(p) for p in paths}
    assert len(digests) == 1 and "" not in digests
    assert digests == {checkpoints.state_digest(model.state_dict())}
    table = _rows(capsys, "attack", paths, tmp_path / "out")
    assert len(table) == 4 and table.run.nunique() == 4
    numbers = ["clean_loss", "clean_err", "robust_loss", "robust_err"]
    assert len(table[numbers].drop_duplicates()) == 1
    assert table.checkpoint_digest.nunique() == 1


def test_other_weights_get_another_digest():
    model = _one_model()
    before = checkpoints.state_digest(model.state_dict())
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-6
    assert checkpoints.state_digest(model.state_dict()) != before
    renamed = {f"module.{k}": v for k, v in model.state_dict().items()}
    assert checkpoints.state_digest(renamed) != checkpoints.state_digest(model.state_dict())


def test_saves_are_byte_for_byte_deterministic(tmp_path):
    """The same weights and metadata give the same bytes: the safetensors header in sorted
    order (its writer orders the metadata map anew each time), a .pt whatever its name."""
    import json
    import struct

    model = _one_model()
    config = {"zeta": 1, "alpha": 2, "method": "at"}
    saved = [
        save_checkpoint(tmp_path / f"r{i}" / "epoch_0001.safetensors", model, "tiny", {},
                        "digits", 1, config=config).read_bytes()
        for i in range(6)
    ]
    assert len(set(saved)) == 1
    (size,) = struct.unpack("<Q", saved[0][:8])
    header = json.loads(saved[0][8 : 8 + size])
    assert list(header) == sorted(header) and list(header["__metadata__"]) == ["flatcli", "format"]
    pts = [
        save_checkpoint(tmp_path / name, model, "tiny", {}, "digits", 1, config=config).read_bytes()
        for name in ("one/epoch_0001.pt", "another-name/model_1.pt")
    ]
    assert pts[0] == pts[1]
