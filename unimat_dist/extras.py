"""Optional dependencies (pyproject extras) and the one-line message when a subcommand needs a missing one.

The core install (``pip install unimat-dist``) samples, evaluates proxy metrics and builds galleries; the rest
comes with extras. ``unimat`` turns a ``ModuleNotFoundError`` for one of these modules into
``unimat train: error: this needs the 'train' extra (deepspeed is not installed): pip install 'unimat-dist[train]'``.
"""
from __future__ import annotations

# top-level module -> the extra that installs it
MODULE_EXTRA = {
    "ray": "ray",
    "webdataset": "ray",
    "gcsfs": "ray",
    "s3fs": "ray",
    "pyarrow": "ray",
    "prometheus_client": "ray",
    "psutil": "ray",
    "deepspeed": "train",
    "fastapi": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "pydantic": "serve",
    "chgnet": "eval",
    "pyxtal": "eval",
    "pytest": "test",
}


def extra_for(module: str | None) -> str | None:
    return MODULE_EXTRA.get((module or "").split(".")[0])


# subcommands whose extra is more than the module's own: `unimat serve` needs Ray Serve, not just Ray
COMMAND_EXTRA = {"serve": "serve"}


def missing_extra_message(exc: ModuleNotFoundError, command: str | None = None) -> str | None:
    """The install hint for a missing optional dependency, or None when ``exc`` is about something else."""
    extra = extra_for(exc.name)
    if extra is None:
        return None
    if extra in ("ray", "serve") and command in COMMAND_EXTRA:
        extra = COMMAND_EXTRA[command]
    hint = f"pip install 'unimat-dist[{extra}]'"
    if extra == "train":
        hint = f"DS_BUILD_OPS=0 pip install --no-build-isolation 'unimat-dist[{extra}]' (after torch)"
    return f"this needs the '{extra}' extra ({exc.name.split('.')[0]} is not installed): {hint}"
