"""Every command's --help at 80 columns: nothing cut, no word broken, plain metavars; and the
attack option answers to both of its names."""

from __future__ import annotations

import re

import pytest

from flatcli.cli import COMMANDS, main

WIDTH = 80


def _help(capsys, monkeypatch, *args) -> str:
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--help"])
    out, _ = capsys.readouterr()
    assert exit_info.value.code == 0
    return out


def _command(name: str):
    import typer.main

    from flatcli.cli import app

    return typer.main.get_command(app).commands[name]


@pytest.mark.parametrize("name", [None, *COMMANDS])
def test_help_fits_80_columns_without_cutting_or_breaking_words(name, capsys, monkeypatch):
    out = _help(capsys, monkeypatch, *([name] if name else []))
    assert "…" not in out
    assert all(len(line) <= WIDTH for line in out.splitlines()), max(out.splitlines(), key=len)
    assert not re.search(r"<(bool|str|int|float|path|list\[\w+\])>", out), out
    if name is None:
        return
    flat = " ".join(out.split())
    for param in _command(name).params:
        for flag in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]:
            if flag.startswith("-"):
                assert re.search(rf"(^|[\s,/]){re.escape(flag)}([\s,]|$)", out, re.M), flag
        if param.help:  # every word of the help text, whole and in order
            assert " ".join(param.help.split()) in flat, param.name


def test_metavars_are_plain_and_flags_have_none(capsys, monkeypatch):
    out = _help(capsys, monkeypatch, "flatness")
    assert "--n-examples N " in out and "--eps X " in out and "--out, -o PATH" in out
    assert "--measure, -m LIST" in out and "--norm linf|l2" in out
    assert re.search(r"^  --quiet, -q +No progress", out, re.M)
    assert "--worst-reattack / --no-worst-reattack\n" in out  # a long name: help below it


def test_an_example_command_wraps_with_continuations(capsys, monkeypatch):
    out = _help(capsys, monkeypatch, "train")
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if "CIFAR-10 baseline:" in line)
    block = []
    for line in lines[start:]:
        block.append(line)
        if not line.endswith("\\"):
            break
    assert len(block) > 1  # continued, and the words are the command's, whole
    command = " ".join(" ".join(line.rstrip("\\").split()) for line in block)
    assert "--milestones 60,90,120" in command and command.endswith("--out runs/cifar10-at")


@pytest.mark.parametrize(
    "name, flags",
    [("attack", ("--attacks", "--attack")), ("flatness", ("--attack", "--attacks")),
     ("landscape", ("--attack", "--attacks")), ("train", ("--attack", "--attacks"))],
)  # fmt: skip
def test_the_attack_option_has_both_names(name, flags):
    param = next(p for p in _command(name).params if p.name in ("attack", "attacks"))
    assert tuple(param.opts) == flags


def test_attack_alias_parses_to_the_same_config(tmp_path, capsys):
    from pathlib import Path

    checkpoint = Path(__file__).parent.parent / "sample_checkpoints/at/epoch_0001.safetensors"
    outputs = []
    for flag in ("--attacks", "--attack"):
        with pytest.raises(SystemExit) as exit_info:
            main(["attack", str(checkpoint), "--out", str(tmp_path), flag, "pgd10",
                  "--dry-run", "-f", "json"])  # fmt: skip
        out, err = capsys.readouterr()
        assert exit_info.value.code == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1] and '"key"' in outputs[0]
