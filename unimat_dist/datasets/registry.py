"""Known benchmark data sets: where the bundled copies live, where the official ones come from.

Bundled (in the repository's ``data/``, gzip-compressed CSVs, see ``data/README.md``):
    perov_5      val + test (official, byte-identical to upstream; train not bundled)
    carbon_24    val + test (official; train not bundled)
    mp_20_subset train/val/test, a small subset of MP-20 - never report benchmark numbers on it
Downloadable with ``unimat data download NAME`` (into ``$UNIMAT_CACHE/data/NAME``, default
``~/.cache/unimat/data/NAME``): mp_20, perov_5, carbon_24, mpts_52, full official splits.

``resolve_split(name, split)`` picks the downloaded official file when present, else the bundled one,
and says when a bundled file stands in for a missing official split (the departure is logged and
returned so that reports can state it).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    id_column: str
    property_columns: tuple[str, ...]
    max_atoms_per_element: int  # L needed by the official data set
    elements: tuple[str, ...] | None  # reduced chemical system, None for the full table
    official_sizes: dict[str, int] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    md5: dict[str, str] = field(default_factory=dict)  # of the uncompressed official CSVs, where known
    bundled_dir: str | None = None
    bundled_splits: tuple[str, ...] = ()
    stands_in_for: str | None = None  # a subset bundled in place of this official set


_CDVAE = "https://raw.githubusercontent.com/txie-93/cdvae/main/data"
_DIFFCSP = "https://raw.githubusercontent.com/jiaor17/DiffCSP/main/data"

DATASETS: dict[str, DatasetInfo] = {
    "perov_5": DatasetInfo(
        name="perov_5",
        description="Perov-5: 18,928 ABX3 perovskites, 5 atoms per cell (Castelli et al. 2012; CDVAE splits)",
        id_column="material_id",
        property_columns=("heat_ref", "heat_all", "dir_gap", "ind_gap"),
        max_atoms_per_element=3,
        elements=None,
        official_sizes={"train": 11356, "val": 3787, "test": 3785},
        urls={s: f"{_CDVAE}/perov_5/{s}.csv" for s in SPLITS},
        md5={"val": "28dc715a32147ff2fb2924f952b2999f", "test": "47dde4063d87b97a839f2bb9a08fad6b"},
        bundled_dir="perov_5",
        bundled_splits=("val", "test"),
    ),
    "carbon_24": DatasetInfo(
        name="carbon_24",
        description="Carbon-24: 10,153 carbon allotropes with 6-24 atoms (AIRSS at 10 GPa; CDVAE splits)",
        id_column="material_id",
        property_columns=("energy_per_atom",),
        max_atoms_per_element=24,
        elements=("C",),
        official_sizes={"train": 6091, "val": 2032, "test": 2030},
        urls={s: f"{_CDVAE}/carbon_24/{s}.csv" for s in SPLITS},
        md5={"val": "944b7e04459a5f73b960b66eadb31a5e", "test": "464aac3baff8ac96ddfabb47bfacdba2"},
        bundled_dir="carbon_24",
        bundled_splits=("val", "test"),
    ),
    "mp_20": DatasetInfo(
        name="mp_20",
        description="MP-20: 45,231 Materials Project crystals with <= 20 atoms (CDVAE splits)",
        id_column="material_id",
        property_columns=("formation_energy_per_atom", "band_gap", "e_above_hull"),
        max_atoms_per_element=20,
        elements=None,
        official_sizes={"train": 27136, "val": 9047, "test": 9046},
        urls={s: f"{_CDVAE}/mp_20/{s}.csv" for s in SPLITS},
    ),
    "mp_20_subset": DatasetInfo(
        name="mp_20_subset",
        description="MP-20 subset: 847/123/142 rows drawn from the official MP-20 splits (fixtures, smoke runs)",
        id_column="material_id",
        property_columns=("formation_energy_per_atom", "band_gap", "e_above_hull"),
        max_atoms_per_element=20,
        elements=None,
        official_sizes={"train": 847, "val": 123, "test": 142},
        md5={
            "train": "b262f6804c75fd9e106e9bd8a2e18915",
            "val": "3bff767e41df1640a4700902f9cb7fc2",
            "test": "0fffb2332814624286b341ddb58b32eb",
        },
        bundled_dir="mp_20_subset",
        bundled_splits=SPLITS,
        stands_in_for="mp_20",
    ),
    "mpts_52": DatasetInfo(
        name="mpts_52",
        description="MPTS-52: Materials Project time split, <= 52 atoms per cell (DiffCSP)",
        id_column="material_id",
        property_columns=("formation_energy_per_atom", "band_gap", "e_above_hull"),
        max_atoms_per_element=52,
        elements=None,
        official_sizes={"train": 27380, "val": 5000, "test": 8096},
        urls={s: f"{_DIFFCSP}/mpts_52/{s}.csv" for s in SPLITS},
    ),
}


def repo_data_dir() -> Path:
    """The bundled data folder: ``$UNIMAT_DATA_DIR``, else the repository's ``data/`` (its copy in a wheel
    install: ``unimat_dist/_bundled/data``)."""
    env = os.environ.get("UNIMAT_DATA_DIR")
    if env:
        return Path(env)
    from unimat_dist.bundled import bundled_dir

    return bundled_dir("data")


def cache_dir() -> Path:
    """Where downloads go: ``$UNIMAT_CACHE/data`` (default ``~/.cache/unimat/data``)."""
    return Path(os.environ.get("UNIMAT_CACHE", Path.home() / ".cache" / "unimat")) / "data"


def get_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None


def spec_for_dataset(dataset: str | None, *, max_atoms_per_element: int | None = None,
                     elements=None, coords: str = "fractional"):
    """The UniMat spec of a data set: its L and chemical system (``DATASETS``), each replaced by the value
    given; without a data set, L must be given (training runs and ingestion jobs both resolve here)."""
    from unimat_dist.representation import UniMatSpec

    if dataset:
        info = get_info(dataset)
        max_atoms_per_element = max_atoms_per_element if max_atoms_per_element is not None else info.max_atoms_per_element
        elements = elements if elements is not None else (list(info.elements) if info.elements else None)
    if max_atoms_per_element is None:
        raise ValueError("spec.max_atoms_per_element (L) is required (--max-atoms-per-element)")
    return UniMatSpec(max_atoms_per_element=max_atoms_per_element, coords=coords,
                      elements=tuple(elements) if elements else None)


def bundled_path(name: str, split: str) -> Path | None:
    info = get_info(name)
    if info.bundled_dir is None or split not in info.bundled_splits:
        return None
    for suffix in (".csv.gz", ".csv"):
        p = repo_data_dir() / info.bundled_dir / f"{split}{suffix}"
        if p.exists():
            return p
    return None


def downloaded_path(name: str, split: str) -> Path | None:
    p = cache_dir() / name / f"{split}.csv"
    return p if p.exists() else None


@dataclass(frozen=True)
class ResolvedSplit:
    path: Path
    official: bool  # True when this is the official split of the named data set
    note: str  # human-readable provenance, including any departure from the official protocol


# When an official training split is missing, these bundled splits stand in (documented departure).
_SUBSTITUTES = {"train": "val", "val": "test"}


def resolve_split(name: str, split: str, allow_substitute: bool = True) -> ResolvedSplit:
    """Path of ``split`` of data set ``name``: downloaded official > bundled > documented substitute."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    info = get_info(name)
    p = downloaded_path(name, split)
    if p is not None:
        return ResolvedSplit(p, True, f"{name}/{split}: official split downloaded to {p}")
    p = bundled_path(name, split)
    if p is not None:
        official = info.stands_in_for is None
        note = f"{name}/{split}: bundled {'official split' if official else 'subset'} {p}"
        return ResolvedSplit(p, official, note)
    # mp_20 without a download: the bundled subset stands in.
    for sub_name, sub in DATASETS.items():
        if sub.stands_in_for == name and bundled_path(sub_name, split) is not None:
            note = (
                f"{name}/{split}: official split not downloaded; using the bundled {sub_name} subset "
                f"(run `unimat data download {name}` for the official protocol)"
            )
            log.warning(note)
            return ResolvedSplit(bundled_path(sub_name, split), False, note)  # type: ignore[arg-type]
    if allow_substitute and split in _SUBSTITUTES:
        alt = _SUBSTITUTES[split]
        p = bundled_path(name, alt)
        if p is not None:
            note = (
                f"{name}/{split}: official split not available here; the bundled official '{alt}' split "
                f"stands in (departure from the official protocol; `unimat data download {name}` fixes it)"
            )
            log.warning(note)
            return ResolvedSplit(p, False, note)
    raise FileNotFoundError(
        f"{name}/{split} is neither downloaded nor bundled; run `unimat data download {name}` (needs internet)"
    )
