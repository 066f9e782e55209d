"""Loss-curve plot of a run's metrics.jsonl (training loss per logging window, validation losses)."""
from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """Write a PNG of training/validation losses (log scale); returns its path, or None without data."""
    metrics_path, out_path = Path(metrics_path), Path(out_path)
    if not metrics_path.exists():
        return None
    train, val, val_ema = [], [], []
    for line in metrics_path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if "loss" in rec:
            train.append((rec["step"], rec["loss"]))
        if "val/loss" in rec:
            val.append((rec["step"], rec["val/loss"]))
        if "val/loss_ema" in rec:
            val_ema.append((rec["step"], rec["val/loss_ema"]))
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for series, label, style in ((train, "train", "-"), (val, "val", "o-"), (val_ema, "val (EMA)", "s--")):
        if series:
            xs, ys = zip(*series)
            ax.plot(xs, ys, style, label=label, markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("epsilon MSE loss")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(metrics_path.parent.name)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
