"""``unimat evaluate``: score generated crystals (CIF folder, extxyz or CDVAE CSV) without the model.

    unimat evaluate proxy  --generated samples/ --reference perov_5:test --dataset perov5 --out metrics.json
    unimat evaluate proxy  --generated data/perov_5/test.csv.gz --reference perov_5:test --dataset perov5 \\
                           --limit-generated 200 --limit-reference 200 --report out/eval_proxy
    unimat evaluate energy --generated samples/ --out energy.json --records out/energy_records.jsonl \\
                           --compare-dft mp_20:test --report out/eval_energy
    unimat evaluate compare --a out/model_records.jsonl --b out/airss/records.jsonl --label-a model \\
                           --label-b airss --key target --report out/model_vs_airss
    unimat evaluate csp    --generated csp_samples/ --reference mp_20:test --k 1 20 --out csp.json

Metrics are fractions in [0, 1]; see docs/evaluation.md for every definition and departure.

``--report DIR`` of ``proxy`` also writes ``DIR/gallery/index.html``: the generated crystals (the first
``--gallery-limit``, default 10,000) next to the reference crystals of the same composition, with the
report's COV/EMD numbers at the top; ``energy --report`` the gallery of its relaxed crystals and energies
(``unimat_dist.gallery``; ``--no-gallery`` skips it, a gallery that fails is a warning).
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="proxy (CDVAE), energy/stability (CHGNet), CSP and set-comparison metrics")
    esub = p.add_subparsers(dest="eval_command", metavar="WHAT", required=True)

    pp = esub.add_parser("proxy", help="CDVAE proxy metrics: validity, COV-R/P, EMDs, uniqueness, novelty")
    pp.add_argument("--generated", required=True, help="folder of CIFs, .extxyz, CDVAE CSV or NAME:SPLIT")
    pp.add_argument("--reference", required=True, help="CDVAE CSV, path or NAME:SPLIT (e.g. perov_5:test)")
    pp.add_argument("--dataset", required=True, help="mp20 | perov5 | carbon24 (or mp_20 / perov_5 / carbon_24)")
    pp.add_argument("--train", default=None, help="training set for novelty (default: the data set's train split)")
    pp.add_argument("--out", default=None, help="metrics JSON path")
    pp.add_argument("--report", default=None, help="folder for metrics.json, summary.md/html and plots")
    pp.add_argument("--n-samples", type=int, default=1000, help="valid generated crystals drawn for the EMDs")
    pp.add_argument("--seed", type=int, default=0, help="seed of that draw (recorded in the output)")
    pp.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    pp.add_argument("--smact", choices=["smact14", "icsd24"], default="smact14",
                    help="smact14 = smact 2.2.1 behaviour of the published tables; icsd24 = smact 4.x")
    pp.add_argument("--property-emd", action="store_true", help="also the property EMD with CHGNet (slow)")
    pp.add_argument("--no-uniqueness", action="store_true")
    pp.add_argument("--no-novelty", action="store_true")
    pp.add_argument("--no-cache", action="store_true", help="do not read/write the reference fingerprint cache")
    pp.add_argument("--limit-generated", type=int, default=None)
    pp.add_argument("--limit-reference", type=int, default=None)
    pp.add_argument("--limit-train", type=int, default=None)
    pp.add_argument("--no-gallery", action="store_true", help="no gallery in the --report folder")
    pp.add_argument("--gallery-limit", type=int, default=10000, help="crystals in the report's gallery")
    pp.set_defaults(func=run_proxy)

    pe = esub.add_parser("energy", help="CHGNet relaxation, E_f, E_hull, #stable/#metastable, S.U.N.")
    pe.add_argument("--generated", required=True)
    pe.add_argument("--out", default=None, help="metrics JSON path")
    pe.add_argument("--records", default=None, help="per-structure records (JSON lines) for later comparisons")
    pe.add_argument("--relaxed", default=None, help="write relaxed structures to this .extxyz")
    pe.add_argument("--report", default=None)
    pe.add_argument("--steps", type=int, default=200, help="maximum relaxation steps")
    pe.add_argument("--fmax", type=float, default=0.1, help="force convergence criterion, eV/A")
    pe.add_argument("--hull", nargs="*", default=None,
                    help="MP-20 CSVs for the reference hull (default: every bundled/downloaded MP-20 split)")
    pe.add_argument("--train", default=None, help="training set for S.U.N. novelty (path or NAME:SPLIT)")
    pe.add_argument("--compare", default=None, help="energy records (.jsonl) of a second set to compare with")
    pe.add_argument("--compare-dft", default=None, help="MP-20 CSV / NAME:SPLIT whose DFT E_f is the comparison set")
    pe.add_argument("--compare-label", default=None)
    pe.add_argument("--key", choices=["formula", "target"], default=None, help="composition key of the comparison")
    pe.add_argument("--workers", type=int, default=None)
    pe.add_argument("--limit", type=int, default=None)
    pe.add_argument("--no-gallery", action="store_true", help="no gallery in the --report folder")
    pe.set_defaults(func=run_energy)

    pc = esub.add_parser("compare", help="Delta E_f per composition, E_f reduction rate, convergence rates")
    pc.add_argument("--a", required=True, help="energy records (.jsonl) of set A")
    pc.add_argument("--b", required=True, help="energy records (.jsonl) of set B")
    pc.add_argument("--label-a", default="A")
    pc.add_argument("--label-b", default="B")
    pc.add_argument("--key", choices=["formula", "target"], default="formula")
    pc.add_argument("--out", default=None)
    pc.add_argument("--report", default=None)
    pc.set_defaults(func=run_compare)

    pk = esub.add_parser("csp", help="crystal structure prediction: match rate and RMSE at k samples")
    pk.add_argument("--generated", required=True, help="samples carrying target_id (<test_id>__<n>.cif names)")
    pk.add_argument("--reference", required=True)
    pk.add_argument("--k", type=int, nargs="+", default=[1, 20])
    pk.add_argument("--out", default=None)
    pk.add_argument("--workers", type=int, default=None)
    pk.add_argument("--limit-reference", type=int, default=None)
    pk.set_defaults(func=run_csp)


def _emit(metrics: dict, out: str | None) -> None:
    import json

    from unimat_dist.evaluation.report import json_default, write_json

    flat = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
    print(json.dumps(flat, indent=1, default=json_default))
    if out:
        write_json(metrics, out)


def report_gallery(generated: str, report: str, *, reference: str | None = None, limit: int | None = None,
                   workers: int | None = None, title: str | None = None):
    """``REPORT/gallery/index.html`` of ``generated`` (a path or NAME:SPLIT) with the report's metrics.json
    at the top; never raises (the page path or None)."""
    import logging
    from pathlib import Path

    from unimat_dist.gallery import write_gallery

    try:
        from unimat_dist.evaluation.sources import resolve_source

        path = resolve_source(generated)[0]
    except Exception:  # noqa: BLE001 - write_gallery reports what it cannot read
        path = generated
    page = write_gallery(path, Path(report) / "gallery", reference=reference, limit=limit, workers=workers,
                         metrics=Path(report) / "metrics.json", title=title)
    if page is not None:
        logging.getLogger("unimat.evaluate").info("gallery: %s", page)
    return page


def run_proxy(args) -> int:
    from unimat_dist.evaluation.coverage import protocol_name
    from unimat_dist.evaluation.property_model import property_function
    from unimat_dist.evaluation.proxy import proxy_evaluation
    from unimat_dist.evaluation.report import proxy_report

    fn, name = property_function(protocol_name(args.dataset)) if args.property_emd else (None, None)
    result = proxy_evaluation(
        args.generated, args.reference, args.dataset, train=args.train, n_samples=args.n_samples, seed=args.seed,
        workers=args.workers, oxidation_set=args.smact, uniqueness=not args.no_uniqueness,
        novelty=not args.no_novelty, property_fn=fn, property_name=name, limit_generated=args.limit_generated,
        limit_reference=args.limit_reference, limit_train=args.limit_train, use_cache=not args.no_cache,
    )
    if args.report:
        proxy_report(result, args.report)
        if not args.no_gallery:
            report_gallery(args.generated, args.report, reference=args.reference, limit=args.gallery_limit,
                           workers=args.workers, title=f"Generated crystals vs {args.reference} ({args.dataset})")
    _emit(result.metrics, args.out)
    return 0


def run_energy(args) -> int:
    from unimat_dist.evaluation.energy import dft_records, evaluate_energy, load_energy_records, write_energy_records
    from unimat_dist.evaluation.hull import ReferenceHull
    from unimat_dist.evaluation.report import energy_report
    from unimat_dist.evaluation.sources import resolve_source
    from unimat_dist.evaluation.structures_io import StructureRecord, write_extxyz

    if args.compare and args.compare_dft:
        raise ValueError("give --compare or --compare-dft, not both")
    hull = ReferenceHull.from_mp20([resolve_source(h)[0] for h in args.hull]) if args.hull else ReferenceHull.from_mp20()
    compare, label = None, args.compare_label
    if args.compare:
        compare, label = load_energy_records(args.compare), label or "compare"
    elif args.compare_dft:
        # With the default hull, MP's own e_above_hull equals E_hull against it for every MP-20 row
        # (tested), and reading it avoids one phase diagram per row.
        dft_hull = hull if args.hull else None
        compare, label = dft_records(resolve_source(args.compare_dft)[0], dft_hull), label or "dft"
    result = evaluate_energy(args.generated, steps=args.steps, fmax=args.fmax, hull=hull, train=args.train,
                             novelty=args.train is not None, compare=compare, compare_label=label or "reference",
                             compare_key=args.key, workers=args.workers, limit=args.limit)
    if args.records:
        write_energy_records(result.records, args.records)
    if args.relaxed:
        write_extxyz([StructureRecord(r["id"], s, None, {}, {}) for r, s in zip(result.records, result.relaxed)],
                     args.relaxed)
    if args.report:
        energy_report(result, args.report, compare=compare, compare_label=label or "reference")
        if not args.no_gallery and getattr(result, "relaxed", None):  # the report's own relaxed crystals + table
            report_gallery(args.report, args.report, workers=args.workers, title="Relaxed crystals")
    _emit(result.metrics, args.out)
    return 0


def run_compare(args) -> int:
    from pathlib import Path

    from unimat_dist.evaluation.energy import load_energy_records
    from unimat_dist.evaluation.energy_metrics import compare_sets
    from unimat_dist.evaluation.plots import delta_ef_per_composition
    from unimat_dist.evaluation.report import fmt_value, write_json, write_report

    a, b = load_energy_records(args.a), load_energy_records(args.b)
    cmp = compare_sets(a, b, key=args.key)
    metrics = {"a": args.a, "b": args.b, "label_a": args.label_a, "label_b": args.label_b, "key": args.key,
               **{k: v for k, v in cmp.items() if k != "per_composition"}}
    if args.report:
        d = Path(args.report)
        plots = []
        if cmp["per_composition"]:
            plots.append(("Delta E_f per composition (paper Fig. 5/8)",
                          delta_ef_per_composition(cmp["per_composition"], args.label_a, args.label_b,
                                                   d / "plots" / "delta_ef.png")))
        write_json(cmp["per_composition"], d / "delta_ef_per_composition.json")
        write_report(d, f"{args.label_a} vs {args.label_b}", metrics,
                     [("Comparison", ["metric", "value"], [[k, fmt_value(v)] for k, v in metrics.items()])], plots)
    _emit(metrics, args.out)
    return 0


def run_csp(args) -> int:
    from unimat_dist.evaluation.csp import evaluate_csp

    metrics = evaluate_csp(args.generated, args.reference, ks=args.k, workers=args.workers,
                           limit_reference=args.limit_reference)
    _emit(metrics, args.out)
    return 0
