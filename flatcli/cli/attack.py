"""`flatcli attack`: clean and robust error and robust loss of every checkpoint."""

from __future__ import annotations

from flatcli.cli import options as o
from flatcli.cli.runner import run_command

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
    precision: o.PrecisionOpt = o.Precision.fp32,
    compile: o.CompileOpt = o.Compile.auto,
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
    from flatcli import checkpoints, evaluation
    from flatcli.config import AttackConfig

    config = AttackConfig(
        dataset=dataset,
        split=split.value,
        n_examples=n_examples,
        eps=o.parse_eps(eps),
        norm=norm.value,
        attacks=tuple(o.csv_list(attacks)),
        step_size=o.parse_eps(step_size, "--step-size"),
        seed=seed,
        arch=arch,
        normalize=normalize,
        data_dir=None if data_dir is None else str(data_dir),
        device=device,
        batch_size=batch_size,
        precision=precision.value,
        compile=compile.value,
    )
    refs = checkpoints.discover(paths)
    config = evaluation.resolve_attack_config(config, refs)
    run_command(
        table="attack",
        units=refs,
        config=config,
        out=out,
        shard=shard,
        force=force,
        dry_run=dry_run,
        fmt=fmt,
        quiet=quiet,
        summary_columns=SUMMARY,
        describe=lambda device, n: (
            f"{n} checkpoint(s), {config.dataset} {config.split} n={config.n_examples}, "
            f"eps={config.eps:g} ({config.norm}), attacks={','.join(config.attacks)}, "
            f"device={device}"
        ),
        measure=lambda device, on_batch, on_note: evaluation.attack_measure(
            config, device, on_batch, on_note
        ),
    )
