"""A static, offline HTML gallery of generated crystals with a 3D viewer (``unimat gallery RUN_DIR``).

    from unimat_dist.gallery import build_gallery, write_gallery
    build_gallery("out/samples", reference="perov_5:test")      # -> out/samples/gallery/index.html
    write_gallery("out/samples")                                # the never-failing hook for sample / batch runs

The browser side lives in ``static/``: ``viewer.js`` (UnimatViewer: Canvas 2D crystal viewer, CIF/POSCAR
export), ``cards.js`` (UnimatCards.renderCards), ``gallery.css`` (shared by the gallery and the service
page) and ``gallery.js`` (this page's filters, sorting, pagination and side-by-side mode).
"""
from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"


def build_gallery(*args, **kwargs):
    from .build import build_gallery as _build

    return _build(*args, **kwargs)


def write_gallery(*args, **kwargs):
    from .build import write_gallery as _write

    return _write(*args, **kwargs)


def gallery_files(*args, **kwargs):
    from .build import gallery_files as _files

    return _files(*args, **kwargs)


def remove_gallery(*args, **kwargs):
    from .build import remove_gallery as _remove

    return _remove(*args, **kwargs)


__all__ = ["STATIC_DIR", "build_gallery", "gallery_files", "remove_gallery", "write_gallery"]
