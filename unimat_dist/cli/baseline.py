"""``unimat baseline airss``: the AIRSS-like random-structure-search baseline.

    unimat baseline airss --compositions NaCl Li2O --n-per-composition 100 --out out/airss
    unimat baseline airss --from-csv mp_20:test --limit-compositions 20 --n-per-composition 10 \\
                          --steps 100 --out out/airss_mp20

Writes ``initial/*.cif`` (pre-relaxed random structures), ``relaxed.extxyz``, ``records.jsonl`` (the
same energy records as ``unimat evaluate energy``) and ``metrics.json``; compare a model with it via
``unimat evaluate compare --a model_records.jsonl --b out/airss/records.jsonl --key target``.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("baseline", help="baselines the models must beat")
    bsub = p.add_subparsers(dest="baseline_command", metavar="WHICH", required=True)
    a = bsub.add_parser("airss", help="random symmetric structures + soft-sphere pre-relaxation + CHGNet relaxation")
    a.add_argument("--compositions", nargs="*", default=[], help="cell contents, e.g. NaCl Li4O2")
    a.add_argument("--from-csv", default=None, help="take compositions (full cell contents) from a CSV / NAME:SPLIT")
    a.add_argument("--limit-compositions", type=int, default=None)
    a.add_argument("--n-per-composition", type=int, default=100)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--volume-range", type=float, nargs=2, default=[0.4, 1.2],
                   help="start volume as a multiple of pyxtal's atomic-radii estimate")
    a.add_argument("--prerelax", choices=["soft_sphere", "chgnet", "none"], default="soft_sphere")
    a.add_argument("--steps", type=int, default=200, help="CHGNet relaxation steps")
    a.add_argument("--fmax", type=float, default=0.1)
    a.add_argument("--no-relax", action="store_true", help="only write the random start structures")
    a.add_argument("--workers", type=int, default=None)
    a.add_argument("--out", required=True, help="output folder")
    a.set_defaults(func=run_airss)


def compositions_from_csv(spec: str, limit: int | None) -> list[str]:
    """Distinct full cell compositions of a structure set, in file order."""
    from unimat_dist.evaluation.sources import resolve_source
    from unimat_dist.evaluation.structures_io import load_structures

    path, _ = resolve_source(spec)
    seen: list[str] = []
    for rec in load_structures(path):
        if rec.structure is None:
            continue
        f = rec.structure.composition.formula.replace(" ", "")
        if f not in seen:
            seen.append(f)
        if limit is not None and len(seen) >= limit:
            break
    return seen


def run_airss(args) -> int:
    import json
    import logging
    from pathlib import Path

    from unimat_dist.evaluation.airss import generate_random_structures
    from unimat_dist.evaluation.structures_io import write_cifs

    log = logging.getLogger("unimat.baseline")
    comps = list(args.compositions)
    if args.from_csv:
        comps += compositions_from_csv(args.from_csv, args.limit_compositions)
    elif args.limit_compositions is not None:
        comps = comps[: args.limit_compositions]
    if not comps:
        raise ValueError("no compositions: give --compositions or --from-csv")
    out = Path(args.out)
    recs = generate_random_structures(comps, args.n_per_composition, seed=args.seed,
                                      volume_range=tuple(args.volume_range), prerelax=args.prerelax)
    write_cifs([(r.id, r.structure) for r in recs if r.structure is not None], out / "initial")
    n_ok = sum(r.structure is not None for r in recs)
    log.info("%d random structures for %d compositions (%d failed placement)", n_ok, len(comps), len(recs) - n_ok)
    metrics = {"compositions": comps, "n_per_composition": args.n_per_composition, "seed": args.seed,
               "volume_range": list(args.volume_range), "prerelax": args.prerelax, "n_generated": n_ok,
               "n_placement_failed": len(recs) - n_ok}
    if not args.no_relax:
        from unimat_dist.evaluation.energy import evaluate_energy, write_energy_records
        from unimat_dist.evaluation.structures_io import StructureRecord, write_extxyz

        result = evaluate_energy(recs, steps=args.steps, fmax=args.fmax, workers=args.workers, novelty=False)
        write_energy_records(result.records, out / "records.jsonl")
        write_extxyz([StructureRecord(r["id"], s, None, {}, {"target_id": r.get("target") or ""})
                      for r, s in zip(result.records, result.relaxed)], out / "relaxed.extxyz")
        metrics.update(result.metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)}, indent=1, default=str))
    return 0
