"""Where the bundled benchmark data and the released checkpoints are, in a checkout and in a wheel install.

A repository checkout (or an editable install) has them at the top of the repository (``data/``,
``checkpoints/``); a wheel carries copies as ``unimat_dist/_bundled/{data,checkpoints}`` (``setup.py``).

    unimat sample --checkpoint perov5_transformer_cpu --num 8     # a released checkpoint by name
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_REPO = _PACKAGE.parent


def bundled_dir(name: str) -> Path:
    """``data`` or ``checkpoints``: the wheel's copy when installed from a wheel, else the repository's."""
    packaged = _PACKAGE / "_bundled" / name
    return packaged if packaged.is_dir() else _REPO / name


def released_checkpoints() -> dict[str, Path]:
    """Released checkpoint names (file stem) and their files."""
    folder = bundled_dir("checkpoints")
    return {p.stem: p for p in sorted(folder.glob("*.pt"))} if folder.is_dir() else {}


def resolve_released(uri: str) -> str:
    """``uri`` unchanged, unless it is a bare released name (``perov5_transformer_cpu`` or
    ``perov5_transformer_cpu.pt``) with no such local file or folder: then the released file's path."""
    if not uri or "/" in uri or "\\" in uri or "://" in uri or Path(uri).exists():
        return uri
    path = released_checkpoints().get(uri[:-3] if uri.endswith(".pt") else uri)
    return str(path) if path is not None else uri
