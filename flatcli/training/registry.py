"""The training methods by name: what each one is, the options it owns and its help (torch-free,
so `flatcli train --help` can enumerate them). The objectives live in `methods.py`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodInfo:
    """A training method: `attacks` (it needs an inner attack), the config fields it owns (only it
    may set them), and a one-line description for `--help`."""

    name: str
    help: str
    attacks: bool = True
    options: tuple[str, ...] = ()


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("clean", "cross-entropy on clean inputs, no attack", attacks=False),
        MethodInfo("at", "adversarial training (Madry et al.): cross-entropy on PGD points"),
        MethodInfo(
            "trades", "TRADES: clean CE + beta * KL(clean || adversarial)", options=("trades_beta",)
        ),
        MethodInfo(
            "mart", "MART: boosted CE + beta * KL weighted by 1 - p_y", options=("mart_beta",)
        ),
        MethodInfo(
            "awp",
            "AT-AWP: AT at an adversarial weight offset of relative size gamma",
            options=("awp_gamma", "awp_warmup", "awp_layers", "awp_mode"),
        ),
    )
}


def method_help() -> str:
    """`name: description` for every method, for `--help`."""
    return "; ".join(f"{m.name}: {m.help}" for m in METHODS.values())
