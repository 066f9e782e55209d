"""Loss and throughput of a distributed run, from its metrics.jsonl (the loss curve continues across restarts)."""
from __future__ import annotations

import json
from pathlib import Path


def plot_loss_and_throughput(metrics_path: str | Path, out_path: str | Path, title: str = "") -> Path | None:
    recs = [json.loads(ln) for ln in Path(metrics_path).read_text().splitlines() if ln.strip()]
    train = [(r["step"], r["loss"], r.get("samples_per_s")) for r in recs if "loss" in r]
    val = [(r["step"], r["val/loss"]) for r in recs if "val/loss" in r]
    val_ema = [(r["step"], r["val/loss_ema"]) for r in recs if "val/loss_ema" in r]
    if not train:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    steps, loss, sps = zip(*train)
    ax1.plot(steps, loss, "-", label="train")
    for series, label, style in ((val, "val", "o-"), (val_ema, "val (EMA)", "s--")):
        if series:
            xs, ys = zip(*series)
            ax1.plot(xs, ys, style, label=label, markersize=3)
    ax1.set_yscale("log")
    ax1.set_xlabel("optimizer step")
    ax1.set_ylabel("epsilon MSE loss")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend()
    ax2.plot(steps, [s if s is not None else float("nan") for s in sps], "-", color="tab:green")
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("crystals / s (all workers)")
    ax2.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
