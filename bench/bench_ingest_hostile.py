"""Peak memory of an ingest of adversarial files vs ordinary files (issue 16's benchmark).

    python -m bench ingest-hostile                       # ~1 min on 2 cores, ~1.3 GB of scratch disk
    python bench/bench_ingest_hostile.py --good 200 --out bench/results/ingest_hostile.json

Two child processes, measured the same way (``os.wait4`` rusage of the child: peak RSS), each run the
same three ingests (``run.executor=local``, default ``validate`` limits) on a folder of structure files,
a zip of them and a CDVAE CSV:

* ordinary: ``--good`` real structures (bundled MP-20 subset) in each source;
* adversarial: the same structures plus the files of the issue, generated here at run time:
  a 10,000-atom CIF (0.5 MB), a 1e12 A lattice, a .gz inflating to 300 MB, a 300 MB plain CIF (sparse
  on disk), a symlink out of the folder; a zip with a 600 MB member (0.6 MB compressed), ``../x.cif``
  and a duplicated member; a CSV with a 100 MB row, an over-long, a short and a non-UTF-8 row, a
  10,000-atom row and a duplicate id.

Before issue 16 these cost 7.1 GB (10k-atom CIF), 1.3 GB (zip member) and 0.66 GB (.gz). The goal:
adversarial peak RSS <= 2x ordinary. Prints both and the ratio; writes the JSON result.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MB = 1 << 20


def _good(n: int) -> list[tuple[str, str]]:
    from unimat_dist.datasets import iter_cdvae_csv

    return [(r.id, r.cif) for r in itertools.islice(iter_cdvae_csv(ROOT / "data/mp_20_subset/train.csv.gz"), n)]


def _many_atoms_cif(n: int = 10_000) -> str:
    import numpy as np

    from data_pipeline.gnome_format import p1_cif

    rng = np.random.default_rng(0)
    return p1_cif(rng.integers(1, 84, n), rng.random((n, 3)), np.array([60.0, 60, 60, 90, 90, 90]))


def _huge_lattice_cif() -> str:
    import numpy as np

    from data_pipeline.gnome_format import p1_cif

    return p1_cif(np.array([11, 17]), np.array([[0.0, 0, 0], [0.5, 0.5, 0.5]]), np.array([1e12, 5.0, 5.0, 90, 90, 90]))


def _csv_row(i: int, mid: str, cif: str) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([i, mid, "-1.0", cif])
    return buf.getvalue().encode()


def make_sources(base: Path, kind: str, n_good: int) -> dict[str, Path]:
    """The three sources of one kind ("ordinary" | "adversarial") under ``base``."""
    good = _good(n_good)
    root = base / kind
    folder, zpath, csvdir = root / "folder", root / "archive.zip", root / "csv"
    folder.mkdir(parents=True)
    csvdir.mkdir()
    for k, (_, cif) in enumerate(good):
        (folder / f"g{k:04d}.cif").write_text(cif)
    rows = [_csv_row(k, mid, cif) for k, (mid, cif) in enumerate(good)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the duplicate member name is on purpose
        with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
            for k, (_, cif) in enumerate(good):
                zf.writestr(f"g{k:04d}.cif", cif)
            if kind == "adversarial":
                zf.writestr("../x.cif", good[0][1])
                zf.writestr("g0000.cif", good[1][1])
                with zf.open("bomb.cif", "w", force_zip64=True) as member:  # 600 MB of text in ~0.6 MB
                    chunk = b"#" * (8 * MB)
                    for _ in range(75):
                        member.write(chunk)
    if kind == "adversarial":
        (folder / "many_atoms.cif").write_text(_many_atoms_cif())
        (folder / "huge_lattice.cif").write_text(_huge_lattice_cif())
        with gzip.open(folder / "inflates.cif.gz", "wb", compresslevel=1) as gz:  # 300 MB decompressed
            gz.write(good[0][1].encode())
            chunk = b"#" * (8 * MB)
            for _ in range(37):
                gz.write(chunk)
        with open(folder / "huge.cif", "wb") as fh:  # 300 MB, sparse: costs no disk, reads as zeros
            fh.truncate(300 * MB)
        outside = root / "outside.cif"
        outside.write_text(good[2][1])
        os.symlink(outside, folder / "link_out.cif")
        n = len(rows)
        rows += [
            _csv_row(n, "big-row", "data_x\n#"),  # replaced by a streamed 100 MB row below
            _csv_row(n + 1, "over", good[0][1])[:-1] + b",extra\n",
            b'%d,short,"x"\n' % (n + 2),
            _csv_row(n + 3, "bad-\xff", good[0][1]).replace(b"bad-\xc3\xbf", b"bad-\xff"),
            _csv_row(n + 4, "many", _many_atoms_cif()),
            _csv_row(n + 5, good[0][0], good[0][1]),  # duplicate id
        ]
    with open(csvdir / "train.csv", "wb") as fh:
        fh.write(b",material_id,formation_energy_per_atom,cif\n")
        for r in rows:
            if r.startswith(b"%d,big-row," % (len(good))):
                fh.write(r[: r.index(b"#")])
                chunk = b"#" * (8 * MB)
                for _ in range(12):  # ~100 MB field
                    fh.write(chunk)
                fh.write(b'"\n')
            else:
                fh.write(r)
    return {"structure-dir": folder, "zip": zpath, "cdvae-csv": csvdir}


def child(kind: str, workdir: Path) -> None:
    """Run the three ingests of one kind in this process; print their summaries as JSON."""
    import resource

    from data_pipeline.config import IngestConfig
    from data_pipeline.job import run_ingest

    sources = json.loads((workdir / f"{kind}.json").read_text())
    result = {}
    for name, src in sources.items():
        cfg = IngestConfig()
        cfg.source.format = "cdvae-csv" if name == "cdvae-csv" else "structure-dir"
        cfg.source.uri = src
        cfg.output.uri = str(workdir / "out" / kind / name)
        cfg.output.records_per_unit = 64
        cfg.spec.max_atoms_per_element = 20
        cfg.run.executor = "local"
        t0 = time.perf_counter()
        s = run_ingest(cfg)
        result[name] = {"read": s.read, "written": s.written, "quarantined": s.quarantined,
                        "quarantined_by_reason": s.quarantined_by_reason, "not_read": s.not_read,
                        "seconds": round(time.perf_counter() - t0, 2),
                        "peak_rss_mb_so_far": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    print(json.dumps(result))


def measure(kind: str, workdir: Path) -> tuple[float, dict]:
    """Peak RSS (MB) of a child process running ``child(kind)``, from the kernel's rusage of that child."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, __file__, "--child", kind, "--workdir", str(workdir)],
                            stdout=subprocess.PIPE, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} ingest failed (exit {proc.returncode})")
    return usage.ru_maxrss / 1024, json.loads(out.decode().strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--good", type=int, default=200, help="ordinary structures per source")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ingest_hostile.json"))
    ap.add_argument("--workdir", help="scratch folder (default: a new temp folder, removed afterwards)")
    ap.add_argument("--child", choices=["ordinary", "adversarial"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, Path(args.workdir))
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="unimat-hostile-"))
    try:
        t0 = time.perf_counter()
        for kind in ("ordinary", "adversarial"):
            srcs = make_sources(workdir / "src", kind, args.good)
            (workdir / f"{kind}.json").write_text(json.dumps({k: str(v) for k, v in srcs.items()}))
        print(f"generated the sources in {time.perf_counter() - t0:.1f} s under {workdir}")
        rss, runs = {}, {}
        for kind in ("ordinary", "adversarial"):
            rss[kind], runs[kind] = measure(kind, workdir)
            print(f"{kind:12s} peak RSS {rss[kind]:7.1f} MB | " + " | ".join(
                f"{name}: read {r['read']} = written {r['written']} + quarantined {r['quarantined']} ({r['seconds']} s)"
                for name, r in runs[kind].items()))
        for name, r in runs["adversarial"].items():
            print(f"  adversarial {name}: {r['quarantined_by_reason']} not read: {r['not_read']}")
        ratio = rss["adversarial"] / rss["ordinary"]
        print(f"peak RSS ratio adversarial / ordinary = {ratio:.2f} (goal <= 2.0): {'PASS' if ratio <= 2.0 else 'FAIL'}")
        result = {
            "benchmark": "ingest_hostile",
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_avg_1m": round(os.getloadavg()[0], 2)},
            "good_per_source": args.good,
            "validate_defaults": {"max_record_bytes": 16 * MB, "lattice_length_range": [1.0, 200.0],
                                  "lattice_angle_range": [1.0, 179.0], "volume_per_atom_range": [1.0, 500.0]},
            "peak_rss_mb": {k: round(v, 1) for k, v in rss.items()},
            "ratio": round(ratio, 3),
            "goal": "adversarial peak RSS <= 2x ordinary",
            "before_issue_16": {"10k-atom CIF": "7.1 GB", "600 MB zip member": "1.3 GB", "300 MB .gz": "0.66 GB"},
            "runs": runs,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
