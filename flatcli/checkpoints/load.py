"""`load_model`: a checkpoint file -> an eval-mode `Classifier` and what was learned about it
(flatcli's own format, or a foreign file read by the rules in `load_model`'s docstring).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flatcli.checkpoints import madry, zoos
from flatcli.checkpoints.format import FORMAT, FORMAT_VERSION, CheckpointInfo, read_sidecar
from flatcli.checkpoints.names import epoch_from_name
from flatcli.checkpoints.safe_load import read_checkpoint
from flatcli.checkpoints.state_dict import classifier_width, fit_state, pop_normalization, unwrap
from flatcli.errors import CheckpointError, UsageError, first_sentence

if TYPE_CHECKING:
    from flatcli.models import Classifier

DEFAULT_FOREIGN_DATASET = "cifar10"


def parse_normalize(value: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """`--normalize`: None (not given), 'none' (identity), a dataset name, 'MEAN,STD' or
    'm1,m2,m3,s1,s2,s3' (also 'm1,m2,m3;s1,s2,s3') -> (mean, std). Bad input: `UsageError`."""
    if value is None:
        return None
    text = str(value).strip()
    lower = text.lower()
    if lower in ("none", "identity"):
        return (0.0,), (1.0,)
    from flatcli.data import DATASETS, get_spec

    if lower in DATASETS:
        spec = get_spec(lower)
        return tuple(float(v) for v in spec.mean), tuple(float(v) for v in spec.std)
    hint = (f"--normalize must be none, a dataset ({', '.join(DATASETS)}), MEAN,STD or "
            f"m1,m2,m3,s1,s2,s3; got {text!r}")
    try:
        if ";" in text:
            left, right = text.split(";", 1)
            mean = [float(v) for v in left.split(",")]
            std = [float(v) for v in right.split(",")]
        else:
            numbers = [float(v) for v in text.split(",")]
            if len(numbers) % 2:
                raise ValueError
            mean, std = numbers[: len(numbers) // 2], numbers[len(numbers) // 2 :]
    except ValueError:
        raise UsageError(hint) from None
    if not mean or len(mean) != len(std) or not all(map(math.isfinite, mean + std)):
        raise UsageError(hint)
    if any(s <= 0 for s in std):
        raise UsageError(f"--normalize: every std must be positive, got {text!r}")
    return tuple(mean), tuple(std)


def _channels(values: Sequence[float], in_channels: int, what: str, label: str) -> tuple:
    values = tuple(float(v) for v in values)
    if len(values) == 1 and in_channels > 1:
        values = values * in_channels
    if len(values) != in_channels:
        raise CheckpointError(
            f"{label}: normalization {what} has {len(values)} values, the model "
            f"{in_channels} input channel(s)"
        )
    return values


def _build(arch: str, num_classes: int, in_channels: int, mean, std, kwargs: dict, label: str,
           own: bool) -> Classifier:
    from flatcli import models

    try:
        return models.build(arch, num_classes, in_channels, mean, std, **kwargs)
    except UsageError as err:
        if own:
            raise CheckpointError(f"{label}: {err}") from None
        raise
    except TypeError as err:
        raise CheckpointError(
            f"{label}: cannot build arch '{arch}' with {kwargs} ({first_sentence(err)})"
        ) from None


def load_model(
    path: str | os.PathLike,
    arch: str | None = None,
    normalize: str | tuple | None = None,
    dataset: str | None = None,
    arch_kwargs: dict | None = None,
    device: Any = "cpu",
) -> tuple[Classifier, CheckpointInfo]:
    """A model from a checkpoint: eval mode, on `device`, float32; and what was learned about it.

    `normalize` is a `--normalize` string (or an already parsed (mean, std) pair). flatcli's own
    format describes itself; explicit arch/normalize must agree with it. A foreign file takes
    dataset and arch from the caller, else its zoo layout (`zoos`), else cifar10 and that
    dataset's default arch; normalization from the caller, else tensors it stores, else its zoo
    entry, else the identity; its state dict loads strictly (only `num_batches_tracked` may
    lack). Every problem with the file raises `CheckpointError` with one line; unknown names
    given explicitly (`arch`, `dataset`, `normalize`) raise `UsageError`.
    """
    import torch

    path = Path(path)
    label = str(path)
    explicit_norm = parse_normalize(normalize) if isinstance(normalize, str) or normalize is None \
        else (tuple(normalize[0]), tuple(normalize[1]))
    if not path.is_file():
        raise CheckpointError(f"cannot read {label}: no such file")
    if arch is not None:  # `name:key=value,...`; arguments given both ways must agree
        from flatcli.models import parse_arch

        arch, parsed = parse_arch(arch)
        clash = {k for k in parsed if k in (arch_kwargs or {}) and arch_kwargs[k] != parsed[k]}
        if clash:
            raise UsageError(f"--arch {arch}: {', '.join(sorted(clash))} given twice, differently")
        arch_kwargs = {**parsed, **(arch_kwargs or {})}
    obj, embedded = read_checkpoint(path, label)
    meta = embedded or read_sidecar(path)
    if meta is not None:
        model, info = _load_own(path, label, obj, meta, arch, explicit_norm, dataset, arch_kwargs)
    else:
        model, info = _load_foreign(path, label, obj, arch, explicit_norm, dataset, arch_kwargs)
    model = model.to(device=device, dtype=torch.float32).eval()
    return model, info


def _load_own(path, label, obj, meta, arch, explicit_norm, dataset, arch_kwargs):
    version = meta.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{label}: written by a newer flatcli (format_version {version})")
    stored_arch = meta.get("arch")
    if not isinstance(stored_arch, str):
        raise CheckpointError(f"{label}: flatcli metadata without an arch")
    if arch is not None and arch != stored_arch:
        raise CheckpointError(f"{label}: saved as arch '{stored_arch}', not '{arch}' (drop --arch)")
    kwargs = dict(meta.get("arch_kwargs") or {})
    from flatcli.models import ARCHITECTURES, arch_defaults

    saved = {**(arch_defaults(stored_arch) if stored_arch in ARCHITECTURES else {}), **kwargs}
    for key, value in (arch_kwargs or {}).items():
        if saved.get(key) != value:
            raise CheckpointError(
                f"{label}: saved with {key}={kwargs.get(key)!r}, not {value!r} (drop the option)"
            )
    stored_dataset = meta.get("dataset")
    num_classes, in_channels = meta.get("num_classes"), meta.get("in_channels")
    if num_classes is None or in_channels is None:
        from flatcli.data import get_spec

        try:
            spec = get_spec(stored_dataset)
        except (UsageError, AttributeError, TypeError):
            raise CheckpointError(
                f"{label}: metadata lacks num_classes and its dataset {stored_dataset!r} is unknown"
            ) from None
        num_classes = spec.num_classes if num_classes is None else num_classes
        in_channels = spec.in_channels if in_channels is None else in_channels
    if dataset is not None and dataset != stored_dataset:
        from flatcli.data import get_spec

        spec = get_spec(dataset)
        if spec.in_channels != in_channels or not _classes_fit(spec, num_classes):
            raise CheckpointError(
                f"{label}: trained on {stored_dataset!r} ({num_classes} classes, {in_channels} "
                f"channel(s)); {dataset!r} has {spec.num_classes} and {spec.in_channels}"
            )
    state, _, _ = unwrap(obj, label)
    if meta.get("mean") is not None and meta.get("std") is not None:
        mean, std = meta["mean"], meta["std"]
    elif "normalize.mean" in state and "normalize.std" in state:
        mean = state["normalize.mean"].flatten().tolist()
        std = state["normalize.std"].flatten().tolist()
    else:
        mean, std = [0.0], [1.0]
    mean = _channels(mean, in_channels, "mean", label)
    std = _channels(std, in_channels, "std", label)
    if explicit_norm is not None:
        want = (_channels(explicit_norm[0], in_channels, "mean", label),
                _channels(explicit_norm[1], in_channels, "std", label))
        if not all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
                   for a, b in zip(want[0] + want[1], mean + std, strict=True)):
            raise CheckpointError(
                f"{label}: saved with its own normalization mean={list(mean)} std={list(std)}; "
                "--normalize disagrees (drop it)"
            )
    model = _build(stored_arch, num_classes, in_channels, mean, std, kwargs, label, own=True)
    fit_state(model, state, label, stored_arch, "")
    epoch = meta.get("epoch")
    if not isinstance(epoch, int):
        epoch = epoch_from_name(path.name)
    info = CheckpointInfo(stored_arch, kwargs, stored_dataset or dataset, mean, std, epoch,
                          FORMAT, dict(meta))
    return model, info


def _classes_fit(spec, num_classes: int) -> bool:
    """A checkpoint's class count serves a dataset: equal, or at least the labels' count when
    the dataset only knows its labels (an npz without `n_classes`)."""
    if spec.classes_from_labels:
        return num_classes >= spec.num_classes
    return num_classes == spec.num_classes


def _load_foreign(path, label, obj, arch, explicit_norm, dataset, arch_kwargs):
    from flatcli.data import get_spec

    zoo = zoos.robustbench_entry(path)
    entry = zoo[1] if zoo else None
    if zoo and entry is None and arch is None:
        raise CheckpointError(
            f"{label}: {zoos.refusal(zoo[0])}; pass --arch if its architecture is one of "
            "flatcli's"
        )
    state, wrapper, extras = unwrap(obj, label)
    kwargs = dict(arch_kwargs or {})
    madrylab = madry.is_madry(state)
    if madrylab:
        arch, kwargs = _madry_arch(state, label, arch, kwargs)
    defaulted = dataset is None and zoo is None
    if dataset is None and zoo is not None:
        dataset = zoo[0].split(":")[1].split("/")[0]
    dataset = dataset or DEFAULT_FOREIGN_DATASET
    spec = get_spec(dataset)
    if entry is not None and arch is None:
        arch, kwargs = entry.arch, {**entry.kwargs, **kwargs}
    arch = arch or spec.default_arch
    found = pop_normalization(state)
    if explicit_norm is not None:
        mean, std, source = explicit_norm[0], explicit_norm[1], "--normalize"
    elif found is not None:
        mean, std, source = found[0], found[1], f"file ({found[2]})"
    elif entry is not None:
        mean, std = parse_normalize(entry.normalize)
        source = f"{zoo[0]} (RobustBench's code: {entry.normalize})"
    else:
        mean, std, source = (0.0,), (1.0,), IDENTITY_DEFAULT
    mean = _channels(mean, spec.in_channels, "mean", label)
    std = _channels(std, spec.in_channels, "std", label)
    if any(s <= 0 or not math.isfinite(s) for s in std):
        raise CheckpointError(f"{label}: normalization std must be positive, got {list(std)}")
    num_classes = spec.num_classes
    if spec.classes_from_labels:  # labels give a lower bound; the model's own head decides
        num_classes = max(classifier_width(state) or 0, spec.num_classes)
    model = _build(arch, num_classes, spec.in_channels, mean, std, kwargs, label, own=False)
    hint = (f" (num_classes {spec.num_classes} and {spec.in_channels} channel(s) of default "
            f"dataset '{dataset}'; pass --dataset)") if defaulted else ""
    fit = fit_state(model, state, label, arch, hint)
    epoch = epoch_from_name(path.name)
    stored_epoch = extras.get("epoch")
    if epoch is None and isinstance(stored_epoch, int) and not isinstance(stored_epoch, bool):
        epoch = stored_epoch
    meta = {"wrapper": wrapper, **fit, "normalization": source, "extras": extras,
            "zoo": zoo[0] if zoo else ("madrylab-robustness" if madrylab else None)}
    return model, CheckpointInfo(arch, kwargs, dataset, mean, std, epoch, "foreign", meta)


def _madry_arch(state: dict, label: str, arch: str | None, kwargs: dict) -> tuple:
    """The arch and kwargs of a MadryLab `robustness` state (its attacker copy dropped): its
    ResNet-18 at the width its weights have; any other network refused by name."""
    madry.drop_attacker(state)
    found, width = madry.architecture(state)
    if found == madry.BUILT:
        if arch is None:
            arch = "resnet18"
            kwargs = {**({"width": width} if width != 64 else {}), **kwargs}
        return arch, kwargs
    if arch is not None and width is None:
        return arch, kwargs  # not one of its CIFAR ResNets: the user's --arch decides
    raise CheckpointError(
        f"{label}: {found} (MadryLab robustness): flatcli builds resnet18 (its "
        f"{madry.BUILT}) from this format, not {found}"
    )


IDENTITY_DEFAULT = "identity (default)"
# Datasets whose usual checkpoints normalize their inputs outside the model.
NORMALIZED_ELSEWHERE = ("cifar10", "cifar100", "svhn")


def normalization_name(mean: Sequence[float], std: Sequence[float]) -> str:
    """The normalization a model applies, as `--normalize` spells it: none, a dataset's name,
    or MEAN,STD values."""
    if all(m == 0 for m in mean) and all(s == 1 for s in std):
        return "none"
    from flatcli.data import DATASETS, get_spec

    for name in DATASETS:
        spec = get_spec(name)
        if len(spec.mean) == len(mean) and all(
            math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)
            for a, b in zip(tuple(spec.mean) + tuple(spec.std), tuple(mean) + tuple(std),
                            strict=True)
        ) and not (all(m == 0 for m in spec.mean) and all(s == 1 for s in spec.std)):
            return name
    if len(set(mean)) == 1 and len(set(std)) == 1:
        return f"{mean[0]:g},{std[0]:g}"
    return ",".join(f"{v:g}" for v in tuple(mean) + tuple(std))


def model_normalization(model: Classifier) -> str:
    """`normalization_name` of a `Classifier`'s own normalization."""
    normalize = model.normalize
    return normalization_name(normalize.mean.flatten().tolist(), normalize.std.flatten().tolist())


def normalization_warning(info: CheckpointInfo, label: str) -> str | None:
    """One line when a foreign file gave no normalization and none was asked for, on a dataset
    whose checkpoints usually normalize outside the model; None otherwise."""
    if info.format != "foreign" or info.meta.get("normalization") != IDENTITY_DEFAULT:
        return None
    if info.dataset not in NORMALIZED_ELSEWHERE:
        return None
    return (f"{label}: no input normalization in the file; evaluated without one (state it: "
            f"--normalize {info.dataset} or --normalize none)")
