"""Why a record was rejected, and the quarantine file format.

Every record that cannot become a sample raises ``Rejected(reason, message)`` somewhere between
reading and encoding; the unit worker catches it, writes one JSON line to
``OUTPUT/quarantine/u<unit>.jsonl`` and carries on:

    {"id": ..., "source": "<file>:row <n>" | "<archive>:<member>", "reason": "<code>", "message": ...,
     "unit": <n>, "payload": "<raw text, when it is text and at most 64 kB>"}
"""
from __future__ import annotations

REASONS: dict[str, str] = {
    "parse_error": "the record could not be parsed (malformed CIF/POSCAR/extxyz, unreadable file)",
    "disordered": "partial occupancy or mixed sites; UniMat represents ordered crystals only",
    "unknown_element": "a site holds a symbol that is not a chemical element",
    "element_outside_spec": "an element outside the spec's chemical system (spec.elements)",
    "too_many_atoms_per_element": "more atoms of one element than max_atoms_per_element (L)",
    "too_many_atoms": "more atoms than validate.max_atoms",
    "invalid_lattice": "non-finite, non-positive or degenerate cell",
    "invalid_coordinates": "non-finite atomic coordinates",
    "overlapping_atoms": "two atoms (or an atom and its periodic image) closer than validate.min_distance",
    "empty_structure": "a structure without atoms",
    "not_periodic": "no 3D periodic cell (e.g. a molecule in an extxyz file)",
    "missing_structure": "listed in the summary CSV but absent from the CIF archive",
    "unsupported_file": "a file in a structure folder whose format is not recognised",
    "lattice_out_of_range": "lattice lengths, angles or volume per atom outside validate's physical ranges",
    "too_large": "a file, archive member or CSV row larger than validate.max_record_bytes (decompressed)",
    "unsafe_path": "an archive member name with '..', an absolute path or a drive (never read)",
    "duplicate_id": "a record id seen earlier in the source; the first occurrence is the one kept",
    "encode_error": "the UniMat encoder rejected the structure for another reason",
}

PAYLOAD_LIMIT = 64 * 1024


class Rejected(Exception):
    """A record that cannot become a sample: ``reason`` is a key of ``REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def quarantine_entry(record_id: str, source: str, rejected: Rejected, unit: int, payload: str | None) -> dict:
    entry = {"id": record_id, "source": source, "reason": rejected.reason, "message": rejected.message, "unit": unit}
    if payload is not None and len(payload) <= PAYLOAD_LIMIT:
        entry["payload"] = payload
    return entry
