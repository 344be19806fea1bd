"""House rules checked on the code itself: the core never imports the terminal libraries, every
config field is an option with the field's help and default, and no module outgrows 500 lines."""

from __future__ import annotations

import ast
import dataclasses
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

import flatcli
from flatcli.config import commands as config
from flatcli.config import fields

PACKAGE = Path(flatcli.__file__).parent
TERMINAL = {"typer", "rich", "click"}
MAX_LINES = 500


def _core_modules() -> list[str]:
    """Every module under flatcli/ but the CLI package (and __main__, which runs it)."""
    names = [m.name for m in pkgutil.walk_packages([str(PACKAGE)], prefix="flatcli.")]
    return sorted(
        ["flatcli"]
        + [n for n in names if not n.startswith("flatcli.cli") and n != "flatcli.__main__"]
    )


def _source(module: str) -> Path:
    relative = Path(*module.split(".")[1:])
    package = PACKAGE / relative / "__init__.py"
    return package if package.exists() else PACKAGE / relative.with_suffix(".py")


def _imported(tree: ast.AST) -> set[str]:
    """Top-level names of every import in the module, function-level (lazy) ones included."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_core_modules_do_not_import_typer_rich_or_click_even_lazily():
    """Every import statement of every module outside flatcli/cli, those inside functions
    included (an import-time check in a fresh interpreter would miss lazy imports and costs
    seconds for torch)."""
    offenders = {}
    for module in _core_modules():
        imported = _imported(ast.parse(_source(module).read_text()))
        bad = {n for n in imported if n.split(".")[0] in TERMINAL or n.startswith("flatcli.cli")}
        if bad:
            offenders[module] = sorted(bad)
    assert offenders == {}, f"only flatcli/cli may use the terminal: {offenders}"


COMMAND_CONFIGS = {
    "attack": config.AttackConfig,
    "flatness": config.FlatnessConfig,
    "landscape": config.LandscapeConfig,
    "train": config.TrainConfig,
}
NOT_OPTIONS = {("train", "world_size"): "set by the trainer from the DDP environment"}


def _params(command: str) -> dict:
    from flatcli.cli import app

    return {p.name: p for p in typer.main.get_command(app).commands[command].params}


def _option_rows() -> list[tuple[str, dataclasses.Field]]:
    return [
        (command, f)
        for command, config_class in COMMAND_CONFIGS.items()
        for f in dataclasses.fields(config_class)
        if (command, f.name) not in NOT_OPTIONS
    ]


@pytest.mark.parametrize(
    "command,field", _option_rows(), ids=[f"{c}-{f.name}" for c, f in _option_rows()]
)
def test_every_config_field_is_an_option_with_the_fields_help_and_default(command, field):
    """By construction (flatcli.cli.options.command): the option's help is the field's, and its
    default, parsed as the command parses it, is the field's default, so --help, the config
    hash and the README cannot disagree."""
    from flatcli.cli import _prose
    from flatcli.config.fields import coerce

    param = _params(command).get(field.metadata.get("param", field.name))
    assert param is not None, f"{command}: {field.name} is no option (or name it in NOT_OPTIONS)"
    assert param.help == _prose(field.metadata["help"])
    assert param.rich_help_panel == field.metadata["panel"]
    default = coerce(field, param.default, repr)
    if field.metadata.get("repeat") and field.default is not None:  # not given: the default,
        assert default is None and ",".join(field.default) in field.metadata["help"]  # named
    else:
        assert default == field.default
    if field.metadata.get("menu"):
        assert [m.value for m in type(param.default)] == list(field.metadata["choices"])


def test_the_configs_choices_are_the_engines():
    from flatcli import runtime
    from flatcli.attacks import precision

    assert config.PRECISIONS == precision.PRECISIONS
    assert fields.COMPILE_POLICIES == runtime.COMPILE_CHOICES


@pytest.mark.parametrize(
    "args,option",
    [
        (["attack", "--compile", "maybe"], "--compile"),
        (["flatness", "--precision", "fp16"], "--precision"),
        (["landscape", "--compile", "maybe"], "--compile"),
        (["train", "--compile", "maybe"], "--compile"),
    ],
)
def test_a_bad_choice_is_one_line_and_exit_2(args, option, tmp_path, capsys):
    from flatcli.cli import main

    paths = [] if args[0] == "train" else [str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main([args[0], *paths, "--out", str(tmp_path / "o"), *args[1:]])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert option in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "relative",
    [
        rel
        for rel in sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))
    ],
)
def test_no_module_over_500_lines(relative):
    lines = len((PACKAGE / relative).read_text().splitlines())
    assert lines <= MAX_LINES, f"flatcli/{relative}: {lines} lines (at most {MAX_LINES})"


def _layout_entries() -> dict[str, str]:
    """README's Layout block: entry name (module or package/) -> its description."""
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    entries, name = {}, None
    for line in section.split("```", 2)[1].splitlines()[2:]:
        head = re.match(r"^  (\S+)\s+(.*)$", line)
        if head:
            name = head.group(1)
            entries[name] = head.group(2)
        elif name and line.strip():
            entries[name] += " " + line.strip()
    return entries


def test_readme_layout_lists_every_package_and_module():
    """A newcomer finds each concept from the README's layout: every module and package of
    flatcli/ has an entry, no entry is stale, and a package's entry names its modules."""
    entries = _layout_entries()
    present = sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in PACKAGE.iterdir()
        if p.name != "__pycache__" and (p.is_dir() or p.suffix == ".py")
    )
    assert [p for p in present if p not in entries] == []
    assert [e for e in entries if e not in present] == []
    for package in (p for p in present if p.endswith("/")):
        words = set(re.findall(r"[A-Za-z_]+", entries[package]))
        modules = (m.stem for m in (PACKAGE / package).glob("*.py") if m.stem != "__init__")
        assert [m for m in modules if m not in words] == [], package


# Notes outside the repository (planning documents, tracker numbers) mean nothing to a reader.
_OUTSIDE = re.compile(r"\b(?:DESIGN|PAPER)\.md\b|\b[Ii]ssue\s+#?\d+")


def test_nothing_cites_notes_outside_the_repository():
    root = Path(flatcli.__file__).resolve().parent.parent
    texts = [root / "README.md", root / "Makefile"] + [
        p
        for folder in ("flatcli", "tests", "benchmarks", "docs", "examples")
        for p in sorted((root / folder).rglob("*"))
        if p.suffix in (".py", ".md", ".sh", ".sbatch") and p != Path(__file__).resolve()
    ]
    cited = [
        f"{p.relative_to(root)}:{n}: {line.strip()}"
        for p in texts
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if _OUTSIDE.search(line)
    ]
    assert not cited, "\n".join(cited)


def _import_graph() -> dict[str, set[str]]:
    """flatcli module -> the flatcli modules it imports (function-level imports included)."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def module_of(name: str) -> str:
        while name not in files:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {module_of(a.name) for a in node.names if a.name.startswith("flatcli")}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                if base.startswith("flatcli"):
                    edges |= {module_of(f"{base}.{a.name}") for a in node.names}
        graph[name] = edges - {name}
    return graph


def test_the_modules_import_each_other_without_a_cycle():
    graph, done, path = _import_graph(), set(), []

    def visit(name: str) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
        if name in done:
            return
        path.append(name)
        for other in sorted(graph[name]):
            visit(other)
        path.pop()
        done.add(name)

    assert "flatcli.cli" in graph and graph["flatcli.evaluation"]  # the graph is really read
    for name in sorted(graph):
        visit(name)


# Evaluation defaults written as literals outside config/commands.py drift from the CLI's options.
_LITERAL_DEFAULTS = re.compile(
    r"\bbatch_size: int = 512\b|\bsamples: int = 10\b|\biterations: int = 20\b|^SPLITS = ", re.M
)


def test_evaluation_defaults_are_written_only_in_config():
    written = [
        f"{path.relative_to(PACKAGE)}: {match.group(0)}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PACKAGE / "config" / "commands.py"
        for match in _LITERAL_DEFAULTS.finditer(path.read_text())
    ]
    assert not written, written


# What the repository's own text names: files (docs/method.md) and dotted flatcli names.
_REPO_PATH = re.compile(r"(?<![\w/.-])((?:docs|tests|benchmarks|examples|flatcli|\.ci)/[\w/.-]*\w)")
_DOTTED = re.compile(r"(?<![\w/.-])(flatcli(?:\.\w+)+)")
_FOREIGN_PATHS = {  # files inside another package's wheel that a script names, not ours
    "examples/model_test.pt",
    "examples/tf_model.weight.h5",
}


def _texts(root: Path) -> list[Path]:
    """README, Makefile and every script and text under the project's folders (not the data and
    fixtures that tests read, which other codebases wrote)."""
    folders = ("flatcli", "tests", "benchmarks", "docs", "examples", ".ci")
    generated = (root / "tests" / "data", root / "tests" / "fixtures")
    found = [root / "README.md", root / "Makefile"]
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            kept = path.is_file() and path.suffix in (".py", ".md", ".sh", ".sbatch", "")
            if kept and "__pycache__" not in path.parts and not path.is_relative_to(generated[0]) \
                    and not path.is_relative_to(generated[1]):
                found.append(path)
    return found


def _resolves(name: str) -> bool:
    """A dotted name (flatcli.measures.versions.VERSIONS): its longest importable module prefix
    holds the rest as attributes."""
    import importlib

    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attribute in parts[k:]:
            if not hasattr(obj, attribute):
                return False
            obj = getattr(obj, attribute)
        return True
    return False


def test_every_reference_points_into_this_repository():
    """A file path (docs/method.md) or dotted name (flatcli.measures.versions) in the code, docs,
    tests, examples or README names a file or an object that exists here."""
    root = PACKAGE.parent
    texts = _texts(root)
    assert root / "docs" / "method.md" in texts and len(texts) > 100  # the texts are really read
    missing = []
    for path in texts:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            where = f"{path.relative_to(root)}:{n}"
            for match in _REPO_PATH.finditer(line):
                name = match.group(1)
                if name not in _FOREIGN_PATHS and not (root / name).exists():
                    missing.append(f"{where}: {name}")
            missing += [f"{where}: {m.group(1)}" for m in _DOTTED.finditer(line)
                        if not _resolves(m.group(1))]  # fmt: skip
    assert not missing, "\n".join(missing)


def test_every_flatness_measure_is_registered_beside_its_implementation():
    """The torch-free names --help lists are the measures' own registrations, one module each."""
    from flatcli import measures
    from flatcli.config import registries

    registered = measures.registered()
    assert set(registered) == set(registries.MEASURES)
    for name, function in registered.items():
        family = registries.MEASURES[name].family
        assert function.__module__ == f"flatcli.measures.{family}", name
    assert {t: measures.table(t).name for t in ("attack", "flatness", "landscape")} == {
        "attack": "attack", "flatness": "flatness", "landscape": "landscape"
    }


# The modules that declare config fields are the formatter's: a `fmt: skip` or a hand layout
# would let the declarations drift back into lines that only their author can read.
FORMATTED = ("config/commands.py", "config/fields.py", "training/defaults.py")


@pytest.mark.parametrize("relative", FORMATTED)
def test_the_config_modules_carry_no_fmt_skip(relative):
    lines = (PACKAGE / relative).read_text().splitlines()
    marked = [n for n, line in enumerate(lines, 1) if re.search(r"fmt:\s*(skip|off)", line)]
    assert not marked, f"flatcli/{relative}: fmt: skip/off on lines {marked}"


def test_the_config_modules_are_as_ruff_formats_them():
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip(f"no ruff next to {sys.executable} (pip install -e '.[dev]')")
    paths = [str(PACKAGE / relative) for relative in FORMATTED]
    done = subprocess.run(
        [str(ruff), "format", "--check", "--diff", *paths],
        cwd=PACKAGE.parent,  # pyproject.toml's [tool.ruff]: line length
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"run `ruff format` on them:\n{done.stdout}{done.stderr}"


# The layers of docs/architecture.md, bottom up: a module imports from its own layer or below.
LAYERS = (
    ("errors", "files", "tables", "config"),
    ("data", "models", "checkpoints"),
    ("runtime", "weights", "ascent", "attacks", "engine", "uncertainty"),
    ("evaluation", "measures"),
    ("sweep",),
    ("training", "report", "api", "cli", "__main__"),
)
# config names the choices of torch-free registries that live beside what they name (attack
# presets, zoo entries) and re-exports train's defaults from their home beside the training code
UPWARD_ALLOWED = {
    ("flatcli.config.commands", "flatcli.attacks.presets"),
    ("flatcli.config.commands", "flatcli.checkpoints.zoos"),
    ("flatcli.config.commands", "flatcli.training.defaults"),
}
MAX_TOP_MODULES = 12


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else None
    if top is None:  # flatcli itself: the version
        return 0
    return next(i for i, names in enumerate(LAYERS, 1) if top in names)


def test_no_module_imports_from_a_layer_above_its_own():
    graph = _import_graph()
    upward = sorted(
        f"{a} (layer {_layer(a)}) -> {b} (layer {_layer(b)})"
        for a, edges in graph.items()
        for b in edges
        if _layer(b) > _layer(a) and (a, b) not in UPWARD_ALLOWED
    )
    assert not upward, "\n".join(upward)
    stale = sorted((a, b) for a, b in UPWARD_ALLOWED if b not in graph[a])
    assert not stale, stale  # an exception nothing needs any more


def test_few_top_level_modules_each_saying_in_one_line_what_it_owns():
    entry = ("__init__.py", "__main__.py")
    modules = sorted(p for p in PACKAGE.glob("*.py") if p.name not in entry)
    assert len(modules) <= MAX_TOP_MODULES, [p.name for p in modules]
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert {p.stem for p in modules} | packages == {n for layer in LAYERS for n in layer} - {
        "__main__"
    }
    for path in modules:
        docstring = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""
        first, _, rest = docstring.partition("\n")
        assert first.endswith(".") and (not rest or rest.startswith("\n")), (path.name, first)
