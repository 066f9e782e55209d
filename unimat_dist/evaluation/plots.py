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


MIN_HIST_POINTS = 30  # a series with fewer finite values is drawn as points (strip plot), not a histogram
MAX_BINS = 60


def _save(fig, path: str | Path) -> Path:
    plt = _plt()
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def integer_bins(values) -> np.ndarray:
    """One bin per integer, centred on it (edges at k +- 0.5)."""
    v = np.asarray(values, dtype=float)
    lo, hi = (int(np.floor(v.min())), int(np.ceil(v.max()))) if len(v) else (0, 1)
    return np.arange(lo - 0.5, hi + 1.5, 1.0)


def data_bins(values, discrete: bool = False, bins: int | Sequence[float] | None = None) -> np.ndarray:
    """Histogram edges that suit the data: one per integer for counts (``discrete``); otherwise the given
    edges, or numpy's "auto" rule (the larger of Sturges and Freedman-Diaconis), at most ``MAX_BINS``, and a
    visible width when every value is the same."""
    v = np.asarray(values, dtype=float)
    if discrete:
        return integer_bins(v)
    if bins is not None and not isinstance(bins, int):
        return np.asarray(bins, dtype=float)
    if not len(v):
        return np.linspace(0.0, 1.0, 11)
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-12:
        half = max(abs(lo) * 0.05, 0.05)
        return np.linspace(lo - half, hi + half, 6)
    edges = np.histogram_bin_edges(v, bins="auto" if bins is None else bins)
    return edges if len(edges) <= MAX_BINS + 1 else np.linspace(lo, hi, MAX_BINS + 1)


def strip_plot(ax, series: Sequence[tuple[str, np.ndarray, str]], xlabel: str, label_values: int = 8) -> None:
    """Few values: each one a point, one row per series (jittered vertically, the median a bar), the values
    written beside the points when a series has at most ``label_values`` of them. Marks ``ax`` with the gid
    "strip"."""
    rng = np.random.default_rng(0)
    rows = [(lab, v, c) for lab, v, c in series if len(v)]
    for k, (lab, v, color) in enumerate(rows):
        y = k + rng.uniform(-0.12, 0.12, len(v))
        few = len(v) <= 50
        ax.scatter(v, y, s=28 if few else 8, color=color, alpha=0.8 if few else 0.4, edgecolor="white",
                   linewidth=0.5 if few else 0, zorder=3)
        ax.plot([np.median(v)] * 2, [k - 0.3, k + 0.3], color=color, lw=2, zorder=2)
        if len(v) <= label_values:
            for j, i in enumerate(np.argsort(v)):  # above and below in turn, so neighbours do not overlap
                ax.annotate(f"{v[i]:.3g}", (v[i], y[i]), xytext=(2, 5 if j % 2 == 0 else -11),
                            textcoords="offset points", fontsize=7, color="0.3")
    ax.set_yticks(range(len(rows)), [f"{lab}\n(n={len(v)})" for lab, v, _ in rows])
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.set_gid("strip")


def histogram_pair_figure(a: Sequence[float], b: Sequence[float], label_a: str, label_b: str, xlabel: str,
                          bins: int | Sequence[float] | None = None, title: str | None = None,
                          discrete: bool = False, min_points: int = MIN_HIST_POINTS):
    """Overlaid normalised histograms of two samples (generated ``a`` vs reference ``b``) on shared edges
    that suit the data (``data_bins``: integer bins when ``discrete``); a strip plot of the points instead
    when either non-empty sample has fewer than ``min_points`` values. The axes' gid says which was drawn
    ("histogram" or "strip")."""
    plt = _plt()
    a, b = _clean(a), _clean(b)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    if any(0 < len(x) < min_points for x in (a, b)):
        strip_plot(ax, [(label_b, b, "tab:gray"), (label_a, a, "tab:blue")], xlabel)
    else:
        edges = data_bins(np.concatenate([a, b]), discrete, bins)
        if len(b):
            ax.hist(b, bins=edges, density=True, alpha=0.5, label=f"{label_b} (n={len(b)})", color="tab:gray")
        if len(a):
            ax.hist(a, bins=edges, density=True, alpha=0.6, label=f"{label_a} (n={len(a)})", color="tab:blue")
        if discrete:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
        if len(a) or len(b):
            ax.legend(frameon=False)
        ax.set_gid("histogram")
    if title:
        ax.set_title(title)
    return fig


def histogram_pair(a: Sequence[float], b: Sequence[float], label_a: str, label_b: str, xlabel: str, path: str | Path,
                   bins: int | Sequence[float] | None = None, title: str | None = None,
                   discrete: bool = False) -> Path:
    """``histogram_pair_figure`` saved as a PNG."""
    return _save(histogram_pair_figure(a, b, label_a, label_b, xlabel, bins, title, discrete), path)


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


def e_hull_figure(e_hulls: Sequence[float], label: str = "generated", other: Sequence[float] | None = None,
                  other_label: str = "reference", min_points: int = MIN_HIST_POINTS):
    """The paper's Fig. 6: distribution of E_hull (eV/atom), with the stable (< 0) and metastable
    (< 25 meV/atom) thresholds marked; a strip plot of the points when a sample has fewer than
    ``min_points`` values (5 relaxed crystals make a histogram of hairlines)."""
    plt = _plt()
    a = _clean(e_hulls)
    o = _clean(other) if other is not None else np.array([])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    if any(0 < len(x) < min_points for x in (a, o)) or not (len(a) or len(o)):
        strip_plot(ax, [(other_label, o, "tab:gray"), (label, a, "tab:blue")], r"$E_{hull}$ [eV/atom]")
    else:
        edges = data_bins(np.concatenate([a, o]))
        if len(o):
            ax.hist(o, bins=edges, alpha=0.5, color="tab:gray", label=f"{other_label} (n={len(o)})")
        if len(a):
            ax.hist(a, bins=edges, alpha=0.7, color="tab:blue", label=f"{label} (n={len(a)})")
        ax.set_xlabel(r"$E_{hull}$ [eV/atom]")
        ax.set_ylabel("count")
        ax.set_gid("histogram")
    ax.axvline(0.0, color="k", lw=1, label="hull")
    ax.axvline(0.025, color="k", lw=1, ls="--", label="25 meV/atom")
    ax.legend(frameon=False, fontsize=8)
    if ax.get_gid() == "strip":
        n_stable = int((a < 0.025).sum())
        ax.set_title(f"{label}: {n_stable} of {len(a)} within 25 meV/atom of the hull", fontsize=9)
    return fig


def e_hull_histogram(e_hulls: Sequence[float], path: str | Path, label: str = "generated",
                     other: Sequence[float] | None = None, other_label: str = "reference") -> Path:
    """``e_hull_figure`` saved as a PNG."""
    return _save(e_hull_figure(e_hulls, label, other, other_label), path)
