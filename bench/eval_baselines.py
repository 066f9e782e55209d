"""Baseline numbers of the evaluation suite on this machine: the numbers models must beat.

    python bench/eval_baselines.py --out bench/results/eval_baselines.json            # full (~1 h, 2 cores)
    python bench/eval_baselines.py --limit 200 --airss-compositions 10 --out /tmp/b.json   # quick

Sections (each timed):
  smact      composition validity with smact 2.2.1 behaviour vs smact 4.x on whole bundled splits
  proxy_self each bundled test split evaluated against itself (COV = 100 %, small EMDs)
  proxy_random  random AIRSS-like structures with the test compositions vs the test split
  chgnet_dft CHGNet (static, DFT geometry) formation energies and E_hull vs DFT on all bundled MP-20 rows
  airss_energy  AIRSS-like baseline relaxed with CHGNet vs the DFT test structures (Delta E_f, rates)
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
log = logging.getLogger("bench.eval")


def bench_smact(limit):
    from unimat_dist.datasets.registry import bundled_path
    from unimat_dist.evaluation.structures_io import load_structures
    from unimat_dist.evaluation.validity import composition_counts, smact_validity

    out = {}
    for name, splits in (("perov_5", ("val", "test")), ("mp_20_subset", ("train", "val", "test")),
                         ("carbon_24", ("test",))):
        for split in splits:
            t = time.time()
            recs = load_structures(bundled_path(name, split), limit=limit)
            comps = [composition_counts([s.specie.symbol for s in r.structure]) for r in recs]
            a = np.array([smact_validity(e, c, oxidation_set="smact14") for e, c in comps])
            b = np.array([smact_validity(e, c, oxidation_set="icsd24") for e, c in comps])
            out[f"{name}/{split}"] = {"n": len(recs), "comp_validity_smact221": float(a.mean()),
                                      "comp_validity_smact4x": float(b.mean()), "n_differ": int((a != b).sum()),
                                      "seconds": round(time.time() - t, 1)}
            log.info("smact %s/%s: %s", name, split, out[f"{name}/{split}"])
    return out


def bench_proxy_self(limit, workers):
    from unimat_dist.datasets.registry import bundled_path
    from unimat_dist.evaluation.proxy import evaluate_proxy

    out = {}
    for name, ds, novelty in (("perov_5", "perov5", True), ("carbon_24", "carbon24", False),
                              ("mp_20_subset", "mp20", True)):
        t = time.time()
        test = bundled_path(name, "test")
        train = bundled_path(name, "train") or bundled_path(name, "val")
        m = evaluate_proxy(test, test, ds, train=train if novelty else None, limit_generated=limit,
                           limit_reference=limit, workers=workers, uniqueness=novelty, novelty=novelty,
                           cache_generated=True, progress=False)
        m["bench_seconds"] = round(time.time() - t, 1)
        out[name] = m
        log.info("proxy self %s: COV-R %.4f COV-P %.4f EMD rho %s EMD nel %s (%.0f s)", name, m["cov_recall"],
                 m["cov_precision"], m["emd_density"], m["emd_num_elements"], m["bench_seconds"])
    return out


def bench_proxy_random(limit, workers, n_random):
    from unimat_dist.datasets.registry import bundled_path
    from unimat_dist.evaluation.airss import generate_random_structures
    from unimat_dist.evaluation.proxy import evaluate_proxy
    from unimat_dist.evaluation.structures_io import load_structures

    out = {}
    for name, ds in (("perov_5", "perov5"), ("carbon_24", "carbon24"), ("mp_20_subset", "mp20")):
        t = time.time()
        test = bundled_path(name, "test")
        recs = load_structures(test, limit=n_random)
        comps = [r.structure.composition.formula.replace(" ", "") for r in recs]
        rnd = generate_random_structures(comps, n_per_composition=1, seed=0)
        m = evaluate_proxy(rnd, test, ds, limit_reference=limit, workers=workers, uniqueness=False, novelty=False,
                           progress=False)
        m["bench_seconds"] = round(time.time() - t, 1)
        m["note"] = f"{len(rnd)} random symmetric structures (pyxtal, 0.4-1.2 x volume, soft-sphere pre-relaxed, no DFT/ML relaxation) with the compositions of the first {n_random} test rows"
        out[name] = m
        log.info("proxy random %s: COV-R %.4f COV-P %.4f EMD rho %s (%.0f s)", name, m["cov_recall"],
                 m["cov_precision"], m["emd_density"], m["bench_seconds"])
    return out


def bench_chgnet_dft(workers):
    """CHGNet vs DFT at the DFT geometry for every bundled MP-20 row."""
    from unimat_dist.datasets import iter_cdvae_csv
    from unimat_dist.datasets.registry import bundled_path
    from unimat_dist.evaluation.hull import ReferenceHull
    from unimat_dist.evaluation.property_model import chgnet_formation_energy
    from unimat_dist.evaluation.structures_io import load_structures

    t = time.time()
    paths = [bundled_path("mp_20_subset", s) for s in ("train", "val", "test")]
    hull = ReferenceHull.from_mp20(paths)
    rows = []
    for p in paths:
        recs = load_structures(p)
        props = [r.properties for r in iter_cdvae_csv(p)]
        ef = chgnet_formation_energy([r.structure for r in recs])
        for r, pr, e in zip(recs, props, ef):
            rows.append({"id": r.id, "split": p.name, "formula": r.structure.composition.reduced_formula,
                         "ef_dft": pr["formation_energy_per_atom"], "ehull_mp": pr["e_above_hull"], "ef_chgnet": e,
                         "ehull_chgnet": hull.e_hull(r.structure.composition, e) if e is not None else None,
                         "elements": sorted(el.symbol for el in r.structure.composition.elements)})
    ok = [r for r in rows if r["ef_chgnet"] is not None]
    err = np.array([r["ef_chgnet"] - r["ef_dft"] for r in ok])
    test_on_hull = [r for r in ok if "test" in r["split"] and r["ehull_mp"] == 0.0]
    eh = np.array([r["ehull_chgnet"] for r in test_on_hull])
    per_el = {}
    for r, e in zip(ok, err):
        for el in r["elements"]:
            per_el.setdefault(el, []).append(e)
    worst = sorted(((el, float(np.mean(v)), len(v)) for el, v in per_el.items() if len(v) >= 5),
                   key=lambda x: -abs(x[1]))[:10]
    out = {"n": len(rows), "n_scored": len(ok), "ef_mae": float(np.abs(err).mean()), "ef_mean_error": float(err.mean()),
           "ef_median_abs_error": float(np.median(np.abs(err))),
           "test_on_hull_n": len(test_on_hull), "test_on_hull_ehull_mae": float(np.abs(eh).mean()),
           "test_on_hull_ehull_mean": float(eh.mean()), "test_on_hull_ehull_median": float(np.median(eh)),
           "worst_elements_mean_error": worst, "seconds": round(time.time() - t, 1),
           "note": "static CHGNet at the DFT geometry, CHGNet elemental references; hull = "
                   "bundled MP-20 hull points"}
    log.info("chgnet vs dft: %s", {k: v for k, v in out.items() if k != "worst_elements_mean_error"})
    return out


def bench_airss_energy(n_comp, n_per, steps, workers):
    from unimat_dist.datasets.registry import bundled_path
    from unimat_dist.evaluation.airss import generate_random_structures
    from unimat_dist.evaluation.energy import dft_records, evaluate_energy
    from unimat_dist.evaluation.energy_metrics import compare_sets
    from unimat_dist.evaluation.hull import ReferenceHull
    from unimat_dist.evaluation.structures_io import StructureRecord, load_structures

    t = time.time()
    test = bundled_path("mp_20_subset", "test")
    hull = ReferenceHull.from_mp20([bundled_path("mp_20_subset", s) for s in ("train", "val", "test")])
    recs = [r for r in load_structures(test) if len(r.structure) <= 12][:n_comp]
    comps = [r.structure.composition.formula.replace(" ", "") for r in recs]
    rnd = generate_random_structures(comps, n_per_composition=n_per, seed=0)
    res = evaluate_energy(rnd, steps=steps, hull=hull, workers=workers, progress=False, novelty=False)
    dft = [d for d in dft_records(test, hull) if d["id"] in {r.id for r in recs}]
    for d, r in zip(dft, recs):
        d["target"] = r.structure.composition.formula.replace(" ", "")
    cmp_dft = compare_sets(res.records, dft, key="formula")
    # the test structures themselves relaxed with the same pipeline: the "perfect model" reference
    own = [StructureRecord(r.id, r.structure, None, {}, {"target_id": c}) for r, c in zip(recs, comps)]
    res_test = evaluate_energy(own, steps=steps, hull=hull, workers=workers, progress=False, novelty=False)
    cmp_test = compare_sets(res_test.records, res.records, key="target")
    out = {"n_compositions": len(comps), "n_per_composition": n_per, "relax_steps": steps,
           "airss": {k: v for k, v in res.metrics.items()},
           "airss_vs_dft_test": {k: v for k, v in cmp_dft.items() if k != "per_composition"},
           "test_relaxed": {k: v for k, v in res_test.metrics.items()},
           "test_relaxed_vs_airss": {k: v for k, v in cmp_test.items() if k != "per_composition"},
           "seconds": round(time.time() - t, 1)}
    log.info("airss energy: %s", out["airss_vs_dft_test"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/results/eval_baselines.json")
    ap.add_argument("--limit", type=int, default=None, help="rows per test split (default: all)")
    ap.add_argument("--random", type=int, default=300, help="random structures per data set for proxy_random")
    ap.add_argument("--airss-compositions", type=int, default=20)
    ap.add_argument("--airss-per-composition", type=int, default=5)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sections", nargs="+",
                    default=["smact", "proxy_self", "proxy_random", "chgnet_dft", "airss_energy"])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    results["machine"] = {"cpus": os.cpu_count(), "limit": args.limit}
    for section in args.sections:
        t = time.time()
        if section == "smact":
            results[section] = bench_smact(args.limit)
        elif section == "proxy_self":
            results[section] = bench_proxy_self(args.limit, args.workers)
        elif section == "proxy_random":
            results[section] = bench_proxy_random(args.limit, args.workers, args.random)
        elif section == "chgnet_dft":
            results[section] = bench_chgnet_dft(args.workers)
        elif section == "airss_energy":
            results[section] = bench_airss_energy(args.airss_compositions, args.airss_per_composition, args.steps,
                                                  args.workers)
        else:
            raise SystemExit(f"unknown section {section}")
        log.info("%s done in %.0f s", section, time.time() - t)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        from unimat_dist.evaluation.report import json_default

        out_path.write_text(json.dumps(results, indent=1, default=json_default))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
