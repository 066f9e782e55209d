"""Where a unimat job may write, what ``--overwrite`` may delete, and what "resume" means
(``unimat ingest``, ``unimat generate-batch``).

An operator typo must never cost data: ``--output`` pointed at the ingest's own source, at a home folder
or at another tool's results has to be refused, not emptied. The rule, for a job of one ``OutputLayout``:

1. The job file (``_job.json``, written before anything else) says which job owns a folder:
   ``{"job": "<kind>", "fingerprint": ..., "config": ...}``. No job file, or one of another kind: not ours.
2. Same kind and fingerprint: resume (or start afresh with ``overwrite``). Same kind, other fingerprint:
   refused, unless ``overwrite``.
3. ``overwrite`` deletes only files this job kind writes, recognised by their exact names (the layout's
   patterns: ``train/u000003-0.tar``, ``_units/u000003.json``, ``manifest.json``, their ``.tmp-`` partials),
   never anything else in the folder, never through a symlink, and only in a folder our job file owns;
   the job file goes last, so an interrupted overwrite can be repeated. Elsewhere it is refused.
4. A missing or empty folder is claimed. A non-empty folder without our job file is refused unless
   ``allow_nonempty``; even then a file with a name the job would write, or a symlinked folder the job
   would write into, is refused: it is not ours to replace.
5. Inputs (the ingest's source, a checkpoint, a request list) may not lie inside the output, nor the
   output inside them, whatever the flags.

Both jobs then run the same skeleton, ``UnitJob``: a job is a list of work units, each of which writes
its files and then, last, a commit record ``<units_dir>/<unit>.json`` carrying the job's fingerprint;
units with a valid commit record are skipped, the others run (locally or on Ray Data, as the job
chooses), every unit must end committed, and the manifest is written after all of them, then the
partial files of interrupted writes are swept. Resuming a killed job is rerunning it.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Sequence

from unimat_dist.storage import filesystem, is_local, join_uri, list_files, read_bytes, split_uri, write_bytes_atomic

log = logging.getLogger("unimat.output")

_TMP = r"\.tmp-[0-9a-f]{8}-"  # storage.write_bytes_atomic / put_file_atomic partials


@dataclass(frozen=True)
class OutputLayout:
    """What one kind of job writes under its output folder."""

    kind: str  # "ingest" | "generate-batch": recorded in the job file
    job_file: str  # relative path of the job file
    files: tuple[str, ...]  # regexes (full match) on the relative paths of the files the job writes
    dirs: tuple[str, ...]  # the sub-folders it writes into
    title: str = ""  # how messages name the job ("a different <title> job"); default: kind

    def owns(self, rel: str) -> bool:
        """Whether ``rel`` (a path relative to the output) is a name this kind of job writes."""
        head, _, base = rel.rpartition("/")
        names = [rel, f"{head}/{base[14:]}" if head else base[14:]] if re.match(_TMP, base) else [rel]
        return any(re.fullmatch(p, n) for p in self.files for n in names)


class OutputRefused(ValueError):
    """The output folder may not be written or cleared by this job (the message says why and what to do)."""


def _tree(output: str, opts: dict) -> tuple[list[str], list[str]]:
    """(files, symlinks) under ``output`` as relative paths, without following links; ([], []) if absent."""
    if is_local(output):
        root = split_uri(output)[1]
        if not os.path.isdir(root):
            if os.path.lexists(root):
                raise OutputRefused(f"{output} exists and is not a folder")
            return [], []
        files, links = [], []
        for d, dirnames, filenames in os.walk(root, followlinks=False):
            rel = os.path.relpath(d, root)
            pre = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            for name in dirnames + filenames:
                full = os.path.join(d, name)
                if os.path.islink(full):
                    links.append(pre + name)
                elif name in filenames:
                    files.append(pre + name)
        return sorted(files), sorted(links)
    fs, path = filesystem(output, opts)
    fs.invalidate_cache()
    try:
        found = fs.find(path)
    except FileNotFoundError:
        return [], []
    base = path.rstrip("/") + "/"
    return sorted(p[len(base):] for p in found if p.startswith(base)), []


def _owner(output: str, opts: dict, layout: OutputLayout) -> dict[str, Any] | None:
    """The job file's content if it is a unimat job file (``kind`` filled in for files of older versions)."""
    try:
        body = json.loads(read_bytes(join_uri(output, layout.job_file), opts))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict) or not isinstance(body.get("fingerprint"), str):
        return None
    if "job" not in body:  # written before the field existed: the config's sections tell the kind
        config = body.get("config") or {}
        body["job"] = "ingest" if "source" in config else "generate-batch" if "model" in config else None
    return body


def _norm(uri: str) -> str:
    if is_local(uri):
        return os.path.realpath(split_uri(uri)[1]).rstrip(os.sep) + os.sep
    scheme, path = split_uri(uri)
    return f"{scheme}://{path.strip('/')}/"


def check_disjoint(output: str, inputs: Iterable[str | None], what: str = "input") -> None:
    """Refuse an output that contains one of the inputs or lies inside one (symlinks resolved)."""
    out = _norm(output)
    for uri in inputs:
        if not uri:
            continue
        inp = _norm(uri)
        if inp.startswith(out) or out.startswith(inp):
            raise OutputRefused(
                f"output {output} overlaps the {what} {uri}: a job never writes into (or clears) its own inputs; "
                "choose an output folder outside them")


def _delete_owned(output: str, opts: dict, layout: OutputLayout, files: list[str]) -> int:
    """Delete the files of ``files`` this layout owns (the job file last); returns how many."""
    ours = [f for f in files if f != layout.job_file and layout.owns(f)]
    fs, path = filesystem(output, opts)
    for rel in ours + [layout.job_file]:
        target = join_uri(output, rel)
        if is_local(output):
            p = split_uri(target)[1]
            if os.path.lexists(p) and not os.path.islink(p):
                os.remove(p)
        else:
            fs.rm_file(filesystem(target, opts)[1])
    if is_local(output):  # folders the job made and that are now empty
        root = split_uri(output)[1]
        for d in sorted(layout.dirs, key=lambda d: -d.count("/")):
            p = os.path.join(root, d)
            if os.path.isdir(p) and not os.path.islink(p) and not os.listdir(p):
                os.rmdir(p)
    else:
        fs.invalidate_cache()
    return len(ours) + 1


def claim_output(
    output: str,
    opts: dict,
    layout: OutputLayout,
    fingerprint: str,
    config: dict[str, Any],
    *,
    overwrite: bool = False,
    allow_nonempty: bool = False,
    inputs: Iterable[str | None] = (),
    hint: str = "",
) -> str:
    """Apply the module's rule; returns "resume", "claimed" or "overwritten" (or raises ``OutputRefused``).

    ``hint`` is appended to the refusal of a different job of the same kind (e.g. why fingerprints differ).
    """
    check_disjoint(output, inputs)
    files, links = _tree(output, opts)
    job_present = layout.job_file in files
    owner = _owner(output, opts, layout) if job_present else None
    flag = "--overwrite (output.overwrite)"
    if owner is not None and owner.get("job") == layout.kind:
        if owner["fingerprint"] == fingerprint and not overwrite:
            return "resume"
        if not overwrite:
            raise OutputRefused(
                f"{output} holds the output of a different {layout.title or layout.kind} job (fingerprint {owner['fingerprint']}, this "
                f"job {fingerprint}){hint}; choose another output or pass {flag}, which deletes only that job's files")
        bad_links = [link for link in links if layout.owns(link) or link in layout.dirs]
        if bad_links:
            raise OutputRefused(f"{output}: {bad_links[:5]} are symlinks where the {layout.kind} job writes; "
                                "not deleting or writing through them")
        n = _delete_owned(output, opts, layout, files)
        kept = [f for f in files if f != layout.job_file and not layout.owns(f)]
        log.info("output.overwrite: deleted %d files of the previous %s job in %s%s", n, layout.kind, output,
                 f"; kept {len(kept)} other files" if kept else "")
        _write_job_file(output, opts, layout, fingerprint, config)
        return "overwritten"
    if job_present:
        theirs = owner.get("job") if owner else None
        what = f"{_a(theirs)} job" if theirs else "something that is not a unimat job file"
        raise OutputRefused(
            f"{output}/{layout.job_file} belongs to {what}, not to {_a(layout.kind)} job: refusing to "
            f"{'delete anything there' if overwrite else 'write there'}; choose another output")
    if files or links:
        if overwrite:
            raise OutputRefused(
                f"{output} is not empty and holds no {layout.kind} job file ({layout.job_file}), so nothing in it is "
                f"known to be ours: {flag} deletes only what {_a(layout.kind)} job wrote and will not touch it; choose "
                "another output (or an empty folder)")
        if not allow_nonempty:
            shown = ", ".join((files + links)[:5]) + (" ..." if len(files) + len(links) > 5 else "")
            raise OutputRefused(
                f"{output} is not empty ({len(files) + len(links)} entries: {shown}) and is not the output of this "
                f"{layout.kind} job; choose an empty or new folder, or allow writing next to other files with "
                "output.allow_nonempty=true (they are never modified)")
        clash = [f for f in files + links if layout.owns(f) or f in layout.dirs and f in links]
        if clash:
            raise OutputRefused(
                f"{output} already has {clash[:5]} where this {layout.kind} job would write, from no job of ours; "
                "refusing to replace them (output.allow_nonempty keeps other files, never overwrites them)")
    _write_job_file(output, opts, layout, fingerprint, config)
    return "claimed"


def sweep_partials(output: str, layout: OutputLayout) -> int:
    """Remove the ``.tmp-`` partial files of interrupted local writes of this layout's files (a file named
    ``.tmp-...`` that is not a partial of ours, e.g. in a shared folder, stays); returns how many."""
    if not is_local(output):
        return 0
    root = split_uri(output)[1]
    removed = 0
    for d in ("", *layout.dirs):
        folder = os.path.join(root, d)
        if not os.path.isdir(folder) or os.path.islink(folder):
            continue
        for name in os.listdir(folder):
            rel = f"{d}/{name}" if d else name
            full = os.path.join(folder, name)
            if re.match(_TMP, name) and layout.owns(rel) and os.path.isfile(full) and not os.path.islink(full):
                os.remove(full)
                removed += 1
    return removed


def _a(kind: str) -> str:
    return ("an " if kind[:1] in "aeiou" else "a ") + kind


def _write_job_file(output: str, opts: dict, layout: OutputLayout, fingerprint: str, config: dict[str, Any]) -> None:
    body = {"job": layout.kind, "fingerprint": fingerprint, "started_at": datetime.now(timezone.utc).isoformat(),
            "config": config}
    write_bytes_atomic(join_uri(output, layout.job_file), json.dumps(body, sort_keys=True, indent=1).encode(), opts)


def committed_units(output: str, opts: dict, units: Sequence[Any], fingerprint: str,
                    unit_name: Callable[[int], str], units_dir: str = "_units") -> dict[int, dict[str, Any]]:
    """What "resume" means for every unimat job: the commit records (``<units_dir>/<unit_name(i)>.json``,
    written last by a unit) already in ``output`` that carry this job's ``fingerprint`` and the unit's
    current ``digest()``; those units are skipped, every other one runs (again).

    ``units``: objects with ``index`` and ``digest()``. One GET per record, 16 in parallel (thousands of
    units in a bucket)."""
    from concurrent.futures import ThreadPoolExecutor

    wanted = {f"{unit_name(u.index)}.json": u for u in units}
    names = [n for n in list_files(join_uri(output, units_dir), opts) if n in wanted]
    with ThreadPoolExecutor(16) as pool:
        bodies = list(pool.map(lambda n: read_bytes(join_uri(output, units_dir, n), opts), names))
    done: dict[int, dict[str, Any]] = {}
    for name, body in zip(names, bodies):
        unit, rec = wanted[name], json.loads(body)
        if rec.get("fingerprint") == fingerprint and rec.get("digest") == unit.digest():
            done[unit.index] = rec
    return done


@dataclass
class UnitJob:
    """The resumable-unit skeleton of every unimat job, after its output is claimed (``claim_output``).

    ``units``: objects with ``index`` and ``digest()``; a unit's commit record is ``<units_dir>/
    <unit_name(index)>.json`` with ``"unit": index``. ``done`` (committed by an earlier run, skipped) and
    ``pending`` are known on construction, so a job can size its progress report before ``run``."""

    output: str
    opts: dict
    layout: OutputLayout
    fingerprint: str
    units: Sequence[Any]
    unit_name: Callable[[int], str]
    units_dir: str = "_units"
    done: dict[int, dict[str, Any]] = field(init=False)
    pending: list[Any] = field(init=False)

    def __post_init__(self) -> None:
        self.done = committed_units(self.output, self.opts, self.units, self.fingerprint, self.unit_name, self.units_dir)
        self.pending = [u for u in self.units if u.index not in self.done]
        if self.done:
            log.info("%d of %d units already committed; running the other %d", len(self.done), len(self.units),
                     len(self.pending))

    def run(self, run_pending: Callable[[list[Any]], Iterator[dict[str, Any]]],
            on_commit: Callable[[dict[str, Any]], None] | None = None) -> dict[int, dict[str, Any]]:
        """Every unit's commit record by index: the earlier ones and those ``run_pending(pending)`` yields
        (one per unit, as it commits). RuntimeError naming the units that did not commit."""
        records = dict(self.done)
        if self.pending:
            for rec in run_pending(self.pending):
                records[rec["unit"]] = rec
                if on_commit is not None:
                    on_commit(rec)
        missing = [self.unit_name(u.index) for u in self.units if u.index not in records]
        if missing:
            raise RuntimeError(f"units {missing[:10]} did not complete; rerun the same command to resume")
        return records

    def publish(self, manifest: dict[str, Any], name: str = "manifest.json", indent: int = 1) -> str:
        """Write ``manifest`` (atomically; the job's last file, so a reader never sees a partial job) and
        sweep the partials of interrupted writes of this layout's files; returns the manifest's URI."""
        muri = join_uri(self.output, name)
        write_bytes_atomic(muri, json.dumps(manifest, indent=indent).encode(), self.opts)
        swept = sweep_partials(self.output, self.layout)  # only partials of our own file names: the folder may be shared
        if swept:
            log.info("removed %d leftover temporary files of interrupted writes", swept)
        return muri
