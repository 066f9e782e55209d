"""``unimat quickstart``: the main job, end to end on the bundled data (what ``make quickstart`` runs).

Stage 1 (foundation): encode every bundled structure with the UniMat codec, check the round trip, and
write statistics and plots. Later stages (ingest -> train -> sample -> evaluate) append to the same
report folder.

    unimat quickstart --out out/quickstart
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="run the end-to-end main job on the bundled data")
    p.add_argument("--out", default="out/quickstart", help="report folder")
    p.add_argument("--workers", type=int, default=2, help="parallel processes for CIF parsing")
    p.set_defaults(func=run)


def run(args) -> int:
    import logging
    import time
    from pathlib import Path

    from unimat_dist.datasets.stats import dataset_stats, format_table, plot_atoms_histogram, plot_element_heatmap

    log = logging.getLogger("unimat.quickstart")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sections = ["# unimat quickstart report", ""]

    log.info("stage 1/1: UniMat statistics of the bundled data sets")
    stats = []
    for name in ("perov_5", "carbon_24", "mp_20_subset"):
        st = dataset_stats(name, workers=args.workers)
        plot_element_heatmap(st, out / f"{name}_elements.png")
        stats.append(st)
    plot_atoms_histogram(stats, out / "atoms_per_cell.png")
    sections += ["## Data sets in UniMat terms", "", format_table(stats), ""]
    sections += [f"![{st.name}]({st.name}_elements.png)" for st in stats] + [""]

    sections.append(f"Total wall time: {time.time() - t0:.0f} s")
    report = out / "README.md"
    report.write_text("\n".join(sections) + "\n")
    print("\n".join(sections))
    log.info("report written to %s", report)
    return 0
