"""Datasets: the registry of specs (registry), the readers of files on disk (readers), and the
splits as [0, 1] NCHW float tensors (splits). docs/data.md says where each dataset's files lie."""

from flatcli.data.registry import DATASETS, DatasetSpec, check_eps, data_dir, get_spec, register
from flatcli.data.splits import (
    SPLITS,
    as_float_nchw,
    check_examples,
    default_n_examples,
    load_split,
    split_size,
)

__all__ = [
    "DATASETS",
    "SPLITS",
    "DatasetSpec",
    "as_float_nchw",
    "check_eps",
    "check_examples",
    "data_dir",
    "default_n_examples",
    "get_spec",
    "load_split",
    "register",
    "split_size",
]
