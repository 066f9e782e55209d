"""``unimat stats``: UniMat statistics of benchmark data sets (L needed, elements, sparsity) and plots.

    unimat stats                                   # all bundled data sets
    unimat stats --dataset perov_5 --out out/stats --workers 2
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="per-data-set statistics of the UniMat representation, with plots")
    p.add_argument("--dataset", nargs="+", default=["perov_5", "carbon_24", "mp_20_subset"])
    p.add_argument("--out", default="out/stats", help="folder for the Markdown table, JSON and plots")
    p.add_argument("--workers", type=int, default=2, help="parallel CIF-parsing processes")
    p.add_argument("--limit", type=int, default=None, help="rows per split (default: all)")
    p.add_argument("--layout", action="store_true", help="also print the 9 x 18 periodic-table layout")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import logging
    from dataclasses import asdict
    from pathlib import Path

    from unimat_dist.datasets.stats import dataset_stats, format_table, plot_atoms_histogram, plot_element_heatmap
    from unimat_dist.representation import table_ascii

    log = logging.getLogger("unimat.stats")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.layout:
        print(table_ascii())
    all_stats = []
    for name in args.dataset:
        log.info("parsing every structure of %s", name)
        st = dataset_stats(name, workers=args.workers, limit=args.limit)
        all_stats.append(st)
        png = plot_element_heatmap(st, out / f"{name}_elements.png")
        log.info("%s: %d structures, L needed %d, %d elements -> %s", name, st.num_structures,
                 st.max_atoms_per_element, len(st.elements), png)
    plot_atoms_histogram(all_stats, out / "atoms_per_cell.png")
    table = format_table(all_stats)
    print(table)
    (out / "stats.md").write_text(table + "\n")
    payload = [
        {
            "name": st.name,
            "num_structures": st.num_structures,
            "max_atoms_per_element": st.max_atoms_per_element,
            "elements": st.elements,
            "grid": st.grid_shape(),
            "occupancy_full": st.occupancy(False),
            "occupancy_reduced": st.occupancy(True),
            "splits": [asdict(s) for s in st.splits],
        }
        for st in all_stats
    ]
    (out / "stats.json").write_text(json.dumps(payload, indent=1))
    failed = sum(s.num_failed for st in all_stats for s in st.splits)
    return 1 if failed else 0
