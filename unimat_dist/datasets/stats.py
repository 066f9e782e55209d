"""Data-set statistics in UniMat terms: how big L must be, which elements occur, how sparse x is.

    stats = dataset_stats("perov_5")              # parses every bundled/downloaded split
    print(format_table([stats]))
    plot_element_heatmap(stats, "out/perov_5_elements.png")   # log colour scale, counts in the cells
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..parallel import parallel_map
from ..representation import periodic_table as pt
from .cdvae_csv import iter_cdvae_csv
from .parse import structure_from_cif
from .registry import SPLITS, get_info, resolve_split

log = logging.getLogger(__name__)


@dataclass
class SplitStats:
    name: str
    split: str
    path: str
    note: str
    num_structures: int = 0
    num_failed: int = 0
    max_atoms_per_element: int = 0
    max_atoms: int = 0
    atoms_histogram: dict[int, int] = field(default_factory=dict)
    element_structures: dict[str, int] = field(default_factory=dict)  # element -> #structures containing it
    total_atoms: int = 0
    failures: list[str] = field(default_factory=list)


def _summarise_chunk(cifs: list[tuple[str, str]]) -> tuple[list[tuple[int, int, tuple[str, ...]]], list[str]]:
    """Worker: parse CIFs -> (num_atoms, max per-element count, elements) per structure, and failures."""
    rows, failures = [], []
    for rid, cif in cifs:
        try:
            s = structure_from_cif(cif, rid)
            if not s.is_ordered:
                raise ValueError(f"{rid}: disordered structure")
            counts = Counter(sp.symbol for sp in s.species)
            rows.append((len(s), max(counts.values()), tuple(sorted(counts))))
        except ValueError as exc:
            failures.append(str(exc))
    return rows, failures


def split_stats(name: str, split: str, workers: int = 1, limit: int | None = None) -> SplitStats:
    resolved = resolve_split(name, split, allow_substitute=False)
    info = get_info(name)
    st = SplitStats(name, split, str(resolved.path), resolved.note)
    records = [(r.id, r.cif) for r in iter_cdvae_csv(resolved.path, info.id_column)]
    if limit is not None:
        records = records[:limit]
    chunk = 256
    chunks = [records[i : i + chunk] for i in range(0, len(records), chunk)]
    element_counter: Counter = Counter()
    # spawned workers (parallel_map), never forked ones: a fork of a process holding threads can crash
    results = parallel_map(_summarise_chunk, chunks, workers=workers, progress=False, min_parallel=2, chunksize=1)
    hist: Counter = Counter()
    for rows, failures in results:
        st.failures.extend(failures)
        for n, per_el, els in rows:
            st.num_structures += 1
            st.total_atoms += n
            st.max_atoms = max(st.max_atoms, n)
            st.max_atoms_per_element = max(st.max_atoms_per_element, per_el)
            hist[n] += 1
            element_counter.update(els)
    st.num_failed = len(st.failures)
    st.atoms_histogram = dict(sorted(hist.items()))
    st.element_structures = dict(sorted(element_counter.items(), key=lambda kv: pt.Z_OF[kv[0]]))
    return st


@dataclass
class DatasetStats:
    name: str
    splits: list[SplitStats]

    @property
    def num_structures(self) -> int:
        return sum(s.num_structures for s in self.splits)

    @property
    def max_atoms_per_element(self) -> int:
        return max((s.max_atoms_per_element for s in self.splits), default=0)

    @property
    def elements(self) -> list[str]:
        els = {e for s in self.splits for e in s.element_structures}
        return sorted(els, key=lambda e: pt.Z_OF[e])

    @property
    def element_structures(self) -> dict[str, int]:
        c: Counter = Counter()
        for s in self.splits:
            c.update(s.element_structures)
        return dict(c)

    def grid_shape(self) -> tuple[int, int]:
        """(H, W) of the reduced grid covering this data set's elements."""
        from ..representation import UniMatSpec

        spec = UniMatSpec(max(1, self.max_atoms_per_element), elements=tuple(self.elements))
        return spec.H, spec.W

    def occupancy(self, reduced: bool) -> float:
        """Mean fraction of the L x H x W slots that hold an atom, at L = max_atoms_per_element."""
        L = max(1, self.max_atoms_per_element)
        h, w = self.grid_shape() if reduced else (pt.N_ROWS, pt.N_GROUPS)
        atoms = sum(s.total_atoms for s in self.splits)
        return atoms / max(1, self.num_structures) / (L * h * w)


def dataset_stats(name: str, splits=SPLITS, workers: int = 1, limit: int | None = None) -> DatasetStats:
    out = []
    for split in splits:
        try:
            out.append(split_stats(name, split, workers=workers, limit=limit))
        except FileNotFoundError as exc:
            log.info("skipping %s/%s: %s", name, split, exc)
    if not out:
        raise FileNotFoundError(f"no split of {name} is available (bundled or downloaded)")
    return DatasetStats(name, out)


def format_table(stats: list[DatasetStats]) -> str:
    """Markdown table: one row per data set."""
    head = (
        "| dataset | splits (structures) | structures | parse failures | max atoms | L needed | elements "
        "| reduced H x W | occupancy (9x18) | occupancy (reduced) |\n|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = [head]
    for st in stats:
        h, w = st.grid_shape()
        splits = ", ".join(f"{s.split} {s.num_structures}" for s in st.splits)
        rows.append(
            f"| {st.name} | {splits} | {st.num_structures} | {sum(s.num_failed for s in st.splits)} "
            f"| {max(s.max_atoms for s in st.splits)} | {st.max_atoms_per_element} | {len(st.elements)} "
            f"| {h} x {w} | {100 * st.occupancy(False):.3f}% | {100 * st.occupancy(True):.2f}% |"
        )
    return "\n".join(rows)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def element_heatmap_figure(counts: dict[str, int], total: int, title: str, what: str = "structures"):
    """Periodic-table heat map (the UniMat 9 x 18 layout) of ``counts`` (element -> number of ``what``
    holding it, out of ``total``), on a log colour scale (counts span orders of magnitude: O in most
    structures, a lanthanide in a handful; a linear scale paints every element but the top few alike), with
    each element's count written in its cell. Elements with no count are left blank. Returns the figure."""
    from matplotlib.colors import LogNorm

    plt = _plt()
    grid = np.full((pt.N_ROWS, pt.N_GROUPS), np.nan)
    for el, cnt in counts.items():
        if cnt > 0:
            grid[pt.CELL_OF[el]] = cnt
    present = [c for c in counts.values() if c > 0] or [1]
    lo, hi = min(present), max(present)
    # from the rarest to the commonest present element (Perov-5: 263 ... 6,457), at least a factor 2 wide
    # so that one element alone (Carbon-24) still gets a colour
    norm = LogNorm(vmin=lo if hi >= 2 * lo else hi / 2, vmax=hi)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.96")
    fig, ax = plt.subplots(figsize=(13, 6.6))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm)
    for z in range(1, 119):
        r, c = pt.CELL_OF_Z[z]
        sym = pt.SYMBOLS[z - 1]
        n = counts.get(sym, 0)
        if n > 0:
            # text readable on the cell: dark on the bright (yellow) end of viridis, white elsewhere
            color = "black" if norm(n) > 0.6 else "white"
            ax.text(c, r - 0.18, sym, ha="center", va="center", fontsize=8, fontweight="bold", color=color)
            ax.text(c, r + 0.22, f"{n:,}" if n < 100_000 else f"{n / 1000:.0f}k", ha="center", va="center",
                    fontsize=6, color=color)
        else:
            ax.text(c, r, sym, ha="center", va="center", fontsize=7, color="0.65")
    ax.set_xticks(range(pt.N_GROUPS), [str(g + 1) for g in range(pt.N_GROUPS)])
    ax.set_yticks(range(pt.N_ROWS), [str(p + 1) for p in range(7)] + ["Ln", "An"])
    ax.set_xlabel("group (W)")
    ax.set_ylabel("period (H)")
    ax.set_title(title)
    cb = fig.colorbar(im, ax=ax, shrink=0.7)
    cb.set_label(f"{what} containing the element (log scale; {total:,} in all)")
    fig.tight_layout()
    return fig


def plot_element_heatmap(st: DatasetStats, path: str | Path) -> Path:
    """Periodic-table heat map of the number of structures holding each element (log colour scale,
    counts in the cells): ``element_heatmap_figure`` saved as a PNG."""
    title = f"{st.name}: structures containing each element ({st.num_structures:,} structures)"
    return _save(element_heatmap_figure(st.element_structures, st.num_structures, title), path)


def integer_bins(values) -> np.ndarray:
    """Histogram edges for integer data: one bin per integer, centred on it (edges at k +- 0.5)."""
    v = np.asarray(list(values), dtype=float)
    lo, hi = (int(np.floor(v.min())), int(np.ceil(v.max()))) if len(v) else (0, 1)
    return np.arange(lo - 0.5, hi + 1.5, 1.0)


def atoms_histogram_figure(stats: list[DatasetStats]):
    """One panel per data set: structures per atoms-per-cell value, one bar per integer centred on it,
    integer ticks only, each bar's count written on it when there are few bars (Perov-5: every structure
    has 5 atoms, one bar over the tick 5 labelled with its count)."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    fig, axes = plt.subplots(1, len(stats), figsize=(4 * len(stats), 3.2), squeeze=False)
    for ax, st in zip(axes[0], stats):
        hist: Counter = Counter()
        for s in st.splits:
            hist.update(s.atoms_histogram)
        xs = sorted(hist)
        if not xs:
            ax.text(0.5, 0.5, "no structures", ha="center", va="center", transform=ax.transAxes)
            continue
        edges = integer_bins(xs)
        heights = [hist.get(int(e + 0.5), 0) for e in edges[:-1]]
        ax.bar(edges[:-1] + 0.5, heights, width=1.0, color="tab:blue", edgecolor="white", linewidth=0.5)
        ax.set_xlim(edges[0] - 1, edges[-1] + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=3))
        if len(xs) <= 12:
            for x in xs:
                ax.annotate(f"{hist[x]:,}", (x, hist[x]), ha="center", va="bottom", fontsize=7,
                            xytext=(0, 1), textcoords="offset points")
            ax.set_ylim(0, max(hist.values()) * 1.15)
        ax.set_title(st.name if len(xs) > 1 else f"{st.name}: all {xs[0]} atoms")
        ax.set_xlabel("atoms per cell")
        ax.set_ylabel("structures")
    fig.tight_layout()
    return fig


def plot_atoms_histogram(stats: list[DatasetStats], path: str | Path) -> Path:
    """Atoms-per-cell histogram per data set (``atoms_histogram_figure``) saved as a PNG."""
    return _save(atoms_histogram_figure(stats), path)
