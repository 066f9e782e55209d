"""Build hook: the wheel carries the repository's bundled data and released checkpoints.

``data/`` (the bundled benchmark splits, ~2 MB) and ``checkpoints/`` (the released inference checkpoints
and their ``.sha256`` sidecars, ~13 MB) stay at the top of the repository, where the docs, configs and
tests name them; ``build_py`` copies them into the built package as ``unimat_dist/_bundled/{data,checkpoints}``
so a wheel install finds them too (``unimat_dist.bundled``). Editable installs read the repository folders
directly and copy nothing. Everything else is in pyproject.toml.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# (repository folder, file patterns): only these files travel; READMEs go along as provenance.
BUNDLED = {
    "data": ("*/*.csv.gz", "*.md"),
    "checkpoints": ("*.pt", "*.pt.sha256", "README.md"),
}


class BuildPyWithBundled(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest_root = Path(self.build_lib) / "unimat_dist" / "_bundled"
        for folder, patterns in BUNDLED.items():
            src = ROOT / folder
            for pattern in patterns:
                for path in sorted(src.glob(pattern)):
                    if path.is_file():
                        dest = dest_root / folder / path.relative_to(src)
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(path, dest)


setup(cmdclass={"build_py": BuildPyWithBundled})
