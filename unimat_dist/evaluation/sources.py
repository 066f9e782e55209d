"""Resolve the ``--generated`` / ``--reference`` / ``--train`` arguments: a path, or a bundled data set
split written ``NAME:SPLIT`` (e.g. ``perov_5:test``), with the issue's spellings (mp20, perov5,
carbon24) accepted as aliases of the registry names."""
from __future__ import annotations

from pathlib import Path

REGISTRY_NAMES = {
    "mp20": "mp_20", "mp_20": "mp_20", "mp-20": "mp_20", "mp_20_subset": "mp_20_subset",
    "perov5": "perov_5", "perov_5": "perov_5", "perov-5": "perov_5",
    "carbon24": "carbon_24", "carbon_24": "carbon_24", "carbon-24": "carbon_24",
    "mpts_52": "mpts_52", "mpts52": "mpts_52",
}


def registry_name(dataset: str) -> str:
    try:
        return REGISTRY_NAMES[dataset.lower()]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(REGISTRY_NAMES)}") from None


def resolve_source(spec: str | Path) -> tuple[Path, str]:
    """(path, provenance note) for a path or ``NAME:SPLIT``. A path that exists wins over the spec form."""
    p = Path(spec)
    if p.exists():
        return p, f"{p}"
    text = str(spec)
    if ":" in text:
        from unimat_dist.datasets import resolve_split

        name, split = text.split(":", 1)
        r = resolve_split(registry_name(name), split)
        return r.path, r.note
    raise FileNotFoundError(f"{spec}: neither an existing path nor a NAME:SPLIT data set spec (e.g. perov_5:test)")


def default_train_source(dataset: str) -> tuple[Path, str] | None:
    """The data set's training split (official if downloaded, else the documented stand-in), or None."""
    from unimat_dist.datasets import resolve_split

    try:
        r = resolve_split(registry_name(dataset), "train")
    except FileNotFoundError:
        return None
    return r.path, r.note
