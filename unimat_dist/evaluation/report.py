"""Report folders: ``metrics.json`` (all metrics), ``summary.md`` and ``summary.html`` (tables, the
comparison with published numbers, the figures) and ``plots/*.png``.

The energy report also lists its crystals (``report_crystals``): the relaxed structures as P1 and
symmetrised CIFs, POSCARs and ``samples.extxyz`` (``unimat_dist.crystal_files``), one row of facts each
(space group, density, shortest distance, ``energy_per_atom``, ``e_form_per_atom``, ``e_hull``, plus the
source ``id``, ``converged``, ``target``) in ``summary.csv`` and ``summary.json`` (``"crystals"``), and the
lowest-E_hull crystals as a table in summary.md/html."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Sequence

from .published import PERCENT_METRICS, PUBLISHED

PROXY_COLUMNS = ("struct_validity", "comp_validity", "cov_recall", "cov_precision", "emd_density",
                 "emd_property", "emd_num_elements")


def fmt_value(v) -> str:
    """A metric as table text: "-" for None, floats to 4 significant digits."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}"
    return str(v)


def json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(obj, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=1, default=json_default, sort_keys=False))
    return p


def proxy_comparison_rows(metrics: dict, protocol: str, label: str = "this run") -> tuple[list[str], list[list[str]]]:
    """Header and rows: published models for this data set, then this run (validity/COV in %)."""
    header = ["model"] + list(PROXY_COLUMNS)
    rows = []
    for model, vals in PUBLISHED.get(protocol, {}).items():
        if vals is None:
            rows.append([model] + ["(not transcribed)"] + [""] * (len(PROXY_COLUMNS) - 1))
            continue
        rows.append([model] + [fmt_value(vals.get(c)) for c in PROXY_COLUMNS])
    ours = []
    for c in PROXY_COLUMNS:
        v = metrics.get(c)
        ours.append(fmt_value(100 * v if (c in PERCENT_METRICS and v is not None) else v))
    rows.append([label] + ours)
    return header, rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]
    return "\n".join(out)


def _html_table(header, rows) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def write_report(out_dir: str | Path, title: str, metrics: dict, tables: Sequence[tuple[str, Sequence[str], list]] = (),
                 plots: Sequence[tuple[str, Path]] = (), notes: Sequence[str] = ()) -> dict:
    """Write metrics.json, summary.md and summary.html into ``out_dir``; returns their paths.

    tables: (caption, header, rows); plots: (caption, png path); notes: free text lines (departures...).
    """
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    flat = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
    write_json(metrics, d / "metrics.json")
    md = [f"# {title}", ""]
    for cap, header, rows in tables:
        md += [f"## {cap}", "", _md_table(header, rows), ""]
    md += ["## All metrics", "", _md_table(["metric", "value"], [[k, fmt_value(v)] for k, v in flat.items()]), ""]
    if plots:
        md += ["## Figures", ""]
        md += [f"![{cap}]({Path(p).relative_to(d) if Path(p).is_relative_to(d) else p})\n\n*{cap}*\n" for cap, p in plots]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    (d / "summary.md").write_text("\n".join(md))
    body = [f"<h1>{html.escape(title)}</h1>"]
    for cap, header, rows in tables:
        body += [f"<h2>{html.escape(cap)}</h2>", _html_table(header, rows)]
    body += ["<h2>All metrics</h2>", _html_table(["metric", "value"], [[k, fmt_value(v)] for k, v in flat.items()])]
    for cap, p in plots:
        rel = Path(p).relative_to(d) if Path(p).is_relative_to(d) else Path(p)
        body += [f"<figure><img src='{html.escape(str(rel))}' style='max-width:720px'><figcaption>{html.escape(cap)}"
                 "</figcaption></figure>"]
    if notes:
        body += ["<h2>Notes</h2><ul>"] + [f"<li>{html.escape(n)}</li>" for n in notes] + ["</ul>"]
    style = "body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
    (d / "summary.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
                                    f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>")
    return {"json": d / "metrics.json", "markdown": d / "summary.md", "html": d / "summary.html"}


def proxy_report(result, out_dir: str | Path) -> dict:
    """Report of a :class:`proxy.ProxyResult`: comparison table + density/#elements(/property) histograms."""
    from .coverage import protocol_name
    from .plots import histogram_pair

    m = result.metrics
    d = Path(out_dir)
    sample = [result.generated[i] for i in result.emd_indices]
    plots = [
        ("Density of valid generated vs reference crystals",
         histogram_pair([g.density for g in sample], [r.density for r in result.reference], "generated", "reference",
                        "density [g/cm$^3$]", d / "plots" / "density.png")),
        ("Number of distinct elements",
         histogram_pair([g.n_elements for g in sample], [r.n_elements for r in result.reference], "generated",
                        "reference", "# elements", d / "plots" / "num_elements.png", discrete=True)),
    ]
    if result.properties:
        plots.append((f"Property for the property EMD ({result.properties.get('name')})",
                      histogram_pair(result.properties["generated"], result.properties["reference"], "generated",
                                     "reference", str(result.properties.get("name")), d / "plots" / "property.png")))
    header, rows = proxy_comparison_rows(m, protocol_name(m["dataset"]))
    notes = [m.get("emd_note", ""), f"units: {m.get('units')}",
             "published rows: see unimat_dist/evaluation/published.py for sources; validity/COV in %"]
    return write_report(d, f"Proxy metrics ({m['dataset']})", m, [("Comparison with published numbers", header, rows)],
                        plots, notes)


CRYSTAL_TABLE_ROWS = 30  # crystals listed in summary.md/html (all of them are in summary.csv)


def report_crystals(out_dir: str | Path, structures: Sequence, records: Sequence[dict],
                    energies: Sequence[dict | None] | None = None) -> list[dict]:
    """The crystal files and per-crystal table of a report (see the module docstring); returns the rows.
    ``records``: per structure, extra columns (its source id, ...); ``energies``: per structure, the
    ``crystal_facts`` energies."""
    from unimat_dist.crystal_facts import crystal_facts
    from unimat_dist.crystal_files import write_crystal_files, write_text_atomic

    d = Path(out_dir)
    energies = list(energies) if energies is not None else [None] * len(structures)
    facts = [crystal_facts(s, energies=e, flags={"decoded": s is not None}) for s, e in zip(structures, energies)]
    _, rows = write_crystal_files(d, structures, facts, extra=records)
    write_text_atomic(d / "summary.json", json.dumps({"format": "unimat-dist/crystal-table", "crystals": rows},
                                                     indent=1, default=json_default, allow_nan=False))
    return rows


def crystal_table(rows: Sequence[dict], limit: int = CRYSTAL_TABLE_ROWS) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the lowest-E_hull crystals (those without E_hull last) for summary.md/html."""
    keys = ["name", "id", "formula", "num_atoms", "spacegroup_symbol", "spacegroup_number", "density",
            "min_distance", "min_distance_ratio", "too_close", "e_form_per_atom", "e_hull", "cif"]
    ranked = sorted(rows, key=lambda r: (r.get("e_hull") is None, r.get("e_hull") or 0.0))[:limit]
    return keys, [[fmt_value(r.get(k)) for k in keys] for r in ranked]


def energy_report(result, out_dir: str | Path, compare: Sequence[dict] | None = None, label: str = "generated",
                  compare_label: str = "reference") -> dict:
    """Report of an :class:`energy.EnergyResult`: E_f and E_hull histograms, and the per-composition
    Delta E_f figure when a comparison set is given."""
    from .energy_metrics import compare_sets
    from .plots import delta_ef_per_composition, e_hull_histogram, histogram_pair

    d = Path(out_dir)
    recs = result.records
    conv = [r for r in recs if r.get("converged")]
    plots = [
        ("E_hull of converged structures (paper Fig. 6)",
         e_hull_histogram([r.get("e_hull") for r in conv], d / "plots" / "e_hull.png", label,
                          [r.get("e_hull") for r in compare] if compare else None, compare_label)),
        ("Formation energy of converged structures",
         histogram_pair([r.get("e_form_per_atom") for r in conv],
                        [r.get("e_form_per_atom") for r in compare] if compare else [], label, compare_label,
                        "E_f [eV/atom]", d / "plots" / "e_form.png")),
    ]
    tables = []
    if compare:
        key = result.metrics.get(f"vs_{compare_label}_key", "formula")
        cmp = compare_sets(recs, compare, key=key)
        if cmp["per_composition"]:
            plots.append(("Delta E_f per composition (paper Fig. 5/8)",
                          delta_ef_per_composition(cmp["per_composition"], label, compare_label,
                                                   d / "plots" / "delta_ef.png")))
        tables.append((f"{label} vs {compare_label}", ["metric", "value"],
                       [[k, fmt_value(v)] for k, v in cmp.items() if k != "per_composition"]))
        write_json(cmp["per_composition"], d / "delta_ef_per_composition.json")
    if getattr(result, "relaxed", None):
        extra = [{"id": r.get("id"), "converged": r.get("converged"), "target": r.get("target")} for r in recs]
        energies = [{"energy_per_atom": r.get("e_final_per_atom"), "e_form_per_atom": r.get("e_form_per_atom"),
                     "e_hull": r.get("e_hull")} for r in recs]
        rows = report_crystals(d, result.relaxed, extra, energies)
        header, table = crystal_table(rows)
        tables.append((f"Relaxed crystals, lowest E_hull first ({len(table)} of {len(rows)}; all in summary.csv)",
                       header, table))
    notes = [result.metrics.get("energy_convention", ""), f"hull: {result.metrics.get('hull_reference')}"]
    return write_report(d, "Energy and stability metrics", result.metrics, tables, plots, notes)
