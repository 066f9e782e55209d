"""Evaluation of generated crystals. Depends on pymatgen structures only, never on the model.

Python API (each returns flat dicts of metrics; see docs/evaluation.md):

    evaluate_proxy(generated, reference, dataset, **kw) -> dict        CDVAE proxy metrics
    proxy_evaluation(...) -> ProxyResult                               same, with per-crystal data
    evaluate_energy(generated, steps=200, fmax=0.1, ...) -> EnergyResult   CHGNet relax, E_f, E_hull, S.U.N.
    compare_sets(records_a, records_b, key="formula") -> dict          Delta E_f, E_f reduction rate
    evaluate_csp(generated, reference, ks=(1, 20)) -> dict             CSP match rate / RMSE
    generate_random_structures(compositions, n_per_composition) -> records   AIRSS-like baseline
    smact_validity / structure_validity                                the validity tests
    ReferenceHull.from_mp20() / formation_energy_per_atom               hull and formation energies
"""
from .airss import generate_random_structures
from .csp import evaluate_csp
from .energy import EnergyResult, dft_records, evaluate_energy, load_energy_records, summarize_records
from .energy_metrics import compare_sets, convergence_rate, stability_counts, sun_rate
from .hull import ReferenceHull, formation_energy_per_atom
from .proxy import ProxyResult, evaluate_proxy, proxy_evaluation
from .structures_io import StructureRecord, load_structures
from .validity import smact_validity, structure_validity

__all__ = [
    "EnergyResult",
    "ProxyResult",
    "ReferenceHull",
    "StructureRecord",
    "compare_sets",
    "convergence_rate",
    "dft_records",
    "evaluate_csp",
    "evaluate_energy",
    "evaluate_proxy",
    "formation_energy_per_atom",
    "generate_random_structures",
    "load_energy_records",
    "load_structures",
    "proxy_evaluation",
    "smact_validity",
    "stability_counts",
    "structure_validity",
    "summarize_records",
    "sun_rate",
]
