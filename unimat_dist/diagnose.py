"""The diagnosis ladder: does a training recipe learn crystals, and where does it fail?

    unimat diagnose --config cluster/jobs/results/perov5_transformer_cpu.yaml --sizes 1,16,256,all \
        --steps 2000 --out out/diagnose/perov5_transformer

For each rung (the first N training crystals, or the whole split) the recipe trains from scratch for the
same number of steps and the trained EMA model is measured:

* denoiser errors per noise level t, on training crystals and on held-out ones (the validation split):
  epsilon-MSE on atom slots (predicting no noise at all scores 1: the noise-only baseline), on null slots
  (slots that hold no atom but are open to the model; none with exact-count tokens), and on the lattice;
* the position error in fractional units on atom slots (periodic distance between the x_0 estimate and
  the true coordinate) next to the noise-only baseline (the noisy input's own error);
* what fraction of the position loss and of its gradient comes from null slots;
* samples (unconditional DDIM): atoms per cell, median shortest interatomic distance, density and
  structural validity (every distance > 0.5 A) against the data.

A recipe that learns positions drives the atom-slot errors far below the baseline on train *and*
held-out crystals and its samples have the data's shortest distances; one that memorises gets train far
below held-out; one that learns nothing sits on the baseline (what the U-Net of the first release did,
docs/learning_core.md). Writes ``ladder.json``, ``ladder.md`` and ``ladder.png`` (errors vs t per rung).
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

log = logging.getLogger("unimat.diagnose")

TIMESTEPS = (1, 10, 50, 100, 200, 500, 900)


def _fractional(space, z: torch.Tensor) -> torch.Tensor:
    """The fractional coordinates a diffusion-space tensor points at (every slot, occupied or not)."""
    if space.name == "linear":
        return z.float().clamp(0.0, 1.0)
    z = z.float().unflatten(-1, (3, 2))
    return torch.remainder(torch.atan2(z[..., 1], z[..., 0]) / (2 * math.pi), 1.0)


def _periodic_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = torch.remainder(a - b + 0.5, 1.0) - 0.5
    return d.abs()


@torch.no_grad()
def denoiser_errors(diffusion, normalizer, batcher, data, rows: np.ndarray, timesteps: Sequence[int] = TIMESTEPS,
                    seed: int = 0) -> list[dict[str, float]]:
    """Per timestep: eps-MSE on atom slots / null slots / lattice and the fractional position error of the x_0
    estimate vs the noisy input's, for ``data[rows]`` under the recipe's own conditioning draw."""
    diffusion.eval()
    gen = torch.Generator().manual_seed(seed)
    raw = data.batch(rows)
    mb = batcher(raw, generator=gen, augment=False)
    x0 = diffusion.space.to_diffusion(mb.x0, mb.mask)
    open_slots = mb.cond.allowed_slots(diffusion.allowed_cells)
    atoms, null = mb.mask, open_slots & ~mb.mask
    out = []
    for t in timesteps:
        t = min(int(t), diffusion.timesteps - 1)
        tt = torch.full((len(rows),), t)
        nx, ny = torch.randn(x0.shape, generator=gen), torch.randn(mb.y0.shape, generator=gen)
        xt, yt = diffusion.q_sample(x0, tt, nx), diffusion.q_sample(mb.y0, tt, ny)
        ex, ey = diffusion.denoiser(xt, yt, tt, mb.cond)
        err = (ex.float() - nx).square().mean(-1)
        a = float(diffusion.alphas_cumprod[t])
        x0_hat = _fractional(diffusion.space, (xt - (1 - a) ** 0.5 * ex) / a**0.5)
        x_in = _fractional(diffusion.space, xt / a**0.5)
        pos_err = _periodic_error(x0_hat, mb.x0)[atoms].mean()
        base_err = _periodic_error(x_in, mb.x0)[atoms].mean()
        out.append({
            "t": t,
            "eps_atoms": float(err[atoms].mean()),
            "eps_null": float(err[null].mean()) if null.any() else float("nan"),
            "eps_lattice": float((ey.float() - ny).square().mean()),
            "pos_error": float(pos_err),
            "pos_error_noise_only": float(base_err),
        })
    return out


def null_slot_shares(diffusion, batcher, data, rows: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Fractions of the position loss, and of the squared norm of its gradient, that come from null slots
    (one batch, the recipe's loss weighting and conditioning)."""
    diffusion.train()
    gen = torch.Generator().manual_seed(seed)
    mb = batcher(data.batch(rows), generator=gen, augment=False)
    x0 = diffusion.space.to_diffusion(mb.x0, mb.mask)
    t = torch.randint(0, diffusion.timesteps, (len(rows),), generator=gen)
    nx, ny = torch.randn(x0.shape, generator=gen), torch.randn(mb.y0.shape, generator=gen)
    ex, _ = diffusion.denoiser(diffusion.q_sample(x0, t, nx), diffusion.q_sample(mb.y0, t, ny), t, mb.cond)
    w = diffusion.position_weights(mb.mask, mb.cond)
    err = (ex.float() - nx).square().mean(-1) * w
    parts = {"atoms": err[mb.mask].sum() / len(rows), "null": err[~mb.mask].sum() / len(rows)}
    params = [p for p in diffusion.denoiser.parameters() if p.requires_grad]
    sq = {}
    for k, v in parts.items():
        if not v.requires_grad or float(v) == 0.0:
            sq[k] = 0.0
            continue
        grads = torch.autograd.grad(v, params, retain_graph=True, allow_unused=True)
        sq[k] = float(sum((g.float() ** 2).sum() for g in grads if g is not None))
    total_loss = float(parts["atoms"] + parts["null"])
    diffusion.eval()
    return {
        "null_loss_share": float(parts["null"]) / total_loss if total_loss else 0.0,
        "null_grad_share": sq["null"] / (sq["null"] + sq["atoms"]) if (sq["null"] + sq["atoms"]) else 0.0,
    }


def sample_statistics(generator, data, spec, num: int, steps: int, seed: int = 0) -> dict[str, float]:
    """Unconditional samples vs the data: atoms per cell, shortest distance, density, validity."""
    from unimat_dist.evaluation.emd import emd
    from unimat_dist.representation import decode
    from unimat_dist.representation.codec import UniMatTensor
    from unimat_dist.training.quality import shortest_distance

    def stats(structures):
        n, dmin, rho = [], [], []
        for s in structures:
            if s is None:
                continue
            n.append(len(s))
            rho.append(float(s.density))
            dmin.append(shortest_distance(s))
        return n, dmin, rho

    out = generator.sample(num, sampler="ddim", steps=steps, seed=seed, batch_size=num)
    pick = np.random.default_rng(seed).choice(len(data), size=min(num, len(data)), replace=False)
    ref = [decode(UniMatTensor(data.positions[i], data.mask[i], data.lattice[i]), spec) for i in pick]
    n, dmin, rho = stats(out)
    rn, rdmin, rrho = stats(ref)
    return {
        "decoded": len(n) / num,
        "struct_valid": float(np.mean([d > 0.5 for d in dmin])) * len(n) / num if n else 0.0,
        "atoms_mean": float(np.mean(n)) if n else float("nan"), "atoms_mean_data": float(np.mean(rn)),
        "emd_atoms": emd(n, rn) if n else float("nan"),
        "min_dist_median": float(np.median(dmin)) if dmin else float("nan"),
        "min_dist_median_data": float(np.median(rdmin)),
        "emd_density": emd(rho, rrho) if rho else float("nan"),
    }


def measure(g, cfg, label: str, steps: int, train_seconds: float, final_loss: float | None, samples: int,
            sample_steps: int, eval_rows: int) -> dict[str, Any]:
    """Every ladder measurement of one trained generator ``g`` on the data of training config ``cfg``."""
    from unimat_dist.inference import StructureGenerator
    from unimat_dist.training.setup import prepare_run

    setup = prepare_run(cfg)
    # the model's own transforms, not refitted ones (a released checkpoint measured on its data)
    setup.batcher.normalizer = g.normalizer
    n_train = len(setup.train_data)
    train_rows = np.arange(min(eval_rows, n_train))
    held = setup.val_data
    held_rows = np.arange(min(eval_rows, len(held))) if held is not None else None
    return {
        "size": label, "train_crystals": n_train, "steps": steps, "train_seconds": train_seconds,
        "final_loss": final_loss,
        "train": denoiser_errors(g.diffusion, g.normalizer, setup.batcher, setup.train_data, train_rows),
        "held_out": (denoiser_errors(g.diffusion, g.normalizer, setup.batcher, held, held_rows)
                     if held_rows is not None else None),
        **null_slot_shares(g.diffusion, setup.batcher, setup.train_data, train_rows),
        "samples": sample_statistics(StructureGenerator(g.diffusion, g.spec, g.normalizer, g.scaler),
                                     setup.train_data, g.spec, samples, sample_steps),
    }


def measure_checkpoint(checkpoint: str, out: Path, samples: int = 64, sample_steps: int = 50,
                       eval_rows: int = 64, overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The ladder's measurements of an already trained model (e.g. a released checkpoint), on the data
    of the config stored in it (``overrides`` adjust it, e.g. the validation split)."""
    from unimat_dist.config import from_dict
    from unimat_dist.inference import load_generator
    from unimat_dist.training.config import TrainConfig, load_train_config

    g = load_generator(checkpoint, device="cpu")
    stored = from_dict(TrainConfig, dict(g.meta.get("train_config") or {}))
    import tempfile

    import yaml

    from unimat_dist.config import to_dict

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as fh:
        yaml.safe_dump(to_dict(stored), fh)
    cfg = load_train_config(fh.name, list(overrides))
    Path(fh.name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    rung = measure(g, cfg, Path(checkpoint).name, int(g.meta.get("step") or 0), float("nan"), None, samples,
                   sample_steps, eval_rows)
    (out / "ladder.json").write_text(json.dumps([rung], indent=1))
    log.info("%s: %s", checkpoint, _summary_line(rung))
    write_report([rung], out)
    return [rung]


def run_ladder(config: str | None, overrides: list[str], sizes: Sequence[str], steps: int, out: Path,
               samples: int = 64, sample_steps: int = 50, eval_rows: int = 64) -> list[dict[str, Any]]:
    from unimat_dist.inference import load_generator
    from unimat_dist.launch import run_training
    from unimat_dist.training import load_train_config

    out.mkdir(parents=True, exist_ok=True)
    rungs = []
    for size in sizes:
        label = "all" if size == "all" else str(int(size))
        limit = [] if size == "all" else [f"data.limit_train={int(size)}"]
        cfg = load_train_config(config, [*overrides, *limit, f"train.steps={steps}", f"out_dir={out / ('rung_' + label)}",
                                         "train.resume=never", "train.progress=false", "train.quality_every=0"])
        t0 = time.perf_counter()
        log.info("rung %s: training %d steps on %s crystals", label, steps, label)
        result = run_training(cfg)
        train_s = time.perf_counter() - t0
        g = load_generator(result.inference_checkpoint, device="cpu")
        rung = measure(g, cfg, label, result.steps, train_s, result.last_loss, samples, sample_steps, eval_rows)
        rungs.append(rung)
        (out / "ladder.json").write_text(json.dumps(rungs, indent=1))
        log.info("rung %s: %s", label, _summary_line(rung))
    write_report(rungs, out)
    return rungs


def _summary_line(r: dict) -> str:
    tr = {e["t"]: e for e in r["train"]}
    ho = {e["t"]: e for e in (r["held_out"] or [])}
    s = r["samples"]
    return (f"eps(atoms) t=10 train {tr[10]['eps_atoms']:.3f} held-out {ho.get(10, {}).get('eps_atoms', math.nan):.3f}; "
            f"t=100 {tr[100]['eps_atoms']:.3f} / {ho.get(100, {}).get('eps_atoms', math.nan):.3f}; null loss share "
            f"{r['null_loss_share']:.2f}, grad share {r['null_grad_share']:.2f}; samples: atoms {s['atoms_mean']:.1f} "
            f"(data {s['atoms_mean_data']:.1f}), shortest {s['min_dist_median']:.2f} A (data "
            f"{s['min_dist_median_data']:.2f}), valid {s['struct_valid']:.2f}")


def write_report(rungs: list[dict], out: Path) -> None:
    lines = ["| rung | crystals | steps | eps atoms t=10 train / held-out | t=100 train / held-out | "
             "pos. error t=100 (noise only) | eps null t=100 | null share loss / grad | atoms (data) | "
             "shortest A (data) | valid |", "|---" * 11 + "|"]
    for r in rungs:
        tr = {e["t"]: e for e in r["train"]}
        ho = {e["t"]: e for e in (r["held_out"] or [])}
        s = r["samples"]
        lines.append(
            f"| {r['size']} | {r['train_crystals']} | {r['steps']} | {tr[10]['eps_atoms']:.3f} / "
            f"{ho.get(10, {}).get('eps_atoms', math.nan):.3f} | {tr[100]['eps_atoms']:.3f} / "
            f"{ho.get(100, {}).get('eps_atoms', math.nan):.3f} | {tr[100]['pos_error']:.3f} "
            f"({tr[100]['pos_error_noise_only']:.3f}) | {tr[100]['eps_null']:.3f} | {r['null_loss_share']:.2f} / "
            f"{r['null_grad_share']:.2f} | {s['atoms_mean']:.1f} ({s['atoms_mean_data']:.1f}) | "
            f"{s['min_dist_median']:.2f} ({s['min_dist_median_data']:.2f}) | {s['struct_valid']:.2f} |")
    (out / "ladder.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, r in enumerate(rungs):
        c = f"C{i}"
        for part, style in (("train", "-"), ("held_out", "--")):
            if r[part]:
                ts = [e["t"] for e in r[part]]
                ax[0].plot(ts, [e["eps_atoms"] for e in r[part]], style, color=c, marker="o", markersize=3,
                           label=f"{r['size']} {part.replace('_', '-')}")
                ax[1].plot(ts, [e["pos_error"] for e in r[part]], style, color=c, marker="o", markersize=3)
    ts = [e["t"] for e in rungs[0]["train"]]
    ax[0].axhline(1.0, color="k", lw=1, alpha=0.5, label="noise only")
    ax[1].plot(ts, [e["pos_error_noise_only"] for e in rungs[0]["train"]], "k:", label="noise only")
    for a, y in zip(ax, ("epsilon MSE on atom slots", "position error of x0 estimate (fractional)")):
        a.set_xscale("log")
        a.set_xlabel("timestep t")
        a.set_ylabel(y)
        a.grid(True, alpha=0.3)
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=7)
    fig.suptitle("diagnosis ladder: training crystals (solid) vs held-out (dashed)")
    fig.tight_layout()
    fig.savefig(out / "ladder.png", dpi=110)
    plt.close(fig)


__all__ = ["denoiser_errors", "measure", "measure_checkpoint", "null_slot_shares", "run_ladder", "sample_statistics",
           "write_report"]
