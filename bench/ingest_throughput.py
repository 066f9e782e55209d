"""Ingest throughput and memory on a synthetic GNoME-sized release (issue 4's benchmark).

    python bench/ingest_throughput.py                       # 200k structures, all CPUs, ~5 min on 2 cores
    python bench/ingest_throughput.py --n 50000 --cpus 2    # smaller
    python bench/ingest_throughput.py --out bench/results/ingest_throughput.json

What it runs (all on the same synthetic GNoME-format release: summary CSV + by_id.zip, made by
perturbing the 12,746 bundled CDVAE structures, see data_pipeline/gnome_format.py):

1. where the time goes: per-stage cost of one structure, pymatgen path vs fast path;
2. the naive baseline: one process, a plain loop - csv row -> zipfile -> pymatgen CifParser ->
   numpy encode -> np.save -> tarfile.addfile;
3. the pipeline in one process (``run.executor=local``): same work units, fast CIF path;
4. the Ray Data job on N cores, at 20k and at the full size, with peak RSS of the driver and of the
   busiest worker (memory must stay flat as the input grows);
5. the Ray job with ``cif_parser=pymatgen``: scaling of the naive per-structure work on N cores.

Rates are structures read per second of job wall time (planning, commits and manifest included; Ray
start-up excluded: the cluster is started once, before the timed runs). The machine may be shared:
the load average is printed with every phase.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from data_pipeline.config import IngestConfig  # noqa: E402
from data_pipeline.gnome_format import read_bases, synthetic_entries, write_release  # noqa: E402
from data_pipeline.job import run_ingest  # noqa: E402
from unimat_dist.representation import UniMatSpec  # noqa: E402

L = 24  # wide enough for all perturbed bundled structures (carbon_24 has 24 C atoms)


class PeakRSS:
    """Samples the RSS of this process and of every descendant (Ray's workers) every 50 ms."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.driver = 0
        self.workers: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                self.driver = max(self.driver, self.me.memory_info().rss)
                for p in self.me.children(recursive=True):
                    try:
                        if "ray::" in " ".join(p.cmdline()[:1]) or p.name().startswith("ray::"):
                            self.workers[p.pid] = max(self.workers.get(p.pid, 0), p.memory_info().rss)
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
            except psutil.NoSuchProcess:
                pass
            self._stop.wait(0.05)

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def report(self) -> dict:
        return {"driver_mb": round(self.driver / 2**20, 1),
                "max_worker_mb": round(max(self.workers.values(), default=0) / 2**20, 1)}


def load() -> float:
    return round(os.getloadavg()[0], 2)


def make_release(workdir: Path, n: int) -> Path:
    out = workdir / f"gnome_{n}"
    if (out / "by_id.zip").exists() and (out / ".complete").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    bases = read_bases(sorted((ROOT / "data").glob("*/*.csv.gz")))
    rows = write_release(out, synthetic_entries(bases, n, seed=0), by_reduced_formula=False)
    (out / ".complete").write_text(str(rows))
    print(f"  generated {rows:,} synthetic structures in {time.perf_counter() - t:.1f} s -> {out}", flush=True)
    return out


def iter_release(release: Path, limit: int):
    """(MaterialId, CIF text) in summary order - the naive loop's reader."""
    with open(release / "stable_materials_summary.csv", newline="") as fh, zipfile.ZipFile(release / "by_id.zip") as zf:
        for k, row in enumerate(csv.DictReader(fh)):
            if k >= limit:
                return
            mid = row["MaterialId"]
            yield mid, zf.read(f"by_id/{mid}.CIF").decode(), row


def naive_loop(release: Path, limit: int, out: Path) -> dict:
    """pymatgen parse + numpy encode + tarfile write, one structure after another."""
    from unimat_dist.datasets import structure_from_cif
    from unimat_dist.representation import encode

    spec = UniMatSpec(L)
    t = time.perf_counter()
    n = 0
    with tarfile.open(out, "w") as tf:
        for mid, cif, row in iter_release(release, limit):
            try:
                x = encode(structure_from_cif(cif, mid), spec)
            except ValueError:
                continue
            for name, arr in (("positions.npy", x.positions.astype(np.float32)), ("mask.npy", x.mask), ("lattice.npy", x.lattice)):
                buf = io.BytesIO()
                np.save(buf, arr)
                info = tarfile.TarInfo(f"{mid}.{name}")
                info.size = buf.tell()
                buf.seek(0)
                tf.addfile(info, buf)
            meta = json.dumps({"id": mid, "formation_energy_per_atom": row["Formation Energy Per Atom"]}).encode()
            info = tarfile.TarInfo(f"{mid}.meta.json")
            info.size = len(meta)
            tf.addfile(info, io.BytesIO(meta))
            n += 1
    dt = time.perf_counter() - t
    return {"records": limit, "written": n, "seconds": round(dt, 2), "rate": round(limit / dt, 1)}


def stage_profile(release: Path, limit: int) -> dict:
    """Mean microseconds per structure of each stage, for the pymatgen and the fast path."""
    from data_pipeline.fast_cif import parse_p1_cif
    from data_pipeline.splits import formulas, split_of
    from data_pipeline.validate import validate_arrays
    from unimat_dist.shards.sample_format import pack_sample
    from unimat_dist.shards.tar_shards import ShardWriter
    from unimat_dist.datasets import structure_from_cif
    from unimat_dist.representation import encode_arrays, structure_arrays

    spec = UniMatSpec(L)
    items = list(iter_release(release, limit))
    acc: dict[str, float] = {}

    def timed(name, fn, *a):
        t = time.perf_counter()
        r = fn(*a)
        acc[name] = acc.get(name, 0.0) + time.perf_counter() - t
        return r

    w = ShardWriter(str(release.parent / "profile.tar"))
    for mid, cif, row in items:
        timed("parse: pymatgen CifParser", lambda: structure_arrays(structure_from_cif(cif)))
        z, frac, params = timed("parse: fast P1 reader", parse_p1_cif, cif)
        timed("validate (incl. min distance)", validate_arrays, z, frac, params, spec)
        x = timed("encode (UniMat arrays)", encode_arrays, z, frac, params, spec)
        timed("split (reduced formula hash)", lambda: split_of(formulas(z)[1], {"train": 1.0}))
        m = timed("pack (npz deflate + json)", pack_sample, x.positions, x.mask, x.lattice,
                  {"id": mid, "properties": {"e": 1.0}})
        timed("tar write", w.write, f"k{len(acc)}", m)
    w.close()
    return {k: round(v / len(items) * 1e6, 1) for k, v in acc.items()}


def ingest(release: Path, out: Path, executor: str, limit: int | None, parser: str = "fast",
           records_per_unit: int = 2048) -> dict:
    cfg = IngestConfig()
    cfg.source.format, cfg.source.uri, cfg.source.limit = "gnome", str(release), limit
    cfg.output.uri, cfg.output.records_per_unit, cfg.output.overwrite = str(out), records_per_unit, True
    cfg.spec.max_atoms_per_element = L
    cfg.validate.cif_parser = parser
    cfg.run.executor = executor
    cfg.run.scratch_dir = str(out.parent / "scratch")
    la = load()
    import psutil

    before = psutil.Process().memory_info().rss
    with PeakRSS() as rss:
        s = run_ingest(cfg)
    units = [json.loads(p.read_text()) for p in (out / "_units").glob("*.json")]
    shutil.rmtree(out, ignore_errors=True)
    cpu = sum(u["cpu_seconds"] for u in units)
    return {"records": s.read, "written": s.written, "quarantined": s.quarantined, "seconds": round(s.seconds, 2),
            "rate": round(s.read / s.seconds, 1), "records_per_worker_cpu_s": round(s.read / cpu, 1),
            "driver_growth_mb": round((rss.driver - before) / 2**20, 1), "load_after": load(),
            "shards": s.shards, "mb": round(s.bytes / 1e6, 1),
            "worker_ru_maxrss_mb": max(u["max_rss_mb"] for u in units), **rss.report(), "load_before": la,
            "bytes_per_sample": round(s.bytes / max(s.written, 1))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="structures in the large run")
    ap.add_argument("--small", type=int, default=20_000, help="structures in the small (memory) run")
    ap.add_argument("--naive", type=int, default=2_000, help="structures through the naive loop")
    ap.add_argument("--single", type=int, default=20_000, help="structures through the 1-process pipeline")
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--workdir", default="/tmp/unimat-bench")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ingest_throughput.json"))
    ap.add_argument("--phases", default="stages,naive,local,ray,pymatgen", help="comma-separated subset to run")
    args = ap.parse_args()
    phases = set(args.phases.split(","))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"cpus": args.cpus, "n": args.n, "machine": os.uname().nodename, "cpu_count": os.cpu_count()}

    print(f"[1/6] synthetic GNoME releases ({args.small:,} and {args.n:,} structures)", flush=True)
    small, big = make_release(work, args.small), make_release(work, args.n)

    if "stages" in phases:
        print("[2/6] per-stage cost (1,000 structures)", flush=True)
        res["stages_us"] = stage_profile(small, 1000)
        for k, v in res["stages_us"].items():
            print(f"  {k:<34} {v:>8.1f} us", flush=True)
    if "naive" in phases:
        print(f"[3/6] naive single-process loop ({args.naive:,} structures), load {load()}", flush=True)
        res["naive"] = naive_loop(small, args.naive, work / "naive.tar")
        print(f"  {res['naive']}", flush=True)
    if "local" in phases:
        print(f"[4/6] pipeline in one process, executor=local ({args.single:,} structures), load {load()}", flush=True)
        res["local"] = ingest(small, work / "local", "local", args.single)
        print(f"  {res['local']}", flush=True)
    if not phases & {"ray", "pymatgen"}:
        print(json.dumps(res, indent=1))
        return

    import ray

    from unimat_dist.ray_local import init_ray

    init_ray("local", num_cpus=args.cpus, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        ingest(small, work / "warm", "ray", 2 * 2048)  # warm the worker pool (imports) before timing
        if "ray" in phases:
            print(f"[5/6] Ray Data job on {args.cpus} CPUs: {args.small:,} and {args.n:,} structures", flush=True)
            res["ray_small"] = ingest(small, work / "ray_small", "ray", None)
            print(f"  {args.small:,}: {res['ray_small']}", flush=True)
            res["ray_big"] = ingest(big, work / "ray_big", "ray", None)
            print(f"  {args.n:,}: {res['ray_big']}", flush=True)
        if "pymatgen" in phases:
            print(f"[6/6] Ray job with cif_parser=pymatgen ({2 * args.naive:,} structures)", flush=True)
            res["ray_pymatgen"] = ingest(small, work / "ray_pmg", "ray", 2 * args.naive, parser="pymatgen",
                                         records_per_unit=250)
            print(f"  {res['ray_pymatgen']}", flush=True)
    finally:
        ray.shutdown()
    if phases != {"stages", "naive", "local", "ray", "pymatgen"}:
        print(json.dumps(res, indent=1))
        return

    n = args.cpus
    naive, local, big_r = res["naive"]["rate"], res["local"]["rate"], res["ray_big"]["rate"]
    per_cpu_local = res["local"]["records_per_worker_cpu_s"]
    per_cpu_ray = res["ray_big"]["records_per_worker_cpu_s"]
    res["summary"] = {
        "naive_rate_per_core": naive,
        "pipeline_rate_per_core": local,
        "per_structure_speedup_vs_naive": round(local / naive, 2),
        "ray_rate": big_r,
        "ray_rate_per_core": round(big_r / n, 1),
        "ray_vs_N_x_naive": round(big_r / (n * naive), 2),  # the goal: >= 0.8
        "ray_vs_N_x_pipeline_1proc": round(big_r / (n * local), 2),  # parallel efficiency of the same work
        "ray_pymatgen_vs_N_x_naive": round(res["ray_pymatgen"]["rate"] / (n * naive), 2),
        # per CPU-second of the workers: what Ray costs per unit of work, whatever else runs on the machine
        "records_per_cpu_s_local": per_cpu_local,
        "records_per_cpu_s_ray": per_cpu_ray,
        "ray_cpu_efficiency": round(per_cpu_ray / per_cpu_local, 2),
        "projected_2.2M_on_64_cores_s": round(2.2e6 / (64 * per_cpu_ray), 0),
    }
    print(json.dumps(res["summary"], indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"results -> {args.out}")


if __name__ == "__main__":
    main()
