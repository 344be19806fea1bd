"""Checkpoints: finding them (discover, names), their identity (identity: a digest of the
tensors), reading them without running code (safe_load), fitting foreign state dicts
(state_dict, zoos, madry), flatcli's own format (format) and `load_model` (load). Importing this
package does not import torch. Design: docs/method.md, "Implementation notes"."""

from flatcli.checkpoints.discover import (
    CHECKPOINT_PATTERNS,
    DIGEST_CHARS,
    CheckpointRef,
    content_digest,
    discover,
    ref_of,
)
from flatcli.checkpoints.format import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointInfo,
    read_sidecar,
    save_checkpoint,
    sidecar_path,
)
from flatcli.checkpoints.identity import state_digest, tensor_digest
from flatcli.checkpoints.load import (
    DEFAULT_FOREIGN_DATASET,
    load_model,
    model_normalization,
    normalization_name,
    normalization_warning,
    parse_normalize,
)
from flatcli.checkpoints.names import checkpoint_name, checkpoint_stem, epoch_from_name, safe_name
from flatcli.checkpoints.state_dict import NORMALIZATION_KEYS, PREFIXES, WRAPPER_KEYS

__all__ = [
    "CHECKPOINT_PATTERNS",
    "DEFAULT_FOREIGN_DATASET",
    "DIGEST_CHARS",
    "FORMAT",
    "FORMAT_VERSION",
    "NORMALIZATION_KEYS",
    "PREFIXES",
    "WRAPPER_KEYS",
    "CheckpointInfo",
    "CheckpointRef",
    "checkpoint_name",
    "checkpoint_stem",
    "content_digest",
    "discover",
    "epoch_from_name",
    "load_model",
    "model_normalization",
    "normalization_name",
    "normalization_warning",
    "parse_normalize",
    "read_sidecar",
    "ref_of",
    "safe_name",
    "save_checkpoint",
    "sidecar_path",
    "state_digest",
    "tensor_digest",
]
