"""Benchmark data sets: registry of bundled/downloadable splits and streaming CSV readers."""
from .cdvae_csv import CifRecord, count_rows, iter_cdvae_csv, open_text
from .parse import structure_from_cif, structures_from_csv
from .registry import DATASETS, DatasetInfo, ResolvedSplit, cache_dir, get_info, repo_data_dir, resolve_split, spec_for_dataset

__all__ = [
    "DATASETS",
    "CifRecord",
    "DatasetInfo",
    "ResolvedSplit",
    "cache_dir",
    "count_rows",
    "get_info",
    "spec_for_dataset",
    "iter_cdvae_csv",
    "open_text",
    "repo_data_dir",
    "resolve_split",
    "structure_from_cif",
    "structures_from_csv",
]
