"""From a foreign state dict to our architectures: unwrap the training script's dict, strip
wrapper prefixes (`module.`, `_orig_mod.`, MadryLab's `module.model.`), find stored input
normalization, and load strictly into `Classifier.net` (or the whole `Classifier`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from flatcli.checkpoints.format import jsonable
from flatcli.checkpoints.names import natural
from flatcli.errors import CheckpointError, first_sentence, one_line

if TYPE_CHECKING:
    from flatcli.models import Classifier

# "last" before "best": a file holding both loads its last weights, as RobustBench does.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "last", "best")
PREFIXES = ("module.model.", "module.", "_orig_mod.", "model.")
# Stored input normalization: robustbench/robust_overfitting `mu`/`sigma`, MadryLab
# `robustness`' InputNormalize buffers `normalizer.new_mean`/`new_std`, and the plain names.
NORMALIZATION_KEYS = (("mu", "sigma"), ("mean", "std"), ("normalize.mean", "normalize.std"),
                      ("normalizer.new_mean", "normalizer.new_std"))


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def unwrap(obj: Any, label: str) -> tuple[dict, str | None, dict]:
    """(tensors, wrapper key path or None, JSON-able scalars found beside them)."""
    wrapper: list[str] = []
    extras: dict = {}
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        inner = None
        for key in WRAPPER_KEYS:
            value = obj.get(key)
            if isinstance(value, Mapping) and _holds_tensors(value):
                inner = key
                break
        if inner is None:
            break
        for k, v in obj.items():
            if isinstance(k, str) and isinstance(v, (int, float, str, bool)) and k not in extras:
                extras[k] = jsonable(v)
            elif isinstance(k, str) and hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
                extras.setdefault(k, jsonable(v))
        wrapper.append(inner)
        obj = obj[inner]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{label}: not a state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and _is_tensor(v)}
    if not tensors:
        keys = ", ".join(str(k) for k in list(obj)[:5])
        raise CheckpointError(f"{label}: no weights found (top-level keys: {keys or 'none'})")
    return tensors, "/".join(wrapper) or None, extras


def classifier_width(state: Mapping) -> int | None:
    """Rows of the last 2-D weight in the state dict (its output layer: state dicts list modules
    in definition order), i.e. the model's class count; None without one."""
    matrices = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    return int(matrices[-1].shape[0]) if matrices else None


def _holds_tensors(mapping: Mapping, depth: int = 0) -> bool:
    for value in mapping.values():
        if _is_tensor(value):
            return True
        if depth < 2 and isinstance(value, Mapping) and _holds_tensors(value, depth + 1):
            return True
    return False


def _strip_prefix(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
                break
    return key


def pop_normalization(state: dict) -> tuple[tuple, tuple, str] | None:
    """Remove and return stored normalization tensors (`mu`/`sigma`, `mean`/`std`, ...)."""
    by_base = {_strip_prefix(k): k for k in state}
    for mean_key, std_key in NORMALIZATION_KEYS:
        if mean_key in by_base and std_key in by_base:
            mean_t, std_t = state[by_base[mean_key]], state[by_base[std_key]]
            if mean_t.numel() > 64 or std_t.numel() > 64:
                continue
            del state[by_base[mean_key]], state[by_base[std_key]]
            mean = tuple(float(v) for v in mean_t.detach().float().flatten().tolist())
            std = tuple(float(v) for v in std_t.detach().float().flatten().tolist())
            return mean, std, f"{by_base[mean_key]}/{by_base[std_key]}"
    return None


def _prefix_candidates(state: dict) -> list[tuple[str, dict[str, str]]]:
    """(prefix stripped, {stripped key: key in the file}) for every all-keys prefix level."""
    current = {k: k for k in state}
    out = [("", current)]
    stripped = ""
    while True:
        for prefix in PREFIXES:
            if current and all(k.startswith(prefix) for k in current):
                current = {k[len(prefix) :]: orig for k, orig in current.items()}
                stripped += prefix
                out.append((stripped, current))
                break
        else:
            return out


def _names(keys: set[str] | list[str], limit: int = 5) -> str:
    ordered = sorted(keys, key=natural)
    shown = ", ".join(ordered[:limit])
    return shown + (", ..." if len(ordered) > limit else "")


def _optional(key: str) -> bool:
    """Entries a whole-model state dict may lack: BN's counters and the input normalization."""
    return key.endswith("num_batches_tracked") or key.startswith("normalize.")


class _Match(NamedTuple):
    """How a file's keys fit the model at one prefix level and target."""

    score: int  # missing + unexpected keys; 0 is an exact fit
    prefix: str  # stripped from every file key
    mapping: dict  # our key -> the file's key
    target: str  # "net" (Classifier.net) | "model" (the whole Classifier)
    expected: dict  # the target's own state dict
    missing: set
    unexpected: set


def _best_match(model: Classifier, state: dict) -> _Match:
    """The prefix level and target under which `state`'s keys fit the model best."""
    net_state, full_state = model.net.state_dict(), model.state_dict()
    best = None
    for prefix, mapping in _prefix_candidates(state):
        keys = set(mapping)
        targets = [("net", net_state)]
        if any(k.startswith(("net.", "normalize.")) for k in keys):
            targets.insert(0, ("model", full_state))
        for target, expected in targets:
            skip = _optional if target == "model" else lambda k: k.endswith("num_batches_tracked")
            missing = {k for k in set(expected) - keys if not skip(k)}
            unexpected = keys - set(expected)
            score = len(missing) + len(unexpected)
            if best is None or score < best[0]:
                best = _Match(score, prefix, mapping, target, expected, missing, unexpected)
            if score == 0:
                return best
    return best


def _key_mismatch(label: str, arch: str, match: _Match) -> CheckpointError:
    """The missing and unexpected keys, with as many names as fit one readable line."""
    missing, unexpected = match.missing, match.unexpected
    shown_prefix = "" if match.target == "model" else "net."
    missing_names = {shown_prefix + k for k in missing}
    unexpected_names = {match.mapping[k] for k in unexpected}
    for limit in (5, 3, 2, 1):
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} ({_names(missing_names, limit)})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} ({_names(unexpected_names, limit)})")
        text = f"{label}: does not match arch '{arch}': {', '.join(parts)}"
        if len(text) - len(label) <= 280:
            break
    return CheckpointError(one_line(text, 400))


def fit_state(model: Classifier, state: dict, label: str, arch: str, hint: str) -> dict:
    """Load `state` strictly into `model.net` or into the whole model; returns how it matched
    ({"prefix", "target"}). A key or shape mismatch is a one-line `CheckpointError`."""
    match = _best_match(model, state)
    if match.score:
        raise _key_mismatch(label, arch, match)
    mapping, expected = match.mapping, match.expected
    bad_shapes = [
        f"{mapping[k]} {list(state[mapping[k]].shape)} vs {list(expected[k].shape)}"
        for k in sorted(mapping, key=natural)
        if tuple(state[mapping[k]].shape) != tuple(expected[k].shape)
    ]
    if bad_shapes:
        more = ", ..." if len(bad_shapes) > 3 else ""
        raise CheckpointError(one_line(
            f"{label}: does not match arch '{arch}': {len(bad_shapes)} shape(s) differ, file vs "
            f"model ({', '.join(bad_shapes[:3])}{more}){hint}", 400))
    loaded = {k: state[orig] for k, orig in mapping.items()}
    for key, value in expected.items():  # optional entries the file does not carry
        loaded.setdefault(key, value)
    module = model if match.target == "model" else model.net
    try:
        module.load_state_dict(loaded, strict=True)
    except (RuntimeError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"{label}: does not load into arch '{arch}' ({first_sentence(err)})"
        ) from None
    return {"prefix": match.prefix or None, "target": match.target}
