"""GNoME scale on one machine: millions of structures through ingest, training streams and batch generation.

    python bench/bench_scale.py --work /data/scale                       # the full run: 2.2M, ~2 h on 2 cores
    python bench/bench_scale.py --work /tmp/s --n 10000 --small-n 2000 --s3-n 2000 --compositions 100 \\
        --samples 2 --out /tmp/s/scale.json                              # the CI-sized version (a few minutes)
    python bench/bench_scale.py --work /data/scale --phases train,generate   # some phases; results merge

Every step runs the user-facing command (``unimat data synth-gnome``, ``unimat ingest``, ``unimat train``,
``unimat generate-batch``) as a subprocess, exactly as documented, while a sampler records the RSS of that
process and of every descendant (Ray's workers) every 0.2 s. Phases (each merges its result into ``--out``):

* ``synth``    synthetic GNoME releases of ``--small-n`` and ``--n`` rows (the same seed: the small one is
               the first rows of the big one);
* ``ingest``   ``unimat ingest --format gnome`` of both to ``file://`` (local Ray, all CPUs): wall time,
               records/s and records/s per core, driver / worker peak RSS over time (memory must be flat:
               peak at ``--n`` within 10 % of peak at ``--small-n``), shard count and sizes, quarantine;
* ``resume``   the big ingest again into a new folder, SIGKILLed (whole process group) once half of its
               work units committed, then rerun: its manifest's shards (path, samples, sha256) must equal
               the uninterrupted run's;
* ``s3``       a ``--s3-n`` slice to the S3 emulator (moto on 127.0.0.1, started here);
* ``train``    ``trainer: ray`` with 2 workers on the big manifest: seconds from launch to the first step,
               samples/s; then the same run with ``data.replay_batches`` (the same tensors from memory): the
               ratio is data loading's cost; the shard deal of each rank is checked disjoint and complete;
* ``generate`` ``unimat generate-batch``: ``--compositions`` compositions of the release x ``--samples``
               samples with the model the train phase wrote, SIGKILLed half-way and resumed; throughput,
               the manifest's counts, the gallery.
* ``report``   the cost model: records/s/core, bytes per record, projected wall time and cost of 2.2M and 20M
               records on a 64-core node and an 8-node cluster (a projection from the measured per-core rate).

The machine may be shared: the 1-minute load average is recorded before and after every phase.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
UNIMAT = [sys.executable, "-m", "unimat_dist"]
PHASES = ("synth", "ingest", "resume", "s3", "train", "generate", "report")
L = 24  # the GNoME ingest config's L (cluster/jobs/ingest_gnome.yaml)

# Projection assumptions (stated in the results; not measured here).
NODE_CORES = 64
CLUSTER_NODES = 8
USD_PER_NODE_HOUR = 2.72  # on-demand price of a 64-vCPU general-purpose VM (AWS c6i.16xlarge, us-east-1, 2024)


def load() -> float:
    return round(os.getloadavg()[0], 2)


class TreeRSS:
    """Peak RSS of a process and of each of its descendants, sampled every ``every`` seconds."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.every = every
        self.peak_driver = 0
        self.peak_worker = 0  # the largest single Ray worker process ("ray::" in its title)
        self.peak_other = 0  # raylet, GCS, dashboard, ... (largest single process)
        self.peak_total = 0
        self.timeline: list[tuple[float, int, int, int]] = []  # (s, driver MB, max worker MB, total MB)
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        last_point = -1e9
        while not self._stop.is_set():
            try:
                driver = self.root.memory_info().rss
                kids = self.root.children(recursive=True)
            except psutil.Error:
                break
            worker = other = 0
            total = driver
            for k in kids:
                try:
                    rss = k.memory_info().rss
                    title = " ".join(k.cmdline()[:1])
                except psutil.Error:
                    continue
                total += rss
                if title.startswith("ray::"):
                    worker = max(worker, rss)
                else:
                    other = max(other, rss)
            self.peak_driver = max(self.peak_driver, driver)
            self.peak_worker = max(self.peak_worker, worker)
            self.peak_other = max(self.peak_other, other)
            self.peak_total = max(self.peak_total, total)
            now = time.monotonic() - self._t0
            if now - last_point >= 2.0:
                self.timeline.append((round(now, 1), driver >> 20, worker >> 20, total >> 20))
                last_point = now
            self._stop.wait(self.every)

    def __enter__(self) -> "TreeRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def report(self) -> dict:
        mb = 1 << 20
        return {"driver_peak_mb": round(self.peak_driver / mb, 1), "worker_peak_mb": round(self.peak_worker / mb, 1),
                "ray_system_peak_mb": round(self.peak_other / mb, 1), "tree_peak_mb": round(self.peak_total / mb, 1)}


def run_cmd(cmd: list[str], log_path: Path, env: dict | None = None, kill_when=None, echo: str = "",
            timeout: float = 4 * 3600, first: str | None = None) -> tuple[int, float, TreeRSS, str, float | None]:
    """Run ``cmd`` in its own session, tee its output to ``log_path`` (and the lines matching ``echo`` to
    the console), sample its RSS; ``kill_when()`` true -> SIGKILL the whole session (a crash). Returns
    (exit code, wall s, RSS sampler, last lines, seconds until the first line matching ``first``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, cwd=ROOT)
        killed = threading.Event()

        def watch() -> None:
            while proc.poll() is None and not killed.is_set():
                if kill_when is not None and kill_when():
                    killed.set()
                    os.killpg(proc.pid, signal.SIGKILL)
                    return
                if time.monotonic() - t0 > timeout:
                    killed.set()
                    os.killpg(proc.pid, signal.SIGKILL)
                    return
                time.sleep(0.1)

        with TreeRSS(proc.pid) as rss:
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            tail: list[str] = []
            first_s = None
            for line in proc.stdout:
                if first_s is None and first and re.search(first, line):
                    first_s = round(time.monotonic() - t0, 1)
                log.write(f"{time.monotonic() - t0:8.1f} {line}")  # seconds since launch: where start-up goes
                tail = (tail + [line])[-40:]
                if echo and re.search(echo, line):
                    print("    " + line.rstrip()[:160], flush=True)
            rc = proc.wait()
            killed.set()
    if rc != 0 and kill_when is None:
        raise RuntimeError(f"{' '.join(cmd[2:6])} ... failed (exit {rc}); last lines:\n" + "".join(tail))
    return rc, time.monotonic() - t0, rss, "".join(tail), first_s


def release_dir(work: Path, n: int) -> Path:
    return work / f"gnome_{n}"


def phase_synth(args, work: Path) -> dict:
    out = {}
    for n in sorted({args.small_n, args.n, args.s3_n}):
        d = release_dir(work, n)
        if (d / "stable_materials_summary.csv").exists() and (d / "synth_gnome.json").exists() \
                and json.loads((d / "synth_gnome.json").read_text())["rows"] == n:
            info = json.loads((d / "synth_gnome.json").read_text())
            print(f"  {d} exists ({n:,} rows)", flush=True)
        else:
            run_cmd(UNIMAT + ["data", "synth-gnome", str(n), str(d), "--overwrite"], work / f"synth_{n}.log",
                    echo=r"wrote|achieved|target")
            info = json.loads((d / "synth_gnome.json").read_text())
        out[str(n)] = {k: info[k] for k in ("rows", "seconds", "compositions", "reduced_formulas", "target",
                                            "achieved", "bytes")}
    return out


def ingest_cmd(release: Path, output: Path | str, args, extra: list[str] = (), overwrite: bool = True) -> list[str]:
    return UNIMAT + ["ingest", "--config", "cluster/jobs/ingest_gnome.yaml", "--source", str(release),
                     "--output", str(output), "--num-cpus", str(args.cpus), *(["--overwrite"] if overwrite else []),
                     f"run.scratch_dir={args.work}/scratch", f"output.records_per_unit={args.records_per_unit}", *extra]


def _units_of(n: int, per_unit: int) -> int:
    return math.ceil(n / per_unit)


def ingest_once(release: Path, output: Path, args, log: Path, kill_at_units: int | None = None,
                extra: list[str] = (), storage_options: dict | None = None, overwrite: bool = True) -> dict:
    units = Path(output) / "_units" if storage_options is None else None
    kill = None
    if kill_at_units is not None:
        def kill() -> bool:
            return units.is_dir() and len(os.listdir(units)) >= kill_at_units
    la = load()
    rc, wall, rss, tail, _ = run_cmd(ingest_cmd(release, output, args, extra, overwrite), log, kill_when=kill,
                                  echo=r"units \d+/\d+ \| read|ingest summary|quarantined |written |check ")
    res = {"exit": rc, "wall_s": round(wall, 1), **rss.report(), "load_before": la, "load_after": load(),
           "rss_timeline": rss.timeline[:: max(1, len(rss.timeline) // 200)]}
    if kill_at_units is None:
        res.update(summarise_output(output, storage_options))
        res["records_per_s"] = round(res["read"] / wall, 1)
        res["records_per_s_per_core"] = round(res["read"] / wall / args.cpus, 1)
    return res


def summarise_output(output: Path | str, storage_options: dict | None = None) -> dict:
    from unimat_dist.storage import join_uri, list_files, read_bytes

    m = json.loads(read_bytes(join_uri(str(output), "manifest.json"), storage_options))
    sizes = sorted(s["bytes"] for s in m["shards"])
    units = join_uri(str(output), "_units")
    unit_files = [join_uri(units, p) for p in list_files(units, storage_options) if p.endswith(".json")]
    cpu = 0.0
    max_rss = 0.0
    for p in unit_files:
        rec = json.loads(read_bytes(p, storage_options))
        cpu += float(rec.get("cpu_seconds", 0.0))
        max_rss = max(max_rss, float(rec.get("max_rss_mb", 0.0)))
    counts = m["counts"]
    written = int(counts["written"])
    return {
        "read": int(counts["read"]), "written": written, "quarantined": int(counts["quarantined"]),
        "quarantined_by_reason": counts.get("quarantined_by_reason", {}),
        "splits": m["splits"],
        "shards": len(sizes), "bytes": sum(sizes), "bytes_per_record": round(sum(sizes) / max(written, 1)),
        "shard_mb": {"min": round(sizes[0] / 1e6, 2), "median": round(sizes[len(sizes) // 2] / 1e6, 2),
                     "max": round(sizes[-1] / 1e6, 2)} if sizes else {},
        "worker_cpu_s": round(cpu, 1), "records_per_worker_cpu_s": round(int(counts["read"]) / max(cpu, 1e-9), 1),
        "unit_max_rss_mb": max_rss,
    }


def shard_key(output: Path | str, storage_options: dict | None = None) -> list[tuple]:
    from unimat_dist.storage import join_uri, read_bytes

    m = json.loads(read_bytes(join_uri(str(output), "manifest.json"), storage_options))
    return sorted((s["path"], s["split"], s["samples"], s["sha256"]) for s in m["shards"])


def phase_ingest(args, work: Path) -> dict:
    out = {}
    for n in sorted({args.small_n, args.n}):
        print(f"  ingest {n:,} records -> file://{work}/shards_{n}", flush=True)
        out[str(n)] = ingest_once(release_dir(work, n), work / f"shards_{n}", args, work / f"ingest_{n}.log")
    small, big = out[str(args.small_n)], out[str(args.n)]
    for key in ("driver_peak_mb", "worker_peak_mb", "tree_peak_mb"):
        out[f"{key}_ratio_big_over_small"] = round(big[key] / max(small[key], 1e-9), 3)
    out["memory_flat"] = all(out[f"{k}_ratio_big_over_small"] <= 1.10 for k in ("driver_peak_mb", "worker_peak_mb"))
    return out


def phase_resume(args, work: Path) -> dict:
    release, ref, output = release_dir(work, args.n), work / f"shards_{args.n}", work / f"shards_{args.n}_resumed"
    if not (ref / "manifest.json").exists():
        raise RuntimeError("run the ingest phase first (the uninterrupted reference)")
    half = _units_of(args.n, args.records_per_unit) // 2
    if (output / "_job.json").exists():  # this phase's earlier run (an ingest output): start from nothing
        shutil.rmtree(output)
    print(f"  ingest {args.n:,} again, SIGKILL after {half} of {_units_of(args.n, args.records_per_unit)} units committed", flush=True)
    killed = ingest_once(release, output, args, work / "resume_killed.log", kill_at_units=half)
    done_at_kill = len(os.listdir(output / "_units"))
    print(f"  killed after {killed['wall_s']} s with {done_at_kill} units committed; resuming", flush=True)
    resumed = ingest_once(release, output, args, work / "resume_resumed.log", overwrite=False)
    skipped = int(re.search(r"(\d+) already done", (work / "resume_resumed.log").read_text()).group(1))
    equal = shard_key(ref) == shard_key(output)
    print(f"  resumed run skipped {skipped} units; manifest shards equal to the uninterrupted run's: {equal}",
          flush=True)
    return {"killed_after_s": killed["wall_s"], "units_committed_at_kill": done_at_kill, "units_total": _units_of(args.n, args.records_per_unit),
            "resume_wall_s": resumed["wall_s"], "units_skipped_on_resume": skipped,
            "shards_equal_uninterrupted": equal, "shards": resumed["shards"], "read": resumed["read"],
            "written": resumed["written"], "quarantined": resumed["quarantined"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def phase_s3(args, work: Path) -> dict:
    import urllib.request

    import s3fs

    port = _free_port()
    log = open(work / "moto.log", "w")
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(endpoint + "/", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        opts = {"endpoint_url": endpoint, "key": "test", "secret": "test"}
        s3fs.S3FileSystem(**opts, skip_instance_cache=True).mkdir("unimat-scale")
        uri = "s3://unimat-scale/gnome"
        print(f"  ingest {args.s3_n:,} records -> {uri} (moto on 127.0.0.1:{port})", flush=True)
        extra = [f"output.storage_options={json.dumps(opts)}"]
        res = ingest_once(release_dir(work, args.s3_n), uri, args, work / "ingest_s3.log", extra=extra,
                          storage_options=opts)
        res.pop("rss_timeline", None)
        return res
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def _steps(log_text: str) -> list[tuple[int, float]]:
    return [(int(m.group(1)), float(m.group(2)))
            for m in re.finditer(r"\[train\] step (\d+)/\d+ .*?samples/s=([\d.]+)", log_text)]


def train_once(args, work: Path, name: str, extra: list[str]) -> dict:
    out_dir = work / f"train_{name}"
    for own in (out_dir, work / "ray_runs" / f"scale_{name}"):  # this bench's earlier run: start fresh
        shutil.rmtree(own, ignore_errors=True)
    cmd = UNIMAT + ["train", "--config", "cluster/jobs/train_tiny_ray_cpu.yaml",
                    f"data.manifest={work}/shards_{args.n}", "data.dataset=mp_20", f"data.max_atoms_per_element={L}",
                    "data.limit_val=64", "data.properties=[]", "data.shuffle_buffer=256",
                    f"train.steps={args.train_steps}", "train.global_batch_size=16", "train.log_every=1",
                    f"train.val_every={args.train_steps}", "train.val_batches=1", f"train.ckpt_every={args.train_steps}",
                    f"out_dir={out_dir}", f"distributed.storage_path={work}/ray_runs", f"distributed.run_name=scale_{name}",
                    "distributed.metrics_port=0", *extra]
    rc, wall, rss, _, first_step_s = run_cmd(cmd, work / f"train_{name}.log", first=r"\[train\] step \d+/",
                                             echo=r"\[train\] step (1|\d*0)/|error|Error")
    steps = _steps((work / f"train_{name}.log").read_text())
    steady = [r for s, r in steps if s > max(3, args.train_steps // 4)]
    return {"wall_s": round(wall, 1), "samples_per_s": round(sum(steady) / max(len(steady), 1), 2),
            "steps_logged": len(steps), "first_step_s": first_step_s, **rss.report(), "out_dir": str(out_dir)}


def phase_train(args, work: Path) -> dict:
    from unimat_dist.shards.manifest import read_manifest
    from unimat_dist.shards.reader import assign_shards

    m = read_manifest(str(work / f"shards_{args.n}"))
    train = [s for s in m.shards if s.split == "train"]
    deal = assign_shards(train, 2, seed=0, epoch=0)
    paths = [[s.path for s in part] for part in deal]
    disjoint = not set(paths[0]) & set(paths[1])
    complete = sorted(paths[0] + paths[1]) == sorted(s.path for s in train)
    print(f"  {len(train)} train shards dealt to 2 ranks: {len(paths[0])} + {len(paths[1])}, "
          f"disjoint {disjoint}, complete {complete}", flush=True)
    from unimat_dist.training.shard_source import ShardSource

    src, t, n_batches = iter(ShardSource(m, "train", 8, rank=0, world_size=2, shuffle_buffer=256)), time.perf_counter(), 300
    for _ in range(n_batches):
        next(src)
    loader_rate = n_batches * 8 / (time.perf_counter() - t)
    print(f"  one rank's shard reader alone (no model): {loader_rate:,.0f} samples/s", flush=True)
    streaming = train_once(args, work, "stream", [])
    replay = train_once(args, work, "replay", [f"data.replay_batches={args.replay_batches}"])
    ratio = streaming["samples_per_s"] / max(replay["samples_per_s"], 1e-9)
    print(f"  samples/s: shards {streaming['samples_per_s']}, same tensors from memory {replay['samples_per_s']}: "
          f"ratio {ratio:.3f}; first step after {streaming['first_step_s']} s", flush=True)
    return {"manifest_records": sum(m.split_counts.values()), "train_shards": len(train),
            "deal_disjoint": disjoint, "deal_complete": complete, "loader_only_samples_per_s": round(loader_rate, 1),
            "streaming": streaming, "replay": replay,
            "loading_ratio": round(ratio, 3)}


def phase_generate(args, work: Path) -> dict:
    """``--compositions`` compositions of the release that fit the model's spec x ``--samples`` samples."""
    import csv

    from unimat_dist.bundled import resolve_released
    from unimat_dist.inference.checkpoint import load_inference_checkpoint

    ckpt = resolve_released(args.gen_checkpoint)
    spec = load_inference_checkpoint(ckpt)["spec"]
    max_l = int(spec["max_atoms_per_element"])
    allowed = set(spec["elements"]) if spec.get("elements") else None
    reqs = work / "compositions.csv"
    seen, scanned = set(), 0
    with open(release_dir(work, args.n) / "stable_materials_summary.csv", newline="") as fh, \
            open(reqs, "w", newline="") as out:
        w = csv.writer(out)
        w.writerow(["id", "composition"])
        for row in csv.DictReader(fh):
            scanned += 1
            comp = row["Composition"]
            parts = re.findall(r"([A-Z][a-z]?)(\d+)", comp)
            if comp in seen or max(int(c) for _, c in parts) > max_l or \
                    (allowed is not None and any(el not in allowed for el, _ in parts)):
                continue
            seen.add(comp)
            w.writerow([row["MaterialId"], comp])
            if len(seen) >= args.compositions:
                break
    output = work / "generated"
    if (output / "_job.json").exists():  # this phase's earlier run (a generate-batch output): start from nothing
        shutil.rmtree(output)
    per_unit = max(1, min(100, len(seen) // 8))
    cmd = UNIMAT + ["generate-batch", "--config", "cluster/jobs/generate_tiny_cpu.yaml", f"model.checkpoint={ckpt}",
                    f"requests.uri={reqs}", "requests.samples_column=null", "requests.property_columns=[]",
                    f"requests.samples_per_request={args.samples}", f"sampling.steps={args.gen_steps}",
                    "sampling.max_batch_samples=500", f"output.uri={output}", f"output.requests_per_shard={per_unit}",
                    f"run.num_cpus={args.cpus}", f"run.actors={args.cpus}"]
    units_total = math.ceil(len(seen) / per_unit)
    units_dir = output / "_units"
    print(f"  generate-batch with {args.gen_checkpoint} (L={max_l}): {len(seen):,} compositions of the release that "
          f"fit it (of {scanned:,} rows read) x {args.samples} samples, DDIM-{args.gen_steps}; SIGKILL after "
          f"{units_total // 2} of {units_total} units, then resume", flush=True)
    rc, killed_wall, _, _, _ = run_cmd(cmd + ["output.overwrite=true"], work / "generate_killed.log",
                                       echo=r"units \d+/",
                                       kill_when=lambda: units_dir.is_dir() and len(os.listdir(units_dir)) >= max(1, units_total // 2))
    at_kill = len(os.listdir(units_dir))
    rc, wall, rss, tail, _ = run_cmd(cmd, work / "generate_resumed.log", echo=r"units \d+/|summary|crystals|gallery|valid")
    m = json.loads((output / "manifest.json").read_text())
    counts = m.get("counts", {})
    made = int(counts.get("samples", 0))
    gallery_s = re.search(r"gallery: .* in ([\d.]+) s", (work / "generate_resumed.log").read_text())
    gen_wall = killed_wall + wall - (float(gallery_s.group(1)) if gallery_s else 0.0)
    return {"checkpoint": args.gen_checkpoint, "model_L": max_l, "compositions": len(seen),
            "summary_rows_scanned": scanned, "samples_per_composition": args.samples, "ddim_steps": args.gen_steps,
            "killed_after_s": round(killed_wall, 1), "units_committed_at_kill": at_kill, "units_total": units_total,
            "resume_wall_s": round(wall, 1), "manifest_counts": counts,
            "candidates_per_s": round(made / gen_wall, 2) if made else None,
            "gallery": (output / "gallery" / "index.html").exists(),
            "gallery_s": float(gallery_s.group(1)) if gallery_s else None, **rss.report()}


def _log_times(log: Path) -> dict:
    """Seconds since launch of the planner's start and end and of the first committed unit (the bench's
    log stamps every line)."""
    out = {}
    for line in log.read_text().splitlines():
        stamp, _, text = line.strip().partition(" ")
        try:
            t = float(stamp)
        except ValueError:
            continue
        if "planning" in text and "plan_start_s" not in out:
            out["plan_start_s"] = t
        elif "work units, ~" in text and "plan_end_s" not in out:
            out["plan_end_s"] = t
        elif re.search(r"units 1/\d+ \|", text) and "first_unit_s" not in out:
            out["first_unit_s"] = t
    return out


def phase_report(res: dict, args) -> dict:
    """Cost model: wall(N, C cores, K nodes) = plan(N) + start-up + N / (per-core rate x C), with
    plan(N) the driver's single-threaded pass over the summary CSV (linear in N, measured), start-up the
    measured time from launch to the first unit minus planning (Ray, staging and indexing the archive), and
    the per-core rate measured between the first unit and the end. A projection, stated as such."""
    ing = res.get("ingest", {}).get(str(args.n))
    if not ing:
        return {}
    times = _log_times(Path(args.work) / f"ingest_{args.n}.log")
    plan_s = times.get("plan_end_s", 0.0) - times.get("plan_start_s", 0.0)
    startup_s = times.get("first_unit_s", 0.0) - plan_s
    steady_s = ing["wall_s"] - times.get("first_unit_s", 0.0)
    per_core = ing["read"] / max(steady_s, 1e-9) / args.cpus
    out = {"measured": {"records": ing["read"], "cores": args.cpus, "wall_s": ing["wall_s"],
                        "records_per_s": ing["records_per_s"], "records_per_s_per_core_steady": round(per_core, 1),
                        "plan_s": round(plan_s, 1), "startup_s": round(startup_s, 1),
                        "bytes_per_record": ing["bytes_per_record"]},
           "assumptions": {"model": "wall = plan_s x N / N_measured + startup_s + N / (per-core rate x cores)",
                           "scaling": "linear in cores at the measured per-core rate (parse/encode are CPU-bound "
                                      "and independent per record); storage bandwidth assumed not limiting; "
                                      "start-up taken as measured here (a remote archive adds its download per node)",
                           "node_cores": NODE_CORES, "cluster_nodes": CLUSTER_NODES,
                           "usd_per_node_hour": USD_PER_NODE_HOUR},
           "projection": []}
    for n in (2_200_000, 20_000_000):
        for label, cores, nodes in ((f"1 x {NODE_CORES}-core node", NODE_CORES, 1),
                                    (f"{CLUSTER_NODES} x {NODE_CORES}-core nodes", NODE_CORES * CLUSTER_NODES, CLUSTER_NODES)):
            secs = plan_s * n / ing["read"] + startup_s + n / (per_core * cores)
            out["projection"].append({"records": n, "where": label, "wall_min": round(secs / 60, 2),
                                      "usd": round(secs / 3600 * nodes * USD_PER_NODE_HOUR, 2),
                                      "output_gb": round(n * ing["bytes_per_record"] / 1e9, 1)})
    return out


def plot(res: dict, args, path: Path) -> None:
    """Memory over an ingest run (200k vs 2.2M: flat means the same height) and throughput per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    for n, style in ((args.small_n, "--"), (args.n, "-")):
        r = res.get("ingest", {}).get(str(n))
        if not r or not r.get("rss_timeline"):
            continue
        t = [p[0] / max(r["wall_s"], 1e-9) for p in r["rss_timeline"]]
        a.plot(t, [p[1] for p in r["rss_timeline"]], style, color="C0", label=f"driver, {n:,} records")
        a.plot(t, [p[2] for p in r["rss_timeline"]], style, color="C1", label=f"largest Ray worker, {n:,}")
    a.set_xlabel("fraction of the ingest run")
    a.set_ylabel("RSS (MB)")
    a.set_title("unimat ingest: peak RSS, 200k vs 2.2M records")
    a.legend(fontsize=8)
    bars = []
    if res.get("ingest", {}).get(str(args.n)):
        bars.append((f"ingest\n{args.n:,}\n(records/s)", res["ingest"][str(args.n)]["records_per_s"]))
    if res.get("s3"):
        bars.append((f"ingest -> S3\nemulator\n(records/s)", res["s3"].get("read", 0) / max(res["s3"]["wall_s"], 1e-9)))
    if res.get("train"):
        bars.append(("train, shards\n(samples/s)", res["train"]["streaming"]["samples_per_s"]))
        bars.append(("train, from memory\n(samples/s)", res["train"]["replay"]["samples_per_s"]))
    if res.get("generate") and res["generate"].get("candidates_per_s"):
        bars.append(("generate-batch\n(crystals/s)", res["generate"]["candidates_per_s"]))
    if bars:
        b.bar(range(len(bars)), [v for _, v in bars], color=["C2", "C2", "C3", "C3", "C4"][: len(bars)])
        b.set_xticks(range(len(bars)), [k for k, _ in bars], fontsize=8)
        b.set_yscale("log")
        for i, (_, v) in enumerate(bars):
            b.text(i, v, f"{v:,.1f}", ha="center", va="bottom", fontsize=8)
        b.set_title(f"throughput on {args.cpus} CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="working folder (releases, shards, runs; tens of GB at 2.2M)")
    ap.add_argument("--n", type=int, default=2_200_000)
    ap.add_argument("--small-n", type=int, default=200_000)
    ap.add_argument("--s3-n", type=int, default=100_000)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--records-per-unit", type=int, default=4096, help="ingest work unit size (the GNoME config's)")
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--replay-batches", type=int, default=8)
    ap.add_argument("--compositions", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--gen-steps", type=int, default=10)
    ap.add_argument("--gen-checkpoint", default="perov5_transformer_cpu",
                    help="model for the generate phase (a released name or a path; the README's row used "
                         "out/quickstart/train, the tiny U-Net `make quickstart` trains)")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale_cpu.json"))
    args = ap.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    args.work = str(work)
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.exists() else {}
    res.update({"machine": f"{os.cpu_count()} cores, {os.uname().nodename}", "cpus": args.cpus, "n": args.n,
                "small_n": args.small_n, "s3_n": args.s3_n})
    phases = [p for p in args.phases.split(",") if p]
    for p in phases:
        if p not in PHASES:
            ap.error(f"unknown phase {p!r}; choose from {PHASES}")
    fns = {"synth": phase_synth, "ingest": phase_ingest, "resume": phase_resume, "s3": phase_s3,
           "train": phase_train, "generate": phase_generate}
    for i, p in enumerate(phases, 1):
        print(f"[{i}/{len(phases)}] {p} (load {load()})", flush=True)
        t = time.monotonic()
        res[p] = phase_report(res, args) if p == "report" else fns[p](args, work)
        if isinstance(res[p], dict):
            res[p]["phase_s"] = round(time.monotonic() - t, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        os.replace(tmp, out)
    if "report" in phases:
        plot(res, args, out.with_suffix(".png"))
        print(f"plot: {out.with_suffix('.png')}", flush=True)
    print(f"results: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
