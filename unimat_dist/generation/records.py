"""Generated structures as data: CIF text or a JSON-able dict, with validity flags and their summary.

Flags of one generated crystal (``None`` where a test does not apply):

* ``decoded``: the model's output decoded to at least one atom;
* ``structure_valid``: CDVAE's structural validity, every interatomic distance >= 0.5 A and volume >= 0.1 A^3;
* ``composition_valid``: CDVAE's SMACT charge-neutrality / electronegativity test (``None`` without smact);
* ``matches_request``: with a composition request, the crystal has exactly the requested counts
  (exact counts) or exactly the requested element set (element types); ``None`` for unconditional requests.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from unimat_dist.representation.conditioning import parse_composition

FLAGS = ("decoded", "structure_valid", "composition_valid", "matches_request")


def element_counts(structure) -> dict[str, int]:
    """{symbol: number of atoms} of a structure's cell."""
    return {str(e): int(round(n)) for e, n in structure.composition.get_el_amt_dict().items()}


def matches_request(structure, composition, exact_counts: bool) -> bool | None:
    """Whether a decoded structure satisfies a composition request (``None`` for no composition)."""
    if composition is None:
        return None
    if structure is None:
        return False
    wanted = parse_composition(composition)
    got = element_counts(structure)
    if exact_counts:
        return got == {el: int(round(n)) for el, n in wanted.items()}
    return set(got) == set(wanted)


MAX_OXIDATION_COMBINATIONS = 100_000
"""SMACT's test enumerates one oxidation state per element: the product of the elements' state counts.
An undertrained model can emit crystals of 30 elements (~10^14 combinations, hours of CPU), so above
this budget the flag is ``None`` (not evaluated) instead of blocking the service."""


def composition_valid(structure) -> bool | None:
    """CDVAE's SMACT validity of a structure's composition; ``None`` when smact is not installed or the
    test would enumerate more than ``MAX_OXIDATION_COMBINATIONS`` oxidation-state assignments."""
    try:
        import smact  # noqa: F401

        from unimat_dist.evaluation.validity import composition_counts, oxidation_combinations, smact_validity
    except ImportError:
        return None
    symbols, counts = composition_counts([site.specie.symbol for site in structure])
    if oxidation_combinations(symbols, "smact14", stop_above=MAX_OXIDATION_COMBINATIONS) > MAX_OXIDATION_COMBINATIONS:
        return None
    return bool(smact_validity(symbols, counts))


def validity_flags(structure, composition=None, exact_counts: bool = True) -> dict[str, bool | None]:
    """The four flags of one generated crystal (see the module docstring)."""
    if structure is None:
        return {"decoded": False, "structure_valid": False, "composition_valid": False,
                "matches_request": matches_request(None, composition, exact_counts)}
    from unimat_dist.evaluation.validity import structure_validity

    return {
        "decoded": True,
        "structure_valid": structure_validity(structure),
        "composition_valid": composition_valid(structure),
        "matches_request": matches_request(structure, composition, exact_counts),
    }


def summarize_flags(flags: Iterable[Mapping[str, bool | None]]) -> dict[str, Any]:
    """Counts and rates of each flag over a set of crystals; a rate counts only crystals where the flag
    applies (``matches_request`` of unconditional requests is skipped)."""
    flags = list(flags)
    out: dict[str, Any] = {"count": len(flags)}
    for name in FLAGS:
        applicable = [f[name] for f in flags if f.get(name) is not None]
        out[name] = sum(bool(v) for v in applicable)
        out[f"{name}_rate"] = out[name] / len(applicable) if applicable else None
    out["valid"] = sum(bool(f["structure_valid"]) and f.get("composition_valid") is not False for f in flags)
    out["valid_rate"] = out["valid"] / len(flags) if flags else None
    return out


def structure_to_cif(structure, block_name: str | None = None) -> str:
    """CIF text (P1, pymatgen's writer); ``block_name`` replaces the ``data_`` line (one block per crystal
    lets many crystals share one CIF file)."""
    from unimat_dist.crystal_files import p1_cif

    text = p1_cif(structure)
    if block_name is not None:
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if line.startswith("data_"):
                lines[i] = f"data_{_cif_safe(block_name)}"
                break
        text = "\n".join(lines)
    return text


def _cif_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name)


def structure_to_json(structure) -> dict[str, Any]:
    """A JSON-able crystal: lattice (matrix in A, lengths, angles in degrees, volume in A^3), species,
    fractional and Cartesian coordinates."""
    lat = structure.lattice
    return {
        "lattice": {
            "matrix": [[float(x) for x in row] for row in lat.matrix],
            "a": float(lat.a), "b": float(lat.b), "c": float(lat.c),
            "alpha": float(lat.alpha), "beta": float(lat.beta), "gamma": float(lat.gamma),
            "volume": float(lat.volume),
        },
        "species": [site.specie.symbol for site in structure],
        "frac_coords": [[float(x) for x in site.frac_coords] for site in structure],
        "cart_coords": [[float(x) for x in site.coords] for site in structure],
    }
