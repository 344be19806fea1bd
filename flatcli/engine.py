"""The robust-loss engine: per-example clean and robust loss and correctness of a model.

In batches on its device, eager or compiled (`flatcli.runtime`), halved on out-of-memory. Random
starts are drawn once per work unit and moved to the device once; results do not depend on the
batch size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from flatcli import runtime, weights
from flatcli.attacks.base import (
    AttackOutcome,
    ce_per_example,
    padded_index,
    slice_starts,
    tile_starts,
)
from flatcli.config.commands import EVAL_BATCH
from flatcli.errors import UsageError


@dataclass
class ExampleLosses:
    """Per-example results on N examples: clean loss/correctness and one outcome per attack."""

    clean_loss: torch.Tensor  # float [N], nats
    clean_correct: torch.Tensor  # bool [N]
    robust: dict[str, AttackOutcome]  # attack name -> outcome with [N] tensors
    compile_seconds: float = 0.0  # torch.compile time spent in this call (0 eager or reused)

    def worst(self) -> AttackOutcome:
        """Per-example worst case over all attacks: broken by any; largest loss among estimates."""
        outcomes = list(self.robust.values())
        correct = torch.stack([o.correct for o in outcomes]).all(0)
        losses = torch.stack([o.loss for o in outcomes])
        loss = losses.masked_fill(losses.isnan(), -math.inf).amax(0)
        loss[loss == -math.inf] = math.nan  # no attack estimated this example's loss
        return AttackOutcome(loss=loss, correct=correct)


def error_rate(correct: torch.Tensor) -> float:
    """Fraction of examples not correct, from the counts: 28 of 100 is 0.28 exactly as a float,
    not 1 - float32(0.72) = 0.27999997."""
    return int((~correct).sum()) / correct.numel()


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def robust_losses(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence,
    seed_keys: tuple = (0,),
    batch_size: int = EVAL_BATCH,
    on_batch: Callable[[int, int], None] | None = None,
    *,
    compile: str = "off",
    keep_points: bool = False,
) -> ExampleLosses:
    """Clean and robust per-example results of `model` (eval mode, on its device) on (x, y).

    x: float [N, C, H, W] in [0, 1] (any device; moved batch by batch), y: int64 [N].
    Each attack draws its random starts for all N examples from its own generator
    `runtime.generator(*seed_keys, attack.name)`, so adding an attack does not change the others.
    `on_batch(done, total)` reports progress in examples. `compile` is the policy (auto | on |
    off, `runtime.enabled`); a model compiled already is used as it is. `keep_points`: each
    outcome also holds `points`, the inputs behind its loss ([N, C, H, W] on x's device; attacks
    that return points: PGD, APGD-CE).
    """
    starts = _starts(x, attacks, seed_keys, _device(model))
    return _losses(
        model, x, y, attacks, starts, batch_size, on_batch, compile=compile,
        keep_points=keep_points,
    )  # fmt: skip


def robust_losses_at(
    model: nn.Module,
    offsets: Sequence[Sequence[torch.Tensor]],
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence,
    seed_keys: tuple = (0,),
    batch_size: int = EVAL_BATCH,
    on_batch: Callable[[int, int], None] | None = None,
    *,
    compile: str = "off",
) -> list[ExampleLosses]:
    """`robust_losses` of the model at each weight setting w + offset_g, in one batched pass
    (one setting: the weights moved in place and restored bitwise, any attack).

    Equal (up to float rounding) to moving the weights by each offset in turn and calling
    `robust_losses` with the same seed keys: every setting sees the same examples and the same
    random starts. The G settings run as one stacked model (`weights.Stacked`, rows interleaved),
    so each batch holds `batch_size` examples x G settings. Every attack must run on all of its
    rows (`keeps_rows`): PGD and APGD-CE do, APGD-T and ensembles (which attack a subset) do not.
    `on_batch(done, total)`: progress in examples (once, at the end, for a stacked pass).
    """
    g = len(offsets)
    if g == 1:
        with weights.perturbed(model, offsets[0]):
            return [
                robust_losses(
                    model, x, y, attacks, seed_keys, batch_size, on_batch, compile=compile
                )
            ]
    for attack in attacks:
        if not getattr(attack, "keeps_rows", False):
            raise UsageError(
                f"attack {attack.name!r} attacks a subset of its examples, so it cannot batch "
                "weight settings: use one setting per call (pgd* and apgd-ce can batch)"
            )
    starts = _starts(x, attacks, seed_keys, _device(model))
    starts = {name: tile_starts(s, g) for name, s in starts.items()}
    # Compiled: the stacked call (vmap over the settings) is what compiles; new offsets are new
    # inputs to the same graph, not a recompile.
    stacked = runtime.compiled_like(weights.Stacked(runtime.eager(model), offsets), model)
    tiled = _losses(
        stacked,
        x.repeat_interleave(g, 0),
        y.repeat_interleave(g, 0),
        attacks,
        starts,
        batch_size,
        None,
        group=g,
        compile=compile,
    )

    if on_batch is not None:
        on_batch(len(y), len(y))

    def setting(t: torch.Tensor, i: int) -> torch.Tensor:
        return t.view(-1, g)[:, i].clone()

    return [
        ExampleLosses(
            setting(tiled.clean_loss, i),
            setting(tiled.clean_correct, i),
            {
                name: AttackOutcome(setting(o.loss, i), setting(o.correct, i))
                for name, o in tiled.robust.items()
            },
            tiled.compile_seconds if i == 0 else 0.0,
        )
        for i in range(g)
    ]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _starts(x: torch.Tensor, attacks: Sequence, seed_keys: tuple, device: torch.device) -> dict:
    """Each attack's starts for all of x, on `device` (moved once, sliced there per batch)."""
    x_cpu = x.cpu()  # draws come from CPU generators: the same on every device
    return {
        a.name: slice_starts(
            a.draw_starts(x_cpu, runtime.generator(*seed_keys, a.name)), slice(None), device
        )
        for a in attacks
    }


def _losses(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence,
    starts: dict,
    batch_size: int,
    on_batch: Callable[[int, int], None] | None,
    group: int = 1,
    compile: str = "off",
    keep_points: bool = False,
) -> ExampleLosses:
    """The batch loop: `batch_size` x `group` rows at a time (a group of rows stays together).

    Compiled, every batch has the same number of rows: the last one is padded with repeats of
    its own rows and the padding's results are dropped (rows are independent in eval mode), so
    it does not recompile.
    """
    device = _device(model)
    model.eval()
    model = runtime.compiled(model, compile, device)
    static = runtime.is_compiled(model)
    compile_start = runtime.compile_seconds() if static else 0.0
    n = len(y)
    clean_loss = torch.empty(n)
    clean_correct = torch.empty(n, dtype=torch.bool)
    robust = {
        a.name: AttackOutcome(
            torch.empty(n),
            torch.empty(n, dtype=torch.bool),
            torch.empty_like(x) if keep_points else None,
        )
        for a in attacks
    }
    options = {"keep_points": True} if keep_points else {}  # only attacks that return points
    begin = 0
    while begin < n:
        end = min(n, begin + batch_size * group)
        index = slice(begin, end)
        rows = index
        if static and end - begin < min(n, batch_size * group):
            rows = padded_index(torch.arange(begin, end, device=x.device), batch_size * group)
        try:
            xb = x[rows].to(device, non_blocking=True)
            yb = y[rows].to(device, non_blocking=True)
            with torch.no_grad():  # the grad mode of every re-evaluation: one compiled graph
                logits = model(xb)
            batch_clean = (ce_per_example(logits, yb), logits.argmax(1) == yb)
            batch_robust = {
                a.name: a(model, xb, yb, slice_starts(starts[a.name], rows, device), **options)
                for a in attacks
            }
        except RuntimeError as err:
            if not _is_oom(err) or batch_size == 1:
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            batch_size //= 2  # same draws per example, so the result does not change
            continue
        m = end - begin
        clean_loss[index], clean_correct[index] = (t[:m].cpu() for t in batch_clean)
        for name, outcome in batch_robust.items():
            robust[name].loss[index] = outcome.loss[:m].cpu()
            robust[name].correct[index] = outcome.correct[:m].cpu()
            if keep_points:
                robust[name].points[index] = outcome.points[:m].detach().to(x.device)
        begin = end
        if on_batch is not None:
            on_batch(begin, n)
    seconds = runtime.compile_seconds() - compile_start if static else 0.0
    return ExampleLosses(clean_loss, clean_correct, robust, seconds)
