"""Loss-curve plot of a run's metrics.jsonl: training loss per logging window and validation losses
(log scale), and the training throughput when the run logged it. The local and the distributed trainer
write the same figure (the distributed run's curve continues across restarts)."""
from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(metrics_path: str | Path, out_path: str | Path, title: str | None = None) -> Path | None:
    """Write a PNG of training/validation losses (and crystals/s); returns its path, or None without data."""
    metrics_path, out_path = Path(metrics_path), Path(out_path)
    if not metrics_path.exists():
        return None
    train, val, val_ema, speed = [], [], [], []
    for line in metrics_path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if "loss" in rec:
            train.append((rec["step"], rec["loss"]))
            if rec.get("samples_per_s") is not None:
                speed.append((rec["step"], rec["samples_per_s"]))
        if "val/loss" in rec:
            val.append((rec["step"], rec["val/loss"]))
        if "val/loss_ema" in rec:
            val_ema.append((rec["step"], rec["val/loss_ema"]))
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if speed else 1, figsize=(11 if speed else 7, 4.5), squeeze=False)
    ax = axes[0][0]
    for series, label, style in ((train, "train", "-"), (val, "val", "o-"), (val_ema, "val (EMA)", "s--")):
        if series:
            xs, ys = zip(*series)
            ax.plot(xs, ys, style, label=label, markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("epsilon MSE loss")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if speed:
        xs, ys = zip(*speed)
        axes[0][1].plot(xs, ys, "-", color="tab:green")
        axes[0][1].set_xlabel("optimizer step")
        axes[0][1].set_ylabel("crystals / s (all workers)")
        axes[0][1].grid(True, alpha=0.3)
    fig.suptitle(title or metrics_path.parent.name)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
