"""Carbon-24 budget/capacity sweep on one GPU (issue 15): trainings of the released Carbon-24 recipe side by
side on one card, each sized by a short throughput probe to a wall-clock budget (or fixed with MINSTEPS);
exports the EMA inference checkpoints (fp16 above 14 MiB) to $OUT for evaluation on a CPU machine.

The GPU machine has torch but no pymatgen: the encoded splits travel as the trainer's .npz cache.

    mkdir -p gpujob/cache/encoded && cp ~/.cache/unimat/encoded/carbon_24-* gpujob/cache/encoded/
    cp bench/gpu/carbon24_sweep.py gpujob/        # then, on the GPU machine (device tool, carry gpujob):
    UNIMAT_CACHE=gpujob/cache PYTHONPATH=. BUDGET_S=320 RUNS=A_small_b256,B_base_b256 python3 gpujob/carbon24_sweep.py
    # here: sample + score each checkpoint
    unimat results evaluate --checkpoint OUT/A_small_b256_step_00005000.pt --dataset carbon_24 --num 1000 --out ...

Measured on one H200 (2026-11-30): results and conclusions in docs/learning_core.md, "Carbon-24".
"""
import json, os, subprocess, sys, time
from pathlib import Path

BUDGET = float(os.environ.get("BUDGET_S", "300"))
OUT = Path(os.environ.get("OUT", "/tmp/out"))
DEVICE = os.environ.get("DEV", "cuda")
BASE = "cluster/jobs/results/carbon24_transformer_cpu.yaml"
RUNS_ALL = {
    "A_small_b256": ["train.global_batch_size=256", "optim.lr=1e-3"],
    "B_base_b256": ["train.global_batch_size=256", "optim.lr=5e-4", "model.preset=base",
                    "model.overrides={rbf: 24, edge_dim: 64}"],
    "C_small_b64": ["train.global_batch_size=64", "optim.lr=1e-3"],
}
RUNS_ALL["D_small_b512"] = ["train.global_batch_size=512", "optim.lr=1.5e-3"]
RUNS = {k: RUNS_ALL[k] for k in os.environ.get("RUNS", ",".join(list(RUNS_ALL)[:3])).split(",")}
COMMON = [f"train.device={DEVICE}", "train.precision=fp32", "train.quality_every=0", "train.num_threads=2",
          "train.log_every=500", "train.val_batches=8", "train.keep_checkpoints=10"]

CHILD = r'''
import json, sys, time, torch
torch.backends.cuda.matmul.allow_tf32 = True
from unimat_dist.launch import run_training
from unimat_dist.training import load_train_config
name, steps, extra = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
cfg = load_train_config(sys.argv[4], extra)
t0 = time.time()
res = run_training(cfg)
print("RESULT", json.dumps({"name": name, "steps": res.steps, "seconds": time.time() - t0,
      "last_loss": res.last_loss, "val_loss": res.val_loss}), flush=True)
'''


def launch(name, steps, extra, out_dir, ckpt_every, val_every):
    args = extra + COMMON + [f"train.steps={steps}", f"out_dir={out_dir}", f"train.ckpt_every={ckpt_every}",
                             f"train.val_every={val_every}"]
    log = open(f"{out_dir}.log", "w")
    return subprocess.Popen([sys.executable, "-c", CHILD, name, str(steps), json.dumps(args), BASE],
                            stdout=log, stderr=subprocess.STDOUT)


def main():
    work = Path("/tmp/sweep"); work.mkdir(exist_ok=True)
    t0 = time.time()
    probe = int(os.environ.get("PROBE", "60"))
    procs = {n: launch(n, probe, e, str(work / f"probe_{n}"), probe, probe) for n, e in RUNS.items()}
    for p in procs.values():
        p.wait()
    rates = {}
    for n in RUNS:
        mf = work / f"probe_{n}" / "metrics.jsonl"
        lines = [json.loads(l) for l in mf.read_text().splitlines()] if mf.exists() else []
        hist = next((l for l in reversed(lines) if "train_seconds" in l), None)
        text = (work / f"probe_{n}.log").read_text()
        res = [json.loads(l[7:]) for l in text.splitlines() if l.startswith("RESULT ")]
        sec = hist["train_seconds"] if hist and "train_seconds" in hist else res[0]["seconds"]
        rates[n] = probe / sec
        print(n, "probe", probe, "steps in", round(sec, 1), "s", flush=True)
    print("probe total", round(time.time() - t0, 1), flush=True)
    plan = {}
    for n, e in RUNS.items():
        steps = max(int(os.environ.get("MINSTEPS", "200")), int(rates[n] * BUDGET * 0.85) // 100 * 100)
        plan[n] = steps
        procs[n] = launch(n, steps, e, str(work / n), max(steps // 4, 1), max(steps // 4, 1))
    print("plan", plan, flush=True)
    for p in procs.values():
        p.wait()
    import torch
    summary = {"plan": plan, "rates_probe": rates, "runs": {}}
    for n in RUNS:
        text = (work / f"{n}.log").read_text()
        res = [json.loads(l[7:]) for l in text.splitlines() if l.startswith("RESULT ")]
        summary["runs"][n] = res[0] if res else {"error": text[-2000:]}
        try:
            export(n, work, summary)
        except Exception as exc:  # keep the other runs' results
            print("export failed", n, repr(exc), flush=True)
        print(n, summary["runs"][n], flush=True)
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    print("total", round(time.time() - t0, 1), flush=True)


def export(n, work, summary):
    import torch
    if True:
        steps = sorted((work / n / "checkpoints").glob("step_*"))
        picks = [steps[-1]] + ([steps[len(steps) // 2 - 1]] if len(steps) >= 2 and os.environ.get("MID", "1") == "1" else [])
        for s in picks:
            payload = torch.load(s / "inference.pt", map_location="cpu", weights_only=True)
            if sum(v.numel() for v in payload["state_dict"].values()) * 4 > 14 * 2**20:
                payload["state_dict"] = {k: v.half() for k, v in payload["state_dict"].items()}
                payload["fp16_transport"] = True
            torch.save(payload, OUT / f"{n}_{s.name}.pt")
        m = work / n / "metrics.jsonl"
        if m.exists():
            summary["runs"][n]["metrics"] = [json.loads(l) for l in m.read_text().splitlines()]


main()
