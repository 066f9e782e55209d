"""Figures of the evaluation reports (matplotlib, Agg backend, PNG files)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _clean(x) -> np.ndarray:
    return np.array([v for v in x if v is not None and np.isfinite(v)], dtype=float)


def histogram_pair(a: Sequence[float], b: Sequence[float], label_a: str, label_b: str, xlabel: str, path: str | Path,
                   bins: int | Sequence[float] = 40, title: str | None = None, discrete: bool = False) -> Path:
    """Overlaid normalised histograms of two samples (generated vs reference)."""
    plt = _plt()
    a, b = _clean(a), _clean(b)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    if discrete and (len(a) or len(b)):
        hi = int(max(a.max() if len(a) else 0, b.max() if len(b) else 0))
        bins = np.arange(0.5, hi + 1.5, 1.0)
    elif len(a) or len(b):
        both = np.concatenate([a, b])
        bins = np.linspace(both.min(), both.max() + 1e-9, bins if isinstance(bins, int) else len(bins))
    if len(b):
        ax.hist(b, bins=bins, density=True, alpha=0.5, label=f"{label_b} (n={len(b)})", color="tab:gray")
    if len(a):
        ax.hist(a, bins=bins, density=True, alpha=0.6, label=f"{label_a} (n={len(a)})", color="tab:blue")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    if title:
        ax.set_title(title)
    ax.legend(frameon=False)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def delta_ef_per_composition(rows: Sequence[dict], label_a: str, label_b: str, path: str | Path,
                             max_labels: int = 40) -> Path:
    """The paper's Fig. 5/8: Delta E_f = min E_f(A) - min E_f(B) per composition, sorted (bars below zero:
    A found a lower-energy structure)."""
    plt = _plt()
    deltas = np.array([r["delta"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(max(5.5, min(14, 0.25 * len(rows) + 3)), 4))
    colors = ["tab:blue" if d < 0 else "tab:red" for d in deltas]
    ax.bar(np.arange(len(deltas)), deltas, color=colors)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel(r"$\Delta E_f$ = $E_f$(%s) - $E_f$(%s) [eV/atom]" % (label_a, label_b))
    if len(rows) <= max_labels:
        ax.set_xticks(np.arange(len(rows)))
        ax.set_xticklabels([r["composition"] for r in rows], rotation=90, fontsize=7)
    else:
        ax.set_xlabel(f"{len(rows)} compositions (sorted)")
    rate = float(np.mean(deltas < 0)) if len(deltas) else float("nan")
    ax.set_title(f"E_f reduction rate of {label_a} vs {label_b}: {100 * rate:.1f}%")
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def e_hull_histogram(e_hulls: Sequence[float], path: str | Path, label: str = "generated",
                     other: Sequence[float] | None = None, other_label: str = "reference") -> Path:
    """The paper's Fig. 6: distribution of E_hull (eV/atom), with the stable (< 0) and metastable
    (< 25 meV/atom) thresholds marked."""
    plt = _plt()
    a = _clean(e_hulls)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    allv = np.concatenate([a, _clean(other)]) if other is not None else a
    bins = np.linspace(allv.min(), allv.max() + 1e-9, 40) if len(allv) else 10
    if other is not None:
        o = _clean(other)
        ax.hist(o, bins=bins, alpha=0.5, color="tab:gray", label=f"{other_label} (n={len(o)})")
    ax.hist(a, bins=bins, alpha=0.7, color="tab:blue", label=f"{label} (n={len(a)})")
    ax.axvline(0.0, color="k", lw=1, label="hull")
    ax.axvline(0.025, color="k", lw=1, ls="--", label="25 meV/atom")
    ax.set_xlabel(r"$E_{hull}$ [eV/atom]")
    ax.set_ylabel("count")
    ax.legend(frameon=False)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p
