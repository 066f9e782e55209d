"""Build the static gallery of a run folder.

Layout written to ``OUT`` (default ``RUN_DIR/gallery``)::

    index.html                 the page (open it from disk: works offline, no CDN, no server)
    static/                    viewer.js, cards.js, gallery.js, gallery.css (copied from the package)
    data/crystals.js           the facts of every crystal (one JSON blob) + metrics + references
    data/structures-NNNNN.js   the structures in chunks of 1000, loaded when a crystal is opened
    thumbs/<hash>.png          one thumbnail per distinct structure (kept between builds: the cache)
    cache/facts.json           facts by structure hash (kept between builds)

A run with a per-crystal table (``summary.json`` "crystals", see ``unimat_dist.crystal_files``; written by
``unimat sample`` and ``generate-batch``) gives the facts and the order; each row's structure comes from
``samples.extxyz`` (by ``name``), the row's ``cif``, or its generate-batch ``shard`` + ``shard_index``.
Without a table the crystals are found in this order: ``crystals.extxyz`` / ``samples.extxyz``,
``cif/*.cif``, ``shards/*.extxyz``, other ``*.extxyz`` / ``*.cif`` at the top; and their facts are computed
(``unimat_dist.crystal_facts`` + validity flags). A folder with none of these but sub-folders that have
them (e.g. a quickstart folder) gives one set per sub-folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATIC_FILES = ("viewer.js", "cards.js", "gallery.js", "gallery.css")
STATIC_DIR = Path(__file__).resolve().parent / "static"
CHUNK = 1000
# structures rendered in-process below this count: a thumbnail takes ~20 ms and a spawned worker pool ~3.5 s
# to start (imports), so a 20-crystal `unimat sample` gallery takes 0.4 s in-process vs 4.0 s on a pool
MIN_PARALLEL = 200
METRIC_KEYS = ("struct_validity", "comp_validity", "valid_rate", "structure_valid_rate", "composition_valid_rate",
               "cov_recall", "cov_precision", "amsd_recall", "amsd_precision", "emd_density", "emd_property",
               "emd_num_elements", "match_rate", "rmse", "uniqueness", "novelty")


@dataclass
class Entry:
    """One crystal of the run before its facts are computed."""

    id: str
    structure: Any | None  # pymatgen Structure
    error: str | None = None
    info: dict = field(default_factory=dict)  # numbers / flags read with the structure (extxyz info, CSV columns)
    files: dict = field(default_factory=dict)  # format -> path of the run's own file
    set: str | None = None


@dataclass
class GalleryResult:
    path: Path  # index.html
    crystals: int
    references: int
    seconds: float
    timings: dict


# ---------------------------------------------------------------- what a gallery folder holds

# the files build_gallery writes, relative to its folder (full-match regexes): a run's --overwrite removes a
# gallery folder only when everything in it is one of these (anything else there is someone else's)
GALLERY_FILES = (
    r"[^/]+\.html",
    r"static/(viewer\.js|cards\.js|gallery\.js|gallery\.css|LICENSE-viewer\.txt)",
    r"data/crystals\.js",
    r"data/structures-\d{5}\.js",
    r"thumbs/[0-9a-f]{20}-v\d+\.png",
    r"cache/facts\.json",
)
GALLERY_SUBDIRS = ("static", "data", "thumbs", "cache")


def gallery_files(folder: str | Path) -> list[Path] | None:
    """The files of a gallery folder written by ``build_gallery``, or None when it holds anything else (another
    file, a symlink, a folder of its own) or is not a folder; [] for an absent folder."""
    import re

    root = Path(folder)
    if not root.exists() and not root.is_symlink():
        return []
    if root.is_symlink() or not root.is_dir():
        return None
    out = []
    for d, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(d).relative_to(root).as_posix()
        for name in dirnames:
            if os.path.islink(os.path.join(d, name)) or rel_dir != "." or name not in GALLERY_SUBDIRS:
                return None
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            full = Path(d) / name
            if full.is_symlink() or not any(re.fullmatch(p, rel) for p in GALLERY_FILES):
                return None
            out.append(full)
    return out


def remove_gallery(folder: str | Path) -> int | None:
    """Delete a gallery folder written by ``build_gallery`` (its files, then its empty folders); returns how
    many files, or None (deleting nothing) when it holds anything ``build_gallery`` does not write."""
    files = gallery_files(folder)
    if files is None:
        return None
    for f in files:
        f.unlink()
    root = Path(folder)
    for sub in GALLERY_SUBDIRS:
        if (root / sub).is_dir() and not any((root / sub).iterdir()):
            (root / sub).rmdir()
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    return len(files)


# ---------------------------------------------------------------- reading a run

def _info_values(info: dict) -> dict:
    """An extxyz ``info`` / record metadata as JSON-able facts (``"none"`` -> None, JSON ``elements``)."""
    try:
        from unimat_dist.crystal_files import facts_from_info
    except ImportError:  # pragma: no cover - older trees
        facts_from_info = dict
    out = {}
    for k, v in facts_from_info(dict(info)).items():
        if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            v = v.item()
        if isinstance(v, (bool, str, int, float)) or v is None or (k == "elements" and isinstance(v, list)):
            out[k] = v
    return out


def _records_to_entries(records, files_for=None, set_name=None) -> list[Entry]:
    out = []
    for rec in records:
        info = _info_values({**rec.properties, **rec.metadata})
        files = files_for(rec) if files_for else {}
        out.append(Entry(str(rec.id), rec.structure, rec.error, info, files, set_name))
    return out


def _table_rows(run: Path) -> list[dict] | None:
    """The per-crystal rows of a run's ``summary.json`` (``"crystals"``; see unimat_dist.crystal_files)."""
    path = run / "summary.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    rows = data.get("crystals") if isinstance(data, dict) else data
    if isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows):
        return rows
    return None


FILE_KEYS = ("cif", "cif_sym", "poscar")


def _load_table_run(run: Path, rows: list[dict], limit: int | None, set_name: str | None) -> list[Entry] | None:
    """Entries from a run with a per-crystal table: facts from the rows, structures from samples.extxyz (or
    the rows' CIFs), file links from the rows. None when the structures cannot be matched to the rows."""
    from unimat_dist.evaluation.structures_io import load_structures

    rows = [r for r in rows if r.get("decoded") is not False or r.get("cif")]
    if limit is not None:
        rows = rows[:limit]
    by_name = {}
    for name in ("crystals.extxyz", "samples.extxyz"):
        if (run / name).is_file():
            for rec in load_structures(run / name):
                info = _info_values({**rec.properties, **rec.metadata})
                key = info.get("name", rec.id)
                by_name[str(key)] = rec
            break
    shards: dict[str, list] = {}  # generate-batch: rows name their shard and position in it
    for row in rows:
        shard = row.get("shard")
        if shard and shard not in shards:
            shards[shard] = _read_shard(run / shard)
    out = []
    for n, row in enumerate(rows):
        name = str(row.get("name", row.get("index", n)))
        rec = by_name.get(name)
        structure, error = (rec.structure, rec.error) if rec is not None else (None, None)
        shard, pos = row.get("shard"), row.get("shard_index")
        if structure is None and shard and isinstance(pos, int) and 0 <= pos < len(shards.get(shard, [])):
            structure, error = shards[shard][pos]
        if structure is None and row.get("cif") and (run / row["cif"]).is_file():
            recs = load_structures(run / row["cif"])
            structure, error = recs[0].structure, recs[0].error
        if structure is None and error is None:
            error = "did not decode" if row.get("decoded") is False else "no structure file"
        info = {k: v for k, v in row.items()
                if k not in FILE_KEYS and k not in ("extxyz_frame", "name", "index", "shard", "shard_index")}
        info = _info_values(info)
        if "index" in row:
            info["index"] = row["index"]
        files = {k: run / row[k] for k in FILE_KEYS if row.get(k) and (run / row[k]).is_file()}
        out.append(Entry(f"{set_name}/{name}" if set_name else name, structure, error, info, files, set_name))
    return out


def _read_shard(path: Path) -> list[tuple[Any, str | None]]:
    """(structure or None, error) of every crystal of a generate-batch shard (multi-block CIF or extxyz),
    in file order; a block that does not parse keeps its place with its error."""
    if not path.is_file():
        return []
    if path.suffix == ".cif":
        import re
        import warnings

        from pymatgen.io.cif import CifParser

        out = []
        text = path.read_text(encoding="utf-8", errors="replace")
        for block in re.split(r"\n(?=data_)", text):
            if "data_" not in block:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    out.append((CifParser.from_str(block).parse_structures(primitive=False, on_error="raise")[0], None))
                except Exception as exc:  # pymatgen raises several types for CIFs it refuses
                    out.append((None, f"{type(exc).__name__}: {exc}"[:300]))
        return out
    from unimat_dist.evaluation.structures_io import load_structures

    return [(r.structure, r.error) for r in load_structures(path)]


def _find_sets(run: Path) -> list[tuple[str, Path, str]]:
    """(kind, path, description) of the crystal files directly in ``run``."""
    for name in ("crystals.extxyz", "samples.extxyz"):
        if (run / name).is_file():
            return [("extxyz", run / name, name)]
    if (run / "cif").is_dir() and any((run / "cif").glob("*.cif")):
        return [("cif_dir", run / "cif", "cif/")]
    shards = sorted((run / "shards").glob("*.extxyz")) if (run / "shards").is_dir() else []
    if shards:
        return [("extxyz", p, f"shards/{p.name}") for p in shards]
    found = [("extxyz", p, p.name) for p in sorted(run.glob("*.extxyz"))]
    if not found and any(run.glob("*.cif")):
        found = [("cif_dir", run, "*.cif")]
    return found


def load_run(run_dir: str | Path, limit: int | None = None) -> list[Entry]:
    """The crystals of a run folder (see the module docstring), or of one structure file."""
    from unimat_dist.evaluation.structures_io import load_structures

    run = Path(run_dir)
    if not run.exists():
        raise FileNotFoundError(f"{run}: no such run folder or file")
    if run.is_file():
        return _records_to_entries(load_structures(run, limit=limit))
    groups: list[tuple[str | None, Path]] = []
    if _table_rows(run) or _find_sets(run):
        groups.append((None, run))
    else:
        for sub in sorted(p for p in run.iterdir() if p.is_dir() and p.name not in ("gallery", "train")):
            if _table_rows(sub) or _find_sets(sub):
                groups.append((sub.name, sub))
    if not groups:
        raise FileNotFoundError(
            f"{run}: no crystals found (expected summary.json + samples.extxyz / cif/, crystals.extxyz, "
            f"cif/*.cif, shards/*.extxyz or *.extxyz / *.cif, or sub-folders holding them)")
    entries: list[Entry] = []
    for set_name, base in groups:
        left = None if limit is None else limit - len(entries)
        if left is not None and left <= 0:
            break
        rows = _table_rows(base)
        if rows:
            entries += _load_table_run(base, rows, left, set_name)
            continue
        sets = _find_sets(base)
        for kind, path, _desc in sets:
            left = None if limit is None else limit - len(entries)
            if left is not None and left <= 0:
                break
            if kind == "cif_dir":
                def files_for(rec, path=path, poscar_dir=base / "poscar"):
                    f = {"cif": path / f"{rec.id}.cif"}
                    for ext in (".vasp", ".poscar", ""):
                        q = poscar_dir / f"{rec.id}{ext}"
                        if q.is_file():
                            f["poscar"] = q
                            break
                    return f
                new = _records_to_entries(load_structures(path, limit=left), files_for, set_name)
            else:
                new = _records_to_entries(load_structures(path, limit=left), None, set_name)
            for e in new:
                name = e.info.pop("name", None)
                rid, sample = e.info.get("request_id"), e.info.get("sample")
                if name is not None:
                    local = str(name)
                elif rid is not None and sample is not None:
                    local = f"{rid}-{int(sample)}"
                elif len(sets) > 1:
                    local = f"{path.stem}:{e.id}"
                else:
                    local = e.id
                e.id = f"{set_name}/{local}" if set_name else local
            entries += new
    return entries


# ---------------------------------------------------------------- facts + thumbnails (worker side)

def structure_hash(matrix, species, frac) -> str:
    h = hashlib.sha1()
    h.update(json.dumps([[round(float(x), 4) for x in row] for row in matrix]).encode())
    h.update(" ".join(species).encode())
    h.update(json.dumps([[round(float(x) % 1.0, 4) for x in row] for row in frac]).encode())
    return h.hexdigest()[:20]


def compute_facts(structure, info: dict | None = None) -> dict:
    """Per-crystal facts (``unimat_dist.crystal_facts``) with validity flags computed when the run gave none."""
    from unimat_dist.crystal_facts import crystal_facts
    from unimat_dist.generation.records import validity_flags

    flags = validity_flags(structure)
    flags.pop("matches_request", None)  # needs the request: only the run knows it
    return crystal_facts(structure, flags=flags)


def _work(task: tuple) -> tuple[str, dict | None, bool, str | None]:
    """(hash, facts or None, thumbnail written, error) for one structure (runs in a worker process)."""
    h, matrix, species, frac, thumb_path, need_facts = task
    facts, wrote, err = None, False, None
    try:
        if need_facts:
            from pymatgen.core import Lattice, Structure

            facts = compute_facts(Structure(Lattice(matrix), species, frac))
            facts.pop("matches_request", None)
            facts = json.loads(json.dumps(facts, default=_json_default))
        if thumb_path:
            from .thumbs import render_thumbnail

            render_thumbnail(matrix, species, frac, thumb_path)
            wrote = True
    except Exception as exc:  # one bad structure must not stop the gallery
        err = f"{type(exc).__name__}: {exc}"
    return h, facts, wrote, err


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


# ---------------------------------------------------------------- references and metrics

def load_references(spec: str, formulas: set[str], per_formula: int = 4, limit: int = 20000) -> list[Entry]:
    """Reference crystals (a path or NAME:SPLIT) whose reduced formula is one of ``formulas``; at most
    ``per_formula`` of each."""
    from unimat_dist.evaluation.sources import resolve_source
    from unimat_dist.evaluation.structures_io import load_structures

    path, note = resolve_source(spec)
    log.info("references: %s", note)
    kept: dict[str, int] = {}
    out = []
    for e in _records_to_entries(load_structures(path, limit=limit), set_name="reference"):
        if e.structure is None:
            continue
        f = e.structure.composition.reduced_formula
        if f in formulas and kept.get(f, 0) < per_formula:
            kept[f] = kept.get(f, 0) + 1
            out.append(e)
    return out


def find_metrics(run: Path, explicit: str | Path | None = None) -> tuple[list[dict], str | None]:
    """COV / EMD / validity numbers of the run's evaluation report (``metrics.json`` in the run, its
    ``report/`` or ``eval/`` folder, or ``explicit``) as [{"group": "proxy.model", "values": {name: value}}]:
    one group per JSON object that holds any of METRIC_KEYS."""
    candidates = [Path(explicit)] if explicit else []
    if run.is_dir():
        for sub in ("", "report", "eval", "evaluation"):
            for name in ("metrics.json", "report.json", "proxy.json"):
                candidates.append(run / sub / name)
    for path in candidates:
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        groups: list[dict] = []

        def walk(d, prefix):
            if isinstance(d, dict):
                values = {k: float(v) for k, v in d.items() if k in METRIC_KEYS and isinstance(v, (int, float))
                          and not isinstance(v, bool) and math.isfinite(v)}
                if values:
                    groups.append({"group": prefix or path.stem, "values": values})
                for k, v in d.items():
                    if isinstance(v, dict):
                        walk(v, f"{prefix}.{k}" if prefix else str(k))
        walk(data, "")
        if groups:
            return groups[:12], str(path)
    return [], None


# ---------------------------------------------------------------- the build

def _js_assign(name: str, obj) -> str:
    text = json.dumps(obj, separators=(",", ":"), default=_json_default, allow_nan=False)
    return f"{name} = JSON.parse({json.dumps(text)});\n"


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def build_gallery(run_dir: str | Path, out: str | Path | None = None, *, reference: str | None = None,
                  limit: int | None = None, workers: int | None = None, metrics: str | Path | None = None,
                  title: str | None = None, thumbnails: bool = True, per_reference: int = 4,
                  entries: list[Entry] | None = None, progress: bool = True,
                  single_file: str | Path | None = None) -> GalleryResult:
    """Write the gallery of ``run_dir`` to ``out`` (a folder, default ``RUN_DIR/gallery``; an ``.html`` path
    names the page and its folder) and return where it is. ``entries`` bypasses reading the run.
    ``single_file``: also write one HTML file with everything inlined (scripts, styles, data, thumbnails as
    data URLs) that can be mailed or archived on its own (sensible up to a few thousand crystals)."""
    from unimat_dist.parallel import parallel_map
    from unimat_dist.generation.records import structure_to_json

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    run = Path(run_dir)
    out_path = Path(out) if out is not None else (run if run.is_dir() else run.parent) / "gallery"
    page_name = "index.html"
    if out_path.suffix.lower() in (".html", ".htm"):
        page_name, out_path = out_path.name, out_path.parent
    for sub in ("static", "data", "thumbs", "cache"):
        (out_path / sub).mkdir(parents=True, exist_ok=True)

    if entries is None:
        entries = load_run(run, limit=limit)
    elif limit is not None:
        entries = entries[:limit]
    timings["load_s"] = time.perf_counter() - t0

    refs: list[Entry] = []
    if reference:
        t = time.perf_counter()
        formulas = {e.structure.composition.reduced_formula for e in entries if e.structure is not None}
        refs = load_references(reference, formulas, per_formula=per_reference)
        timings["references_s"] = time.perf_counter() - t

    cache_file = out_path / "cache" / "facts.json"
    try:
        cache = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    except ValueError:
        cache = {}
    cache_key = "crystal_facts-v1"
    facts_cache: dict = cache.get(cache_key, {})

    from .thumbs import THUMB_VERSION

    tasks, hashes, seen = [], [], set()
    for e in entries + refs:
        if e.structure is None:
            hashes.append(None)
            continue
        s = e.structure
        matrix = s.lattice.matrix.tolist()
        species = [site.specie.symbol for site in s]
        frac = s.frac_coords.tolist()
        h = structure_hash(matrix, species, frac)
        hashes.append(h)
        if h in seen:
            continue
        seen.add(h)
        thumb = out_path / "thumbs" / f"{h}-v{THUMB_VERSION}.png"
        need_thumb = thumbnails and not thumb.is_file()
        need_facts = h not in facts_cache and not ("formula" in e.info and "spacegroup_symbol" in e.info)
        if need_thumb or need_facts:
            tasks.append((h, matrix, species, frac, str(thumb) if need_thumb else None, need_facts))
    t = time.perf_counter()
    results = parallel_map(_work, tasks, workers=workers, desc="gallery", progress=progress,
                           min_parallel=MIN_PARALLEL)
    timings["facts_thumbnails_s"] = time.perf_counter() - t
    timings["rendered"] = sum(1 for r in results if r[2])
    timings["cached"] = len(seen) - len(tasks)
    errors = {}
    for h, facts, _wrote, err in results:
        if facts is not None:
            facts_cache[h] = facts
        if err:
            errors[h] = err
    if errors:
        log.warning("gallery: %d structures failed (first: %s)", len(errors), next(iter(errors.values())))
    cache[cache_key] = facts_cache
    cache_file.write_text(json.dumps(cache, separators=(",", ":")))

    t = time.perf_counter()
    page_dir = out_path

    def row(e: Entry, h: str | None, idx: int) -> dict:
        r: dict[str, Any] = {"id": e.id}
        if e.set:
            r["set"] = e.set
        if h is not None:
            r.update(facts_cache.get(h, {}))
            thumb = out_path / "thumbs" / f"{h}-v{THUMB_VERSION}.png"
            if thumb.is_file():
                r["thumbnail"] = _rel(thumb, page_dir)
            r["hash"] = h
        else:
            r.update({"formula": None, "valid": False, "error": e.error or "no structure"})
        for k, v in e.info.items():  # the run's own flags and energies win over recomputed ones
            if k in ("sample",) or (k in r and k in ("formula", "elements")) or (v is None and r.get(k) is not None):
                continue
            r[k] = _clean(v)
        sv, cv = r.get("structure_valid"), r.get("composition_valid")
        if "valid" not in r and isinstance(sv, bool) and isinstance(cv, bool):
            r["valid"] = sv and cv
        files = {k: _rel(Path(p), page_dir) for k, p in e.files.items()}
        if files:
            r["files"] = files
        if h is not None and h in errors:
            r["error"] = errors[h]
        return {k: _clean(v) for k, v in r.items() if _clean(v) is not None}

    crystals = [row(e, hashes[i], i) for i, e in enumerate(entries)]
    ref_rows = []
    for j, e in enumerate(refs):
        rr = row(e, hashes[len(entries) + j], j)
        rr["structure"] = structure_to_json(e.structure)
        ref_rows.append(rr)
    by_formula: dict[str, list[int]] = {}
    for j, rr in enumerate(ref_rows):
        by_formula.setdefault(rr.get("formula") or "", []).append(j)

    metric_values, metric_source = find_metrics(run, metrics)
    meta = {
        "title": title or f"Crystals of {run.resolve().name}",
        "run": str(run.resolve()),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "count": len(crystals),
        "chunk": CHUNK,
        "chunks": [],
        "reference": reference,
        "metrics": metric_values,
        "metrics_source": metric_source,
        "facts_source": ("run table" if entries and "spacegroup_symbol" in entries[0].info
                         else "unimat_dist.crystal_facts"),
    }
    for old in (out_path / "data").glob("structures-*.js"):
        old.unlink()
    for c0 in range(0, len(entries), CHUNK):
        name = f"structures-{c0 // CHUNK:05d}.js"
        chunk = [structure_to_json(e.structure) if e.structure is not None else None for e in entries[c0:c0 + CHUNK]]
        for s in chunk:
            if s is not None:
                s.pop("cart_coords", None)
                s["lattice"] = {"matrix": [[round(x, 6) for x in r] for r in s["lattice"]["matrix"]]}
                s["frac_coords"] = [[round(x, 6) for x in r] for r in s["frac_coords"]]
        text = json.dumps(chunk, separators=(",", ":"))
        (out_path / "data" / name).write_text(f"UnimatGallery.addStructures({c0}, JSON.parse({json.dumps(text)}));\n")
        meta["chunks"].append(f"data/{name}")
    (out_path / "data" / "crystals.js").write_text(
        _js_assign("window.UNIMAT_GALLERY_DATA", {"meta": meta, "crystals": crystals, "references": ref_rows,
                                                   "references_by_formula": by_formula}))
    for name in STATIC_FILES:
        shutil.copyfile(STATIC_DIR / name, out_path / "static" / name)
    shutil.copyfile(STATIC_DIR / "LICENSE-viewer.txt", out_path / "static" / "LICENSE-viewer.txt")
    html = (STATIC_DIR / "gallery.html").read_text().replace("{{TITLE}}", _html_escape(meta["title"]))
    (out_path / page_name).write_text(html)
    if single_file:
        single = Path(single_file)
        single.parent.mkdir(parents=True, exist_ok=True)
        single.write_text(_inline_page(html, out_path, crystals, ref_rows))
    timings["write_s"] = time.perf_counter() - t
    seconds = time.perf_counter() - t0
    log.info("gallery: %d crystals (%d references) -> %s in %.1f s", len(crystals), len(ref_rows),
             out_path / page_name, seconds)
    return GalleryResult(out_path / page_name, len(crystals), len(ref_rows), seconds, timings)


def _inline_script(text: str) -> str:
    return "<script>\n" + text.replace("</script", "<\\/script").replace("<!--", "<\\!--") + "\n</script>"


def _inline_page(html: str, out_path: Path, crystals: list[dict], refs: list[dict]) -> str:
    """The page with every file it loads inlined (see ``build_gallery(single_file=...)``)."""
    import base64

    def data_url(rel: str | None) -> str | None:
        if not rel:
            return rel
        return "data:image/png;base64," + base64.b64encode((out_path / rel).read_bytes()).decode()

    for name in ("viewer.js", "cards.js", "gallery.js"):
        html = html.replace(f'<script src="static/{name}"></script>',
                            _inline_script((STATIC_DIR / name).read_text()))
    html = html.replace('<link rel="stylesheet" href="static/gallery.css">',
                        "<style>\n" + (STATIC_DIR / "gallery.css").read_text() + "\n</style>")
    text = (out_path / "data" / "crystals.js").read_text()
    prefix = "window.UNIMAT_GALLERY_DATA = JSON.parse("
    data = json.loads(json.loads(text[len(prefix):text.rindex(")")]))
    for row in data["crystals"] + data["references"]:
        if row.get("thumbnail"):
            row["thumbnail"] = data_url(row["thumbnail"])
        row.pop("files", None)  # links into the run folder do not travel with one file
    chunks = "".join(_inline_script((out_path / c).read_text()) for c in data["meta"]["chunks"])
    html = html.replace('<script src="data/crystals.js"></script>',
                        chunks + _inline_script(_js_assign("window.UNIMAT_GALLERY_DATA", data)))
    return html


def _html_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def write_gallery(run_dir: str | Path, out: str | Path | None = None, **kwargs) -> Path | None:
    """The hook for ``unimat sample`` / ``generate-batch`` / ``evaluate`` / quickstart: build the gallery of
    ``run_dir`` (into ``RUN_DIR/gallery`` by default) and return the page, or log a warning and return None
    when it cannot be built (a gallery must never fail the run that produced the crystals)."""
    kwargs.setdefault("progress", False)
    try:
        return build_gallery(run_dir, out, **kwargs).path
    except Exception as exc:  # noqa: BLE001 - the hook must not fail its run
        log.warning("gallery for %s not written: %s: %s", run_dir, type(exc).__name__, exc)
        return None
