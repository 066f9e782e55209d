"""Shard files of a batch job: the decoded crystals of one work unit in one CIF or extxyz file.

* ``cif``: CIF blocks one after another, block ``data_<request id>__<sample index>`` (characters other
  than letters, digits and ``-_.+`` become ``_``); ``pymatgen.io.cif.CifParser`` reads them all.
* ``extxyz``: one frame per crystal, ``info`` holding ``request_id``, ``sample`` and the crystal's facts
  (every key of ``unimat_dist.crystal_facts.FACT_KEYS``, validity flags included; ``None`` as ``"none"``,
  ``elements`` as a JSON list string: ``unimat_dist.crystal_files.facts_from_info`` reads them back).

Crystals that did not decode are not in a shard; the unit's commit record lists every sample.
"""
from __future__ import annotations

import io
from typing import Iterable, Iterator

SUFFIX = {"cif": ".cif", "extxyz": ".extxyz"}


def shard_bytes(items: Iterable[tuple[str, int, object, dict]], fmt: str) -> tuple[bytes, int]:
    """(file bytes, crystals written) for ``(request_id, sample, structure, facts)`` items (None skipped);
    ``facts``: ``crystal_facts`` of the structure (or just its validity flags)."""
    items = [(rid, k, s, f) for rid, k, s, f in items if s is not None]
    if fmt == "cif":
        from unimat_dist.generation.records import structure_to_cif

        text = "".join(structure_to_cif(s, f"{rid}__{k}").rstrip("\n") + "\n\n" for rid, k, s, _ in items)
        return text.encode(), len(items)
    if fmt == "extxyz":
        from unimat_dist.crystal_files import extxyz_text

        frames = [(s, {"request_id": rid, "sample": int(k), **facts}) for rid, k, s, facts in items]
        return extxyz_text(frames).encode(), len(items)
    raise ValueError(f"output.format must be 'cif' or 'extxyz', got {fmt!r}")


def read_shard(data: bytes, fmt: str) -> Iterator:
    """The crystals of a shard, in file order (pymatgen structures)."""
    text = data.decode()
    if fmt == "cif":
        import re
        import warnings

        from pymatgen.io.cif import CifParser

        for block in re.split(r"\n(?=data_)", text):
            if "data_" not in block:
                continue
            name = block[block.index("data_"):].split("\n", 1)[0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    yield CifParser.from_str(block).parse_structures(primitive=False, on_error="raise")[0]
                except Exception as exc:  # pymatgen raises several types for CIFs it refuses
                    raise ValueError(f"CIF block {name}: pymatgen cannot parse it ({exc})") from None
        return
    if fmt == "extxyz":
        from ase.io import read
        from pymatgen.io.ase import AseAtomsAdaptor

        for atoms in read(io.StringIO(text), index=":", format="extxyz"):
            yield AseAtomsAdaptor.get_structure(atoms)
        return
    raise ValueError(f"unknown shard format {fmt!r}")
