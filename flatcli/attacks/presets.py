"""Attack presets named as the literature does (`pgd{S}x{R}` for any S steps, R restarts);
the registry drives CLI choices and help, without importing torch. Step sizes are relative to
eps: the paper's 0.007 at eps 0.0314 is reproduced exactly at that eps (docs/method.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from flatcli.errors import UsageError

PAPER_STEP_RATIO = 0.007 / 0.0314  # docs/method.md: step 0.007 at eps 0.0314


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    kind: str  # "pgd" | "apgd-ce" | "apgd-t" | "aa-lite" | "aa-standard"
    steps: int = 100
    restarts: int = 1
    step_ratio: float = PAPER_STEP_RATIO


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "pgd20x10",
            "PGD-20, 10 restarts, step 0.2229*eps: docs/method.md's robust loss",
            "pgd",
            20,
            10,
        ),
        Preset("pgd7", "PGD-7, step 0.2229*eps: docs/method.md's training attack", "pgd", 7, 1),
        Preset("pgd10", "PGD-10, step eps/4: robust_overfitting's evaluation", "pgd", 10, 1, 0.25),
        Preset("apgd-ce", "APGD with cross-entropy, 100 iterations", "apgd-ce"),
        Preset(
            "apgd-t", "targeted APGD with the DLR loss, top-9 classes, 100 iterations", "apgd-t"
        ),
        Preset("aa-lite", "APGD-CE then APGD-T on the examples still robust", "aa-lite"),
        Preset(
            "aa-standard",
            "the official AutoAttack 'standard' (needs flatcli[autoattack])",
            "aa-standard",
        ),
    ]
}
_PGD_PATTERN = re.compile(r"^pgd(\d+)(?:x(\d+))?$")


def preset(name: str) -> Preset:
    """The preset called `name`, including the generic `pgd{S}[x{R}]` family."""
    if name in PRESETS:
        return PRESETS[name]
    match = _PGD_PATTERN.match(name)
    if match:
        steps, restarts = int(match.group(1)), int(match.group(2) or 1)
        if steps < 1 or restarts < 1:
            raise UsageError(f"attack {name!r}: steps and restarts must be >= 1")
        return Preset(name, f"PGD-{steps}, {restarts} restart(s)", "pgd", steps, restarts)
    raise UsageError(f"unknown attack {name!r}; choose from {', '.join(PRESETS)} or pgd<S>x<R>")


def build_attack(
    name: str,
    norm: str,
    eps: float,
    step_size: float | None = None,
    seed: int = 0,
    precision: str = "fp32",
    restart_choice: str = "wrong-class",
):
    """An attack object (the `flatcli.attacks.base.Attack` protocol) for preset `name`.

    `step_size` (absolute) overrides a PGD preset's relative step. `precision` (fp32 | tf32 |
    bf16): what the search runs in; the reported numbers are fp32 (`attacks.precision`).
    `restart_choice` (PGD with restarts): wrong-class | loss (`flatcli.attacks.pgd.PGD`).
    """
    if precision != "fp32":
        from flatcli.attacks.precision import with_precision

        inner = build_attack(name, norm, eps, step_size, seed, restart_choice=restart_choice)
        return with_precision(inner, precision)
    p = preset(name)
    if p.kind == "pgd":
        from flatcli.attacks.pgd import PGD

        step = step_size if step_size is not None else p.step_ratio * eps
        return PGD(name, norm, eps, p.steps, step, p.restarts, restart_choice=restart_choice)
    from flatcli.attacks import apgd

    if p.kind == "apgd-ce":
        return apgd.APGDCE(name, norm, eps, p.steps, p.restarts)
    if p.kind == "apgd-t":
        return apgd.APGDT(name, norm, eps, p.steps, p.restarts)
    if p.kind == "aa-lite":
        return apgd.Ensemble(
            name,
            (apgd.APGDCE("apgd-ce", norm, eps, p.steps), apgd.APGDT("apgd-t", norm, eps, p.steps)),
        )
    from flatcli.attacks.official import official_autoattack

    return official_autoattack(name, norm, eps, seed)
