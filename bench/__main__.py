"""``python -m bench [NAME] [ARGS...]``: list the benchmarks, or run one (``make bench`` lists them).

Each benchmark prints ratios against a baseline measured in the same process and writes
bench/results/<name>.json; see the README's benchmark section for the numbers.
"""
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {
    "ingest": "ingest_throughput.py",
    "ingest-hostile": "bench_ingest_hostile.py",
    "model": "bench_model.py",
    "distributed": "bench_distributed.py",
    "serve": "bench_serve.py",
    "eval": "eval_baselines.py",
    "sampling": "bench_sampling_quality.py",
    "scaling": "bench_scaling.py",
    "fairness": "bench_fairness.py",
    "soak": "bench_soak.py",
    "gallery": "bench_gallery.py",
    "threads": "bench_threads.py",
    "scale": "bench_scale.py",
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHES:
        print("usage: python -m bench {" + ",".join(BENCHES) + "} [args...]")
        for name, script in BENCHES.items():
            print(f"  {name:12s} bench/{script}")
        sys.exit(0 if len(sys.argv) < 2 else 2)
    script = HERE / BENCHES[sys.argv[1]]
    sys.argv = [str(script), *sys.argv[2:]]
    runpy.run_path(str(script), run_name="__main__")
