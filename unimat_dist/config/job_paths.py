"""Relative paths of a command submitted with ``ray job submit``: put under the run storage or refused.

``ray job submit --working-dir . -- python -m unimat_dist train ...`` runs the command in a copy of the
working directory that Ray unpacks under ``/tmp/ray/session_*/runtime_resources/working_dir_files/`` and
deletes with the session: an output written to a relative path there (``out_dir: out/run``,
``output.uri: out/generated``) is lost. In a submitted job, every relative *output* path of a config is
therefore

* placed under ``UNIMAT_STORAGE`` (an absolute path that every node shares, or a URI such as
  ``s3://bucket/unimat``) when that variable is set, e.g.
  ``ray job submit --runtime-env-json '{"env_vars": {"UNIMAT_STORAGE": "s3://bucket/unimat"}}' ...``
  turns ``out_dir: out/run`` into ``s3://bucket/unimat/out/run``;
* refused otherwise, with an error naming the key (``out_dir: ...``) before any work starts.

Relative *inputs* that a previous job wrote (``model.checkpoint``, ``data.manifest``) are looked up under
``UNIMAT_STORAGE`` when they are not in the working directory, so the documented train -> generate-batch
sequence finds its checkpoint. Inputs shipped with the working directory (``requests.uri``, the bundled
CSVs) stay relative to it. Outside a submitted job nothing changes.

The one place this happens is :func:`unimat_dist.config.load_config` (every ``unimat`` config goes through
it), via :func:`resolve_job_paths`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""

STORAGE_ENV = "UNIMAT_STORAGE"
_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for the entrypoint of a submitted job
_WORKING_DIR_MARK = os.sep + "runtime_resources" + os.sep + "working_dir_files" + os.sep

# config class name -> (output keys, input keys written by an earlier job)
_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "TrainConfig": (("out_dir", "checkpoint_dir", "distributed.storage_path"), ("data.manifest",)),
    "GenerateBatchConfig": (("output.uri",), ("model.checkpoint",)),
    "IngestConfig": (("output.uri",), ()),
}


def ray_job_working_dir() -> str | None:
    """The working directory if this process runs a ``ray job submit`` command (or a Ray worker in a job's
    unpacked ``--working-dir``), else None."""
    cwd = os.getcwd()
    if os.environ.get(_JOB_ENV) or _WORKING_DIR_MARK in cwd + os.sep:
        return cwd
    return None


def _is_relative(value: str | None) -> bool:
    if not value:
        return False
    value = value.removeprefix("file://")  # file://out/run is as relative as out/run
    if "://" in value:
        return False
    return not os.path.isabs(os.path.expanduser(value))


def _join(root: str, rel: str) -> str:
    rel = os.path.normpath(rel.removeprefix("file://"))
    if rel.startswith(".."):
        raise ValueError(f"{rel!r} leaves {STORAGE_ENV}")
    if "://" in root and not root.startswith("file://"):
        return root.rstrip("/") + "/" + rel.replace(os.sep, "/")
    return os.path.join(os.path.abspath(os.path.expanduser(root.removeprefix("file://"))), rel)


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _set(obj, dotted: str, value):
    head, _, rest = dotted.partition(".")
    if not rest:
        return dataclasses.replace(obj, **{head: value})
    return dataclasses.replace(obj, **{head: _set(getattr(obj, head), rest, value)})


def storage_root() -> str | None:
    root = os.environ.get(STORAGE_ENV, "").strip()
    if root and "://" not in root and not os.path.isabs(os.path.expanduser(root)):
        raise ConfigError(f"{STORAGE_ENV}={root!r}: must be an absolute path or a URI (s3://, gs://, file://)")
    return root or None


def resolve_job_paths(cfg: Any) -> Any:
    """``cfg`` with its relative output paths placed under ``UNIMAT_STORAGE`` when this is a submitted Ray
    job; a ``ConfigError`` naming the key when ``UNIMAT_STORAGE`` is not set. Unchanged outside a job."""
    keys = _KEYS.get(type(cfg).__name__)
    if keys is None:
        return cfg
    workdir = ray_job_working_dir()
    if workdir is None:
        return cfg
    outputs, inputs = keys
    root = storage_root()
    for key in outputs:
        value = _get(cfg, key)
        if not _is_relative(value):
            continue
        if root is None:
            raise ConfigError(
                f"{key}: {value!r} is a relative path, and this command runs in a Ray job's working directory "
                f"({workdir}), a temporary copy that Ray deletes: give {key} an absolute path on storage every "
                f"node shares or a URI ({key}=s3://bucket/...), or set {STORAGE_ENV} to put relative paths under it "
                f"(ray job submit --runtime-env-json '{{\"env_vars\": {{\"{STORAGE_ENV}\": \"s3://bucket/unimat\"}}}}' ...)"
            )
        try:
            cfg = _set(cfg, key, _join(root, value))
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    if root is not None:
        for key in inputs:
            value = _get(cfg, key)
            if _is_relative(value) and not os.path.exists(value):
                try:
                    cfg = _set(cfg, key, _join(root, value))
                except ValueError:
                    continue
    return cfg


OUTPUT_FLAGS = ("out", "output_dir")
"""argparse destinations of the commands' output-folder flags (``--out``): local folders, so in a submitted
job they go under a *local* ``UNIMAT_STORAGE`` (a shared mount) or are refused."""


def resolve_output_flags(args: Any) -> Any:
    """``args`` (an argparse namespace) with a relative ``--out`` placed under a local ``UNIMAT_STORAGE``
    when this is a submitted Ray job; a ``ValueError`` naming the flag when that cannot be done. Unchanged
    outside a job."""
    workdir = ray_job_working_dir()
    if workdir is None:
        return args
    for dest in OUTPUT_FLAGS:
        value = getattr(args, dest, None)
        if not isinstance(value, (str, os.PathLike)) or not _is_relative(os.fspath(value)):
            continue
        flag = "--" + dest.replace("_", "-")
        root = storage_root()
        if root is None or ("://" in root and not root.startswith("file://")):
            raise ValueError(
                f"{flag} {os.fspath(value)!r} is a relative path, and this command runs in a Ray job's working "
                f"directory ({workdir}), a temporary copy that Ray deletes: pass an absolute path on storage "
                f"every node shares, or set {STORAGE_ENV} to such a local path (this flag writes local files)"
            )
        setattr(args, dest, type(value)(_join(root, os.fspath(value))) if not isinstance(value, str)
                else _join(root, value))
    return args
