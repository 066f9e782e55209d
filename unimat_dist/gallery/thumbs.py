"""Crystal thumbnails as PNG (matplotlib, Agg): the unit cell, bonds and atoms coloured by element (Jmol
colours) with a small legend, seen from the same direction as the browser viewer's default view
(``static/viewer.js``), so that a card's picture and the 3D view that opens from it agree.

``render_thumbnail`` is called in worker processes; it keeps one figure per process and redraws it.
"""
from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

THUMB_VERSION = 2  # part of the cache key: bump when the picture changes
THUMB_PX = 180
_STATIC = Path(__file__).resolve().parent / "static"


@lru_cache(maxsize=1)
def element_tables() -> tuple[dict[str, str], dict[str, float]]:
    """(colours, covalent radii) read from viewer.js, the one place they are written down."""
    text = (_STATIC / "viewer.js").read_text()
    colours_block = text.split("var COLORS = {", 1)[1].split("};", 1)[0]
    radii_block = text.split("var RADII = {", 1)[1].split("};", 1)[0]
    colours = dict(re.findall(r"([A-Z][a-z]?): '(#[0-9A-Fa-f]{6})'", colours_block))
    radii = {k: float(v) for k, v in re.findall(r"([A-Z][a-z]?): (\d*\.\d+|\d+)", radii_block)}
    return colours, radii


def element_color(symbol: str) -> str:
    return element_tables()[0].get(symbol, "#FF1493")


def _rot_x(t: float) -> np.ndarray:
    c, s = math.cos(t), math.sin(t)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(t: float) -> np.ndarray:
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


DEFAULT_ROT = _rot_x(0.35) @ _rot_y(-0.5) @ _rot_x(-math.pi / 2)  # = viewer.js DEFAULT_ROT


def scene(matrix: Sequence, species: Sequence[str], frac: Sequence, eps: float = 0.02):
    """Atoms of one cell plus their images on the far faces (frac < eps -> also at 1), bonds (distance below
    1.15 x the sum of covalent radii) and the 12 cell edges, all Cartesian."""
    M = np.asarray(matrix, dtype=float)
    f = np.mod(np.asarray(frac, dtype=float), 1.0)
    f[f > 1 - 1e-6] = 0.0
    sp = list(species)
    fs, ss = [f], [sp]
    for axis_set in ([0], [1], [2], [0, 1], [0, 2], [1, 2], [0, 1, 2]):
        mask = np.all(f[:, axis_set] < eps, axis=1)
        if mask.any():
            g = f[mask].copy()
            g[:, axis_set] += 1.0
            fs.append(g)
            ss.append([s for s, m in zip(sp, mask) if m])
    F = np.concatenate(fs)
    S = [s for group in ss for s in group]
    P = F @ M
    radii = element_tables()[1]
    r = np.array([radii.get(s, 1.5) for s in S])
    bonds = np.zeros((0, 2), dtype=int)
    if len(P) <= 600:
        d = np.linalg.norm(P[:, None, :] - P[None, :, :], axis=-1)
        lim = 1.15 * (r[:, None] + r[None, :])
        i, j = np.nonzero(np.triu((d > 0.4) & (d < lim), 1))
        bonds = np.stack([i, j], axis=1)
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=float)
    edges = [(p, q) for p in range(8) for q in range(p + 1, 8) if np.abs(corners[p] - corners[q]).sum() == 1]
    return P, S, r, bonds, corners @ M, edges


_FIG = None


def _figure(px: int):
    """One figure and axes per process, reused (creating axes costs more than drawing a crystal)."""
    global _FIG
    if _FIG is None or _FIG[2] != px:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(px / 100, px / 100), dpi=100, facecolor="white")
        FigureCanvasAgg(fig)
        ax = fig.add_axes([0, 0, 1, 1])
        ax.set_axis_off()
        ax.set_aspect("equal")
        _FIG = (fig, ax, px)
    fig, ax, _ = _FIG
    for artist in [*ax.collections, *fig.texts]:
        artist.remove()
    return fig, ax


@lru_cache(maxsize=4096)
def _shade(hex_colour: str, f: float) -> tuple[float, float, float]:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]) / 255.0
    out = rgb + (1 - rgb) * f if f >= 0 else rgb * (1 + f)
    return tuple(float(x) for x in np.clip(out, 0, 1))


def render_thumbnail(matrix, species, frac, path: str | Path, px: int = THUMB_PX) -> None:
    """Draw one crystal to ``path`` (PNG, ``px`` x ``px``)."""
    from matplotlib.collections import LineCollection

    P, S, r, bonds, corners, edges = scene(matrix, species, frac)
    center = corners.mean(axis=0)
    V = (P - center) @ DEFAULT_ROT.T
    C = (corners - center) @ DEFAULT_ROT.T
    radius = max(np.linalg.norm(C, axis=1).max(), np.linalg.norm(V, axis=1).max() if len(V) else 0) + 1.0
    D = 5 * radius
    k = D / (D - V[:, 2])
    xy = V[:, :2] * k[:, None]
    kc = D / (D - C[:, 2])
    cxy = C[:, :2] * kc[:, None]
    fig, ax = _figure(px)
    ax.set_xlim(-radius, radius)
    ax.set_ylim(-radius, radius)
    pts_per_A = (px / (2 * radius)) * 72 / 100  # points per Angstrom at dpi 100
    ax.add_collection(LineCollection([[cxy[p], cxy[q]] for p, q in edges], colors="#222222", linewidths=0.9, zorder=1))
    if len(bonds):
        segs, cols = [], []
        for i, j in bonds:
            mid = (xy[i] + xy[j]) / 2
            segs += [[xy[i], mid], [xy[j], mid]]
            cols += [_shade(element_color(S[i]), -0.1), _shade(element_color(S[j]), -0.1)]
        ax.add_collection(LineCollection(segs, colors=cols, linewidths=max(0.8, 0.16 * pts_per_A), zorder=2,
                                         capstyle="round"))
    order = np.argsort(V[:, 2])
    size_A = 0.22 + 0.28 * r[order]
    sizes = (2 * size_A * k[order] * pts_per_A) ** 2
    colours = [element_color(S[i]) for i in order]
    # one scatter drawn in order: each atom, then its highlight, back to front (painter's algorithm)
    hl = np.stack([xy[order, 0] - 0.3 * size_A, xy[order, 1] + 0.3 * size_A], axis=1)
    pts = np.stack([xy[order], hl], axis=1).reshape(-1, 2)
    s2 = np.stack([sizes, sizes * 0.12], axis=1).reshape(-1)
    face = [c for col in colours for c in (_shade(col, 0), _shade(col, 0.6))]
    edge = [c for col in colours for c in (_shade(col, -0.45), _shade(col, 0.6))]
    lw = np.tile([0.5, 0.0], len(order))
    ax.scatter(pts[:, 0], pts[:, 1], s=s2, c=face, edgecolors=edge, linewidths=lw, zorder=3)
    seen = list(dict.fromkeys(species))
    for n, el in enumerate(seen[:6]):
        fig.text(0.03, 0.96 - n * 0.075, "\u25cf", color=element_color(el), fontsize=7, va="top", ha="left")
        fig.text(0.09, 0.96 - n * 0.075, el, color="#333333", fontsize=6.5, va="top", ha="left")
    fig.canvas.draw()
    from PIL import Image

    img = Image.frombuffer("RGBA", fig.canvas.get_width_height(), fig.canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    # a 128-colour palette PNG: a third of the bytes of RGBA, same look at this size
    img = img.convert("RGB").quantize(128, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    img.save(str(path), format="PNG")
