"""Loss-curve plot of a run's metrics.jsonl: training loss per logging window and validation losses
(log scale), the sample quality checks beside it when the run made them (``quality.py``: validity,
coverage, shortest distance), and the training throughput when the run logged it. The local and the distributed trainer
write the same figure (the distributed run's curve continues across restarts)."""
from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(metrics_path: str | Path, out_path: str | Path, title: str | None = None) -> Path | None:
    """Write a PNG of training/validation losses (and crystals/s); returns its path, or None without data."""
    metrics_path, out_path = Path(metrics_path), Path(out_path)
    if not metrics_path.exists():
        return None
    train, val, val_ema, speed, quality = [], [], [], [], []
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
        if "quality/struct_valid" in rec:
            quality.append(rec)
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 1 + bool(quality) + bool(speed)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 + 4.5 * panels, 4.5), squeeze=False)
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
    if quality:
        qa = axes[0][1]
        steps = [r["step"] for r in quality]
        for key, label in (("quality/cov_recall", "COV-R"), ("quality/cov_precision", "COV-P"),
                           ("quality/struct_valid", "struct. valid"), ("quality/comp_valid", "comp. valid")):
            if any(key in r for r in quality):
                qa.plot(steps, [100 * r.get(key, float("nan")) for r in quality], "o-", markersize=3, label=label)
        qa.set_xlabel("optimizer step")
        qa.set_ylabel("% of samples (vs. validation subset)")
        qa.set_ylim(-2, 102)
        qa.grid(True, alpha=0.3)
        qd = qa.twinx()
        qd.plot(steps, [r.get("quality/min_dist", float("nan")) for r in quality], "k:", label="shortest dist.")
        ref = [r.get("quality/min_dist_ref") for r in quality if r.get("quality/min_dist_ref") is not None]
        if ref:
            qd.axhline(ref[-1], color="k", alpha=0.3, lw=1)
        qd.set_ylabel("median shortest distance (A); line: data")
        lines = qa.get_legend_handles_labels()
        extra = qd.get_legend_handles_labels()
        qa.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=8, loc="lower right")
        qa.set_title("sample quality", fontsize=10)
    if speed:
        sa = axes[0][panels - 1]
        xs, ys = zip(*speed)
        sa.plot(xs, ys, "-", color="tab:green")
        sa.set_xlabel("optimizer step")
        sa.set_ylabel("crystals / s (all workers)")
        sa.grid(True, alpha=0.3)
    fig.suptitle(title or metrics_path.parent.name)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path


def plot_learning_curve(metrics_path: str | Path, out_path: str | Path, title: str | None = None) -> Path | None:
    """COV-R/COV-P/validity of the quality checks and the position epsilon-MSE (training windows, validation)
    against training hours (``train_seconds``: wall-clock time of the training steps); None without checks."""
    metrics_path, out_path = Path(metrics_path), Path(out_path)
    if not metrics_path.exists():
        return None
    quality, pos = [], []
    for line in metrics_path.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if "quality/cov_recall" in rec and rec.get("train_seconds") is not None:
            quality.append(rec)
        if "loss_positions" in rec and rec.get("train_seconds") is not None:
            pos.append((rec["train_seconds"] / 3600, rec["loss_positions"]))
    if not quality:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    hours = [r["train_seconds"] / 3600 for r in quality]
    for key, label in (("quality/cov_recall", "COV-R"), ("quality/cov_precision", "COV-P"),
                       ("quality/struct_valid", "struct. valid")):
        ax[0].plot(hours, [100 * r[key] for r in quality], "o-", markersize=3, label=label)
    ax[0].set_xlabel("training hours (wall clock)")
    ax[0].set_ylabel("% (samples of the EMA model vs a validation subset)")
    ax[0].set_ylim(-2, 102)
    ax[0].grid(True, alpha=0.3)
    ax[0].legend(fontsize=8)
    if pos:
        xs, ys = zip(*pos)
        ax[1].plot(xs, ys, "-", lw=1, label="train windows")
    ax[1].set_yscale("log")
    ax[1].set_xlabel("training hours (wall clock)")
    ax[1].set_ylabel("position epsilon-MSE on atoms (1 = noise only)")
    ax[1].grid(True, which="both", alpha=0.3)
    ax[1].legend(fontsize=8)
    fig.suptitle(title or metrics_path.parent.name)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
