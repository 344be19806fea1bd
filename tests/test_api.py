"""The public Python API: the readers, and attack/flatness/landscape giving the CLI's rows."""

from pathlib import Path

import pandas as pd
import pytest
import torch

from flatcli import api, models, tables
from flatcli.checkpoints import save_checkpoint
from flatcli.cli import main
from flatcli.config.commands import AttackConfig, FlatnessConfig
from flatcli.errors import UsageError

CKPT = (
    Path(__file__).resolve().parent.parent / "sample_checkpoints" / "at" / "epoch_0025.safetensors"
)


def test_load_model_load_examples_read_table(tmp_path):
    torch.manual_seed(0)
    model = models.build("tiny", 10, 1)
    path = save_checkpoint(
        tmp_path / "run" / "epoch_0001.safetensors", model, "tiny", {}, "digits", 1
    )
    loaded = api.load_model(path)
    x, y = api.load_examples("digits", "test", 16)
    assert x.shape == (16, 1, 8, 8) and y.dtype == torch.int64 and 0 <= x.min() <= x.max() <= 1
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))
    tables.write_part(
        tmp_path / "out", "attack", "run__e0001", "0" * 16, [{"run": "run", "epoch": 1}]
    )
    df = api.read_table(tmp_path / "out", "attack")
    assert list(df.run) == ["run"] and list(df.columns) == tables.columns("attack")


def _cli_table(tmp_path, capsys, command: str, *args) -> pd.DataFrame:
    out = tmp_path / f"cli-{command}"
    with pytest.raises(SystemExit) as exit_info:
        main([command, str(CKPT), "--out", str(out), "-q", "-f", "csv", *map(str, args)])
    capsys.readouterr()
    assert exit_info.value.code == 0
    return api.read_table(out, command)


def _same_rows(cli: pd.DataFrame, py: pd.DataFrame, order: list[str], numbers: list[str]):
    cli, py = (df.sort_values(order).reset_index(drop=True) for df in (cli, py))
    assert len(cli) == len(py) > 0
    assert list(py.columns) == list(cli.columns)
    assert (py.config_hash == cli.config_hash).all() and (py.run == cli.run).all()
    pd.testing.assert_frame_equal(py[order + numbers], cli[order + numbers])


def test_attack_equals_the_cli_and_writes_when_out_is_given(tmp_path, capsys):
    cli = _cli_table(tmp_path, capsys, "attack", "--attacks", "pgd3x2,pgd2", "--n-examples", 32)
    out = tmp_path / "py"
    py = api.attack(CKPT, out=out, attacks="pgd3x2,pgd2", n_examples=32)
    _same_rows(cli, py, ["attack"], ["clean_err", "clean_loss", "robust_err", "robust_loss"])
    assert set(py.attack) == {"pgd3x2", "pgd2", "worst"}
    # written like the CLI's, and a second call reads them back instead of recomputing
    assert len(api.read_table(out, "attack")) == 3
    events = []
    again = api.attack(
        [str(CKPT)], out=out, attacks=["pgd3x2", "pgd2"], n_examples=32, on_event=events.append
    )
    assert [e.kind for e in events] == ["skipped"]
    assert sorted(again.robust_loss) == sorted(py.robust_loss)


def test_flatness_equals_the_cli(tmp_path, capsys):
    args = ["--measure", "average", "--xi", "0.5", "--samples", 2, "--attack", "pgd3"]
    cli = _cli_table(tmp_path, capsys, "flatness", *args, "--n-examples", 32)
    py = api.flatness(CKPT, measures="average", xi=0.5, samples=2, attack="pgd3", n_examples=32)
    assert py.measure.tolist() == ["average"] and py.xi.tolist() == [0.5]
    _same_rows(cli, py, ["measure", "xi"], ["robust_loss", "perturbed_robust_loss", "flatness"])


def test_landscape_equals_the_cli(tmp_path, capsys):
    args = ["--n-directions", 1, "--steps", 3, "--attack", "pgd2", "--n-examples", 16]
    cli = _cli_table(tmp_path, capsys, "landscape", *args, "--plot", "none")
    py = api.landscape(CKPT, n_directions=1, steps=3, attack="pgd2", n_examples=16)
    assert sorted(py.alpha) == [-1.0, 0.0, 1.0]
    _same_rows(cli, py, ["direction", "alpha"], ["clean_loss", "robust_loss", "robust_err"])


def test_options_are_the_config_fields_written_as_a_script_would():
    config = api.make_config(AttackConfig, eps="8/255", attacks="pgd10, aa-lite", seed=3)
    assert config.eps == 8 / 255 and config.attacks == ("pgd10", "aa-lite") and config.seed == 3
    assert api.make_config(FlatnessConfig, xi=[0.25, "1/2"]).xi == (0.25, 0.5)
    assert api.make_config(FlatnessConfig, xi=0.5).xi == (0.5,)
    assert api.make_config(FlatnessConfig, measure="worst").measures == ("worst",)
    with pytest.raises(UsageError, match="not both"):
        api.make_config(FlatnessConfig, measure="worst", measures="average")
    with pytest.raises(UsageError, match="no option 'n_exemples'"):
        api.make_config(AttackConfig, n_exemples=10)
    with pytest.raises(UsageError, match="eps='eight'"):
        api.make_config(AttackConfig, eps="eight")


def test_bad_input_is_a_usage_error_before_any_work(tmp_path):
    with pytest.raises(UsageError):
        api.attack(CKPT, attacks="pgd3", n_examples=8, eps=2.0)


def test_configs_are_validated_by_their_fields_with_one_line_naming_the_option():
    from flatcli.config.commands import LandscapeConfig, TrainConfig

    cases = [
        (AttackConfig, {"n_examples": 0}, "--n-examples must be positive, got 0"),
        (AttackConfig, {"batch_size": 2.5}, "--batch-size must be an integer, got 2.5"),
        (AttackConfig, {"norm": "l3"}, "unknown norm 'l3'; --norm takes one of linf, l2"),
        (FlatnessConfig, {"measures": "average,sharp"}, "unknown measure 'sharp'"),
        (FlatnessConfig, {"weight_norm": "linf"}, "l2 ball"),
        (LandscapeConfig, {"range": "1,-1"}, "MIN must be smaller than MAX"),
        (LandscapeConfig, {"range": "1"}, "expected MIN,MAX"),
        (LandscapeConfig, {"directions": "interpolate"}, "needs --to"),
        (TrainConfig, {"momentum": 1.0}, r"--momentum must lie in \[0, 1\), got 1"),
        (TrainConfig, {"method": "sgd"}, "unknown method 'sgd'"),
        (TrainConfig, {"schedule": "cosine", "milestones": "10"}, "--milestones applies to"),
    ]
    for config_type, options, message in cases:
        with pytest.raises(UsageError, match=message):
            api.make_config(config_type, **options)
    assert api.make_config(TrainConfig, milestones="60, 90").milestones == (60.0, 90.0)
    assert api.make_config(LandscapeConfig, range=(0, "1/2")).range == (0.0, 0.5)
    with pytest.raises(UsageError, match=r"eps='1/0': division by zero"):
        api.make_config(AttackConfig, eps="1/0")
