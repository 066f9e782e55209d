"""What the committed fixtures contain (kept next to the tests that rely on it)."""
from __future__ import annotations

# tests/fixtures/gnome_mini (see tests/fixtures/make_gnome_mini.py), ingested with L=20
GNOME_MINI_GOOD = 14
GNOME_MINI_BAD = {
    "disordered": 1,
    "missing_structure": 1,
    "overlapping_atoms": 1,
    "parse_error": 1,
    "too_many_atoms_per_element": 1,
    "unknown_element": 1,
}
