"""`flatcli attack`: clean and robust error and robust loss of every checkpoint."""

from __future__ import annotations

from typer import Exit

from flatcli.cli import options as o
from flatcli.cli.output import Progress, render

SUMMARY = [
    "run",
    "epoch",
    "attack",
    "n_examples",
    "eps",
    "clean_err",
    "robust_err",
    "robust_loss",
    "wall_time_s",
]


def attack(
    paths: o.Paths,
    out: o.Out,
    dataset: o.Dataset = None,
    split: o.SplitOpt = o.Split.test,
    n_examples: o.NExamples = None,
    eps: o.Eps = None,
    norm: o.NormOpt = o.Norm.linf,
    attacks: o.Attacks = "pgd20x10,aa-lite",
    step_size: o.StepSize = None,
    seed: o.Seed = 0,
    arch: o.Arch = None,
    normalize: o.Normalize = None,
    data_dir: o.DataDir = None,
    device: o.Device = "auto",
    batch_size: o.BatchSize = 512,
    fmt: o.FormatOpt = o.Format.table,
    quiet: o.Quiet = False,
    force: o.Force = False,
    dry_run: o.DryRun = False,
    shard: o.ShardOpt = None,
):
    """Clean and robust error and robust loss of every checkpoint; writes OUT/attack.

    Robust loss (nats) is the mean over examples of the largest cross-entropy PGD finds (worst
    restart per example); robust error counts an example broken by any attack. With several attacks
    a `worst` row gives the per-example worst case.

    Example: flatcli attack sample_checkpoints --out out --attacks pgd20x10 --n-examples 200
    """
    from flatcli import checkpoints, evaluation, runtime, sweep, tables
    from flatcli.config import AttackConfig, config_hash

    config = AttackConfig(
        dataset=dataset,
        split=split.value,
        n_examples=n_examples,
        eps=None if eps is None else o.parse_eps(eps),
        norm=norm.value,
        attacks=tuple(o.csv_list(attacks)),
        step_size=None if step_size is None else o.parse_eps(step_size, "--step-size"),
        seed=seed,
        arch=arch,
        normalize=normalize,
        data_dir=None if data_dir is None else str(data_dir),
        device=device,
        batch_size=batch_size,
    )
    shard_spec = sweep.parse_shard(shard)
    refs = checkpoints.discover(paths)
    config = evaluation.resolve_attack_config(config, refs)
    target = runtime.resolve_device(config.device)
    chash = config_hash(config)
    if dry_run:
        todo = sweep.plan(refs, "attack", out, chash, shard_spec, force)
        rows = [
            {"run": r.run, "epoch": r.epoch, "checkpoint": str(r.path), "status": "todo"}
            for r in todo.todo
        ]
        rows += [
            {"run": r.run, "epoch": r.epoch, "checkpoint": str(r.path), "status": "done"}
            for r in todo.skipped
        ]
        render(
            rows,
            ["run", "epoch", "checkpoint", "status"],
            fmt.value,
            ["run", "epoch", "status", "checkpoint"],
        )
        raise Exit(0)
    ensure_writable(out)
    progress = Progress(quiet, "attack")
    progress.log(
        f"attack: {len(shard_spec.take(refs))} checkpoint(s), {config.dataset} {config.split} "
        f"n={config.n_examples}, eps={config.eps:g} ({config.norm}), "
        f"attacks={','.join(config.attacks)}, "
        f"device={target}"
    )
    measure = evaluation.attack_measure(config, target)
    with progress:
        summary = sweep.run(
            refs,
            measure,
            "attack",
            out,
            chash,
            shard_spec,
            force,
            progress,
            debug=o.debug_enabled(),
        )
    render(summary.rows, tables.columns("attack"), fmt.value, SUMMARY)
    raise Exit(summary.exit_code)


def ensure_writable(out) -> None:
    """Create OUT or fail with one line before any work starts."""
    import os
    import tempfile
    from pathlib import Path

    from flatcli.errors import UsageError

    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"--out {out}: not writable ({err.strerror or err})") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"--out {out}: not writable")
