"""Plots people read, on the bundled data: periodic-table heat maps on a log colour scale with the counts in
the cells, atoms-per-cell histograms with one integer-centred bar per value, and points instead of a
histogram when there are too few values."""
from __future__ import annotations

import ast
import itertools

import numpy as np
import pytest
from matplotlib.colors import LogNorm

from unimat_dist.datasets.cdvae_csv import iter_cdvae_csv
from unimat_dist.datasets.registry import bundled_path
from unimat_dist.datasets.stats import (atoms_histogram_figure, dataset_stats, element_heatmap_figure,
                                        plot_atoms_histogram, plot_element_heatmap)
from unimat_dist.evaluation import plots


@pytest.fixture(scope="module")
def stats():
    return {name: dataset_stats(name, splits=("test",), limit=600) for name in ("perov_5", "carbon_24", "mp_20_subset")}


def _close(fig):
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_element_heatmap_log_scale_with_counts(stats, tmp_path):
    st = stats["mp_20_subset"]
    counts = st.element_structures
    assert max(counts.values()) / min(counts.values()) > 20  # spans decades: why the scale is logarithmic
    fig = element_heatmap_figure(counts, st.num_structures, "mp_20_subset")
    ax = fig.axes[0]
    norm = ax.images[0].norm
    assert isinstance(norm, LogNorm)
    assert norm.vmin == min(counts.values()) and norm.vmax == max(counts.values())
    texts = [t.get_text() for t in ax.texts]
    for el, n in counts.items():  # every present element's count is written in the figure
        assert f"{n:,}" in texts, el
    # on a log scale the rare and the common elements get different colours (on the linear one they did not)
    rare, common = min(counts, key=counts.get), max(counts, key=counts.get)
    assert norm(counts[common]) - norm(counts[rare]) > 0.5
    _close(fig)
    for name in ("perov_5", "carbon_24"):  # carbon_24: one element (a single count still gets a colour)
        path = plot_element_heatmap(stats[name], tmp_path / f"{name}_elements.png")
        assert path.stat().st_size > 10_000


def test_atoms_histogram_integer_bins(stats, tmp_path):
    order = ["perov_5", "carbon_24", "mp_20_subset"]
    fig = atoms_histogram_figure([stats[n] for n in order])
    for ax, name in zip(fig.axes, order):
        hist = {}
        for s in stats[name].splits:
            hist.update(s.atoms_histogram)
        bars = [p for p in ax.patches if p.get_height() > 0]
        lefts = np.array([p.get_x() for p in bars])
        rights = lefts + np.array([p.get_width() for p in bars])
        centres = (lefts + rights) / 2
        # one bar per atom count, centred on it, bar edges at k +- 0.5
        assert np.allclose(centres, np.round(centres)) and np.allclose(rights - lefts, 1.0)
        assert sorted(np.round(centres).astype(int)) == sorted(hist)
        assert np.allclose(lefts + 0.5, np.round(lefts + 0.5))
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), (name, ticks)
    perov = fig.axes[0]
    assert [int(round(p.get_x() + 0.5)) for p in perov.patches if p.get_height() > 0] == [5]  # not 4.6-5.4 ticks
    assert 5 in perov.get_xticks() and "600" in [t.get_text() for t in perov.texts]
    _close(fig)
    assert plot_atoms_histogram([stats[n] for n in order], tmp_path / "atoms.png").stat().st_size > 10_000


def test_integer_and_data_bins():
    assert np.array_equal(plots.integer_bins([2, 3, 7]), np.arange(1.5, 8.0, 1.0))
    assert np.allclose(plots.data_bins([1, 2, 4], discrete=True) + 0.5, np.arange(1, 6))
    edges = plots.data_bins(np.random.default_rng(0).normal(size=5000))
    assert 10 <= len(edges) - 1 <= plots.MAX_BINS
    same = plots.data_bins([0.3] * 50)  # all equal: still a visible bin around the value
    assert same[0] < 0.3 < same[-1]


def _e_above_hull(n: int) -> list[float]:
    rows = iter_cdvae_csv(bundled_path("mp_20_subset", "test"))
    return [r.properties["e_above_hull"] for r in itertools.islice(rows, n)]


def test_few_points_drawn_as_points_not_hairlines(tmp_path):
    five = _e_above_hull(5)  # 5 real E_hull values (MP-20 test rows)
    fig = plots.e_hull_figure(five)
    ax = fig.axes[0]
    assert ax.get_gid() == "strip"
    assert not [p for p in ax.patches if p.get_height() > 0]  # no histogram bars
    offsets = np.concatenate([c.get_offsets() for c in ax.collections])
    assert sorted(offsets[:, 0]) == pytest.approx(sorted(five))  # each value is a point
    _close(fig)
    many = _e_above_hull(300)
    fig = plots.e_hull_figure(many)
    assert fig.axes[0].get_gid() == "histogram" and len(fig.axes[0].patches) >= 5
    _close(fig)
    assert plots.e_hull_histogram(five, tmp_path / "e_hull.png").stat().st_size > 5_000

    # the generated-vs-reference histograms: points when one side is small, integer bins when discrete
    fig = plots.histogram_pair_figure(five, many, "generated", "reference", "E_hull")
    assert fig.axes[0].get_gid() == "strip"
    _close(fig)
    n_el = [len(ast.literal_eval(r.metadata["elements"])) for r in itertools.islice(iter_cdvae_csv(
        bundled_path("mp_20_subset", "test")), 200)]
    fig = plots.histogram_pair_figure(n_el, n_el, "generated", "reference", "# elements", discrete=True)
    ax = fig.axes[0]
    edges = sorted({round(p.get_x(), 6) for p in ax.patches})
    assert ax.get_gid() == "histogram" and all(float(e + 0.5).is_integer() for e in edges)
    _close(fig)
