"""``unimat gallery``: a static HTML gallery of a run's crystals with a 3D viewer (works offline).

    unimat gallery out/samples                                   # -> out/samples/gallery/index.html
    unimat gallery out/quickstart --reference perov_5:test       # generated next to test crystals
    unimat gallery out/batch --limit 2000 --out out/batch_gallery --workers 2

RUN_DIR is a ``unimat sample`` / ``generate-batch`` / evaluation / quickstart folder (or one .extxyz / .cif /
CDVAE CSV file). The page shows a card per crystal (thumbnail, formula, space group, validity, energies),
filters and sorting, pagination, and opens an interactive 3D view with CIF/POSCAR downloads. A metrics.json
with COV/EMD numbers in the run (or ``--metrics FILE``) is shown at the top.
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gallery", help="static HTML gallery of a run's crystals with a 3D viewer")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder (or a structure file: .extxyz, .cif, CDVAE .csv)")
    p.add_argument("--out", default=None, help="output folder or .html page (default: RUN_DIR/gallery/index.html)")
    p.add_argument("--reference", default=None,
                   help="reference crystals shown next to generated ones of the same composition: a path or "
                        "NAME:SPLIT (e.g. perov_5:test)")
    p.add_argument("--per-reference", type=int, default=4, help="reference crystals kept per composition")
    p.add_argument("--limit", type=int, default=None, help="only the first N crystals of the run")
    p.add_argument("--metrics", default=None, help="a metrics JSON (COV/EMD) to show at the top")
    p.add_argument("--title", default=None)
    p.add_argument("--workers", type=int, default=None, help="processes for facts and thumbnails (default: all CPUs)")
    p.add_argument("--no-thumbnails", action="store_true",
                   help="skip the PNG thumbnails (cards then draw the structures in the browser)")
    p.add_argument("--single-file", default=None, metavar="FILE.html",
                   help="also write one self-contained HTML file (scripts, data and thumbnails inlined)")
    p.set_defaults(func=run)


def run(args) -> int:
    from unimat_dist.gallery import build_gallery

    res = build_gallery(args.run_dir, args.out, reference=args.reference, limit=args.limit, workers=args.workers,
                        metrics=args.metrics, title=args.title, thumbnails=not args.no_thumbnails,
                        per_reference=args.per_reference, single_file=args.single_file)
    print(f"{res.path}  ({res.crystals} crystals, {res.references} references, {res.seconds:.1f} s)")
    print(f"open file://{res.path.resolve()}")
    if args.single_file:
        print(f"single file: {args.single_file}")
    return 0
