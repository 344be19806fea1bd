"""A run directory (`run.json`, checkpoints, `train_log/`, the resume state
`trainer_state.pt`, read with `weights_only=True`): creating, validating, resuming, extending."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from pathlib import Path

import torch

from flatcli import __version__, data, runtime, tables
from flatcli.config.commands import TrainConfig, hashed_fields
from flatcli.errors import UsageError
from flatcli.files import atomic_write, atomic_write_text, ensure_writable
from flatcli.training.config import config_dict

RUN_FILE = "run.json"
STATE_FILE = "trainer_state.pt"
LOG_TABLE = "train_log"
RUN_FORMAT = "flatcli-run"
STATE_FORMAT = "flatcli-trainer-state"


def write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_run(run_dir: str | os.PathLike) -> dict:
    """A run directory's `run.json` (for the report and other commands)."""
    return json.loads((Path(run_dir) / RUN_FILE).read_text(encoding="utf-8"))


def _ours(path: Path) -> bool:
    name = path.name
    return name in (RUN_FILE, STATE_FILE, LOG_TABLE) or (
        name.startswith("epoch_") and name.endswith((".safetensors", ".json"))
    )


def _clear(run_dir: Path) -> None:
    """Remove the files a previous run wrote (and only those)."""
    for path in run_dir.iterdir():
        if not _ours(path):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _differences(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return ", ".join(diffs[:4]) + (", ..." if len(diffs) > 4 else "")


def _hashed(config: TrainConfig) -> dict:
    return {k: v for k, v in config_dict(config).items() if k in hashed_fields(config)}


def extension_refusal(old: dict, config: TrainConfig) -> str | None:
    """Why the run with resolved config `old` (a dict) cannot be extended to `config`, or None
    when it can: everything else equal, more epochs, and a schedule whose learning rate over the
    epochs already trained does not depend on `epochs` (multistep; its milestones unmoved)."""
    new = _hashed(config)
    if not isinstance(old.get("epochs"), int) or new["epochs"] <= old["epochs"]:
        return "not more epochs"
    others = {k: v for k, v in old.items() if k in new and k != "epochs"}
    moved = _differences(others, {k: v for k, v in new.items() if k in others})
    if config.schedule != "multistep" and old.get("schedule") == config.schedule:
        return (
            f"the {config.schedule} schedule depends on --epochs: the learning rate of the "
            "epochs already trained would change"
        )
    if old.get("milestones") != new["milestones"] and moved.count("->") == 1:
        return (
            f"the milestones (fractions of --epochs) would move from {old.get('milestones')} to "
            f"{new['milestones']}; pass them as epochs (--milestones "
            f"{','.join(str(m) for m in old.get('milestones') or [])}) to extend"
        )
    return None if not moved else f"other settings differ too ({moved})"


def prepare(run_dir: Path, config: TrainConfig, chash: str, force: bool) -> dict | None:
    """Create/validate the run directory: same config -> resume; the same run with more epochs
    -> extend it (returns {"from_epochs", "from_config_hash"}); another config -> refuse, saying
    why (or, with `force`, discard the old run's files and start over)."""
    ensure_writable(run_dir)
    run_file = run_dir / RUN_FILE
    if not run_file.exists():
        others = [p.name for p in run_dir.iterdir() if not p.name.startswith(".")]
        if others and not force:
            raise UsageError(
                f"--out {run_dir} is not empty and holds no flatcli run (no run.json); use a new "
                "directory, or --force to train into it anyway"
            )
        if force:
            _clear(run_dir)
        return None
    try:
        old = json.loads(run_file.read_text(encoding="utf-8"))
        old_hash = old.get("config_hash")
    except (OSError, ValueError, AttributeError):
        old, old_hash = {}, None
    if force:
        _clear(run_dir)
        return None
    if old_hash == chash:
        return None
    old_cfg = old.get("config") if isinstance(old.get("config"), dict) else {}
    new_cfg = _hashed(config)
    old_cfg = {k: v for k, v in old_cfg.items() if k in new_cfg}
    refusal = extension_refusal(old_cfg, config) if old_cfg else "unreadable run.json"
    if refusal is None:
        _extend(run_dir, old, chash, config)
        return {"from_epochs": old_cfg["epochs"], "from_config_hash": old_hash}
    more = old_cfg.get("epochs") is not None and new_cfg["epochs"] > old_cfg["epochs"]
    why = f"; cannot extend it to {new_cfg['epochs']} epochs: {refusal}" if more else ""
    raise UsageError(
        f"{run_dir} holds a run with another configuration "
        f"({_differences(old_cfg, new_cfg) or 'unreadable run.json'}){why}; "
        "use another --out, or --force to discard it and start over"
    )


def _extend(run_dir: Path, old: dict, chash: str, config: TrainConfig) -> None:
    """Carry a run over to its extended config: its log rows, resume state and run.json take
    the new hash (the epochs trained are those the extended run would train)."""
    old_hash = old["config_hash"]
    for epoch in range(1, int(old.get("epochs_done") or 0) + 1):
        key = log_key(old.get("run") or run_dir.resolve().name, epoch)
        if tables.is_done(run_dir, LOG_TABLE, key, old_hash):
            rows = tables.read_part(run_dir, LOG_TABLE, key, old_hash)
            rows = [{**r, "config_hash": chash} for r in rows]
            tables.write_part(run_dir, LOG_TABLE, key, chash, rows)
            tables.part_path(run_dir, LOG_TABLE, key, old_hash).unlink()
    state_path = run_dir / STATE_FILE
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state.get("config_hash") == old_hash:
            state["config_hash"] = chash
            atomic_write(state_path, lambda tmp: torch.save(state, tmp))
    extensions = [
        *old.get("extensions", []),
        {
            "from_epochs": old["config"]["epochs"],
            "to_epochs": config.epochs,
            "from_config_hash": old_hash,
        },
    ]
    write_json(
        run_dir / RUN_FILE,
        {**old, "config": config_dict(config), "config_hash": chash, "extensions": extensions},
    )


def log_key(run_name: str, epoch: int) -> str:
    from flatcli import checkpoints

    return checkpoints.safe_name(f"{run_name}__e{epoch:04d}")


def save_state(run_dir: Path, chash: str, epoch: int, net, optimizer, best, world: int) -> None:
    """The resume point, written last in every epoch (atomically)."""
    state = {
        "format": STATE_FORMAT,
        "version": 1,
        "config_hash": chash,
        "epoch": epoch,
        "model": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "best": best or {},
        "world_size": world,
    }
    atomic_write(run_dir / STATE_FILE, lambda tmp: torch.save(state, tmp))


def load_state(run_dir: Path, chash: str, net, optimizer) -> tuple[int, dict | None]:
    """(epochs done, best so far) from the resume point, restoring model and optimizer; (0,
    None) for a fresh run."""
    path = run_dir / STATE_FILE
    if not path.exists():
        return 0, None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != STATE_FORMAT or state.get("config_hash") != chash:
        raise UsageError(f"{path}: resume state of another configuration; use --force")
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"]), (dict(state["best"]) if state.get("best") else None)


def previous_run(run_dir: Path, chash: str) -> dict:
    """The run.json this run continues (same hash), else {}."""
    try:
        old = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) and old.get("config_hash") == chash else {}


def write_run_json(
    run_dir: Path, config: TrainConfig, chash: str, state: dict, resumed_at: int | None
) -> None:
    """run.json: `state` (run, status, message, arch_kwargs, epochs_done, best, world_size,
    device), the resolved config, the model description, versions and the run's history."""
    old = previous_run(run_dir, chash)
    now = runtime.now_iso()
    spec = data.get_spec(config.dataset)
    resumes = list(old.get("resumes", []))
    if resumed_at:
        resumes.append({"epoch": resumed_at, "at": now})
    payload = {
        "format": RUN_FORMAT,
        "format_version": 1,
        **state,
        "config": config_dict(config),
        "config_hash": chash,
        "dataset": config.dataset,
        "arch": config.arch,
        "num_classes": spec.num_classes,
        "in_channels": spec.in_channels,
        "image_size": spec.image_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "seed": config.seed,
        "epochs": config.epochs,
        "flatcli_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "command": sys.argv,
        "started_at": old.get("started_at", now),
        "updated_at": now,
        "finished_at": now if state.get("status") == "done" else None,
        "resumes": resumes,
        "extensions": old.get("extensions", []),
    }
    write_json(run_dir / RUN_FILE, payload)
