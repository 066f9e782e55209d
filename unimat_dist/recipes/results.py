"""The results table: sample a trained model, evaluate it like the paper, and put it beside Table 1.

One *run* is an inference checkpoint of a model trained on one benchmark data set. ``evaluate_run``
draws N unconditional crystals (the paper uses 10,000), writes them as one extxyz file, computes the
CDVAE proxy metrics against the data set's test split (validity, COV-R/P, EMDs, uniqueness, novelty)
and, on a subsample, relaxes them with CHGNet for the stable/metastable rates. It records what the run
cost: training compute (device, hours, steps, parameters, from the run's config and ``metrics.jsonl``)
and sampling throughput. ``write_table`` turns any number of such run results into a markdown table
next to the published CDVAE and UniMat numbers, and ``plot_ablation`` draws validity and COV against
parameter count for runs of different model sizes on one data set (the paper's Fig. 4).

Samples that do not decode to a crystal (no atom left after the null-location rule) count as invalid:
the validity columns are fractions of all N draws, not of the decodable ones.

    unimat results evaluate --checkpoint out/perov5/checkpoints --dataset perov_5 --num 10000 --out results/perov5_tiny
    unimat results table results/*/result.json --out results/README.md --ablation results/ablation.png
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("unimat.results")

PROTOCOL = {"perov_5": "perovskite", "carbon_24": "carbon", "mp_20": "mp20"}
COLUMNS = (
    ("struct_validity", "struct. valid %", True),
    ("comp_validity", "comp. valid %", True),
    ("cov_recall", "COV-R %", True),
    ("cov_precision", "COV-P %", True),
    ("emd_density", "EMD ρ", False),
    ("emd_property", "EMD E", False),
    ("emd_num_elements", "EMD #el", False),
)


@dataclass
class RunOptions:
    checkpoint: str
    dataset: str  # perov_5 | carbon_24 | mp_20
    out: Path
    num: int = 10_000
    # sampler settings; None: the checkpoint's sampling defaults, else DDIM-100, η 0, λ 1 (``with_sampling``)
    sampler: str | None = None
    steps: int | None = None
    eta: float | None = None  # DDIM stochasticity: 0 deterministic, 1 the DDPM posterior's noise on the respaced steps
    noise_scale: float | None = None  # multiplies the added noise (sampling temperature; diffusion/samplers.py)
    restart: tuple[int, ...] | None = None  # (t, steps) restart pass; () none; None: the checkpoint's default
    autoguidance: float | None = None  # weight of the checkpoint's guide network; None: the checkpoint's, 0: off
    # compositions of the run drawn without repeats (CompositionModel.sample_distinct); None: the checkpoint's
    distinct_compositions: bool | None = None
    batch_size: int = 500
    seed: int = 0
    workers: int | None = None
    energy_samples: int = 0  # crystals relaxed with CHGNet for stable/metastable rates (0: skip)
    relax_steps: int = 300
    property_emd: bool = False  # CHGNet energies of all valid samples for the property EMD (slow)
    limit_reference: int | None = None
    limit_train: int | None = None
    label: str | None = None
    conditional: int = 0  # test compositions for the conditional protocol against AIRSS (0: skip)
    per_composition: int = 10  # conditioned samples and AIRSS structures per composition
    csp: bool = False  # CSP protocol (CDVAE/DiffCSP): one exact-count sample per test crystal, match rate at k=1
    limit_csp: int | None = None  # only the first N test crystals for CSP


def _canonical(dataset: str) -> str:
    from unimat_dist.evaluation.sources import registry_name

    name = registry_name(dataset)
    if name not in PROTOCOL:
        raise ValueError(f"no published results table for data set {dataset!r}; known: {', '.join(PROTOCOL)}")
    return name


def training_compute(run_dir: Path | None) -> dict[str, Any]:
    """What training cost, from a run directory (config + metrics.jsonl), as far as it is recorded."""
    out: dict[str, Any] = {}
    if run_dir is None:
        return out
    seconds_per_sample = None  # sum over logged windows of steps / (samples/s); x batch size = seconds
    mfile = run_dir / "metrics.jsonl"
    if mfile.exists():
        recs = [json.loads(ln) for ln in mfile.read_text().splitlines() if ln.strip()]
        train = [r for r in recs if "samples_per_s" in r and "loss" in r]
        if train:
            seconds_per_sample, prev = 0.0, 0
            for r in train:
                seconds_per_sample += (r["step"] - prev) / max(r["samples_per_s"], 1e-9)
                prev = r["step"]
            out["steps"] = train[-1]["step"]
            out["final_loss"] = train[-1]["loss"]
            val = [r["val/loss_ema"] for r in recs if "val/loss_ema" in r]
            if val:
                out["final_val_loss_ema"] = val[-1]
    cfg_file = next((p for p in (run_dir / "config.yaml", run_dir / "config.json") if p.exists()), None)
    if cfg_file is not None:
        import yaml

        cfg = yaml.safe_load(cfg_file.read_text())
        tr = cfg.get("train", {})
        dist = cfg.get("distributed", {}) or {}
        gb = tr.get("global_batch_size")
        out["global_batch_size"] = gb
        workers = dist.get("num_workers", 1) if cfg.get("trainer") == "ray" else 1
        out["workers"] = workers
        out["device"] = tr.get("device")
        if seconds_per_sample is not None and gb:
            out["train_hours"] = seconds_per_sample * gb / 3600.0
            out["device_hours"] = out["train_hours"] * workers
    return out


def _run_dir_of(checkpoint: str) -> Path | None:
    if "://" in checkpoint and not checkpoint.startswith("file://"):
        return None
    p = Path(checkpoint.removeprefix("file://"))
    for cand in (p, *p.parents):
        if (cand / "metrics.jsonl").exists():
            return cand
    return None


def _device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def with_sampling(o: RunOptions, gen) -> RunOptions:
    """``o`` with its sampler settings resolved against the loaded model (``sampling_settings``), steps
    made concrete so that result.json says exactly what ran."""
    from unimat_dist.diffusion.samplers import default_steps

    s = gen.sampling_settings(o.sampler, o.steps, o.eta, o.noise_scale, o.restart)
    if s["steps"] is None:
        s["steps"] = default_steps(s["sampler"], gen.diffusion.timesteps)
    if o.distinct_compositions is None:
        s["distinct_compositions"] = gen.distinct_compositions
    return replace(o, **s)


def sample_run(o: RunOptions) -> tuple[Path, dict[str, Any]]:
    """Draw ``o.num`` unconditional crystals into ``<out>/samples.extxyz``; returns the file and stats.

    Each frame carries the crystal's facts (``unimat_dist.crystal_facts``: space group, density, shortest
    distance, validity flags...) in ``atoms.info``; ``<out>/summary.csv`` and ``<out>/summary.json``
    (``"crystals"``) hold one row of them per draw (``unimat_dist.crystal_files.TABLE_KEYS``), undecodable
    draws included. ``sampling_seconds`` excludes the time of the facts (``facts_seconds``)."""
    from ase.io import write as ase_write
    from pymatgen.io.ase import AseAtomsAdaptor
    from tqdm.auto import tqdm

    from unimat_dist.crystal_facts import crystal_facts
    from unimat_dist.crystal_files import FILE_KEYS, facts_info, sample_name, table_csv, write_text_atomic
    from unimat_dist.diffusion.autoguidance import main_network
    from unimat_dist.generation.records import validity_flags
    from unimat_dist.inference import load_generator

    o.out.mkdir(parents=True, exist_ok=True)
    gen = load_generator(o.checkpoint, device=None, autoguidance=o.autoguidance)
    o = with_sampling(o, gen)
    path = o.out / "samples.extxyz"
    tmp = path.with_suffix(".extxyz.part")
    n_decoded = 0
    rows: list[dict[str, Any]] = []
    t_facts = 0.0
    t0 = time.perf_counter()
    import torch

    generator = torch.Generator(device=gen.device).manual_seed(o.seed)
    if o.distinct_compositions:  # no composition twice in the whole run: all drawn at once
        run_cond, run_w = gen.condition([_uncond()] * o.num, seed=o.seed * 1_000_003, distinct=True)
    with open(tmp, "w") as fh:
        for start in tqdm(range(0, o.num, o.batch_size), desc=f"sampling {o.dataset}", unit="batch"):
            n = min(o.batch_size, o.num - start)
            if o.distinct_compositions:
                cond, w = run_cond[start:start + n], run_w[start:start + n]
            else:  # the composition prior's draws are seeded per batch: batches must not repeat each other's
                cond, w = gen.condition([_uncond()] * n, seed=o.seed * 1_000_003 + start, distinct=False)
            batch = gen.sample_condition(cond, w, sampler=o.sampler, steps=o.steps, eta=o.eta,
                                         noise_scale=o.noise_scale, restart=o.restart,
                                         generator=generator)
            atoms = []
            for i, s in enumerate(gen.to_structures(batch)):
                t1 = time.perf_counter()
                facts = crystal_facts(s, flags=validity_flags(s))
                t_facts += time.perf_counter() - t1
                row = {"index": start + i, "name": sample_name(start + i), **facts, **dict.fromkeys(FILE_KEYS)}
                rows.append(row)
                if s is None:
                    continue
                a = AseAtomsAdaptor.get_atoms(s)
                a.info["sample"] = start + i
                a.info.update(facts_info({"name": row["name"], **facts}))
                row["extxyz_frame"] = n_decoded + len(atoms)
                atoms.append(a)
            n_decoded += len(atoms)
            ase_write(fh, atoms, format="extxyz")
    seconds = time.perf_counter() - t0 - t_facts
    tmp.replace(path)
    write_text_atomic(o.out / "summary.csv", table_csv(rows))
    write_text_atomic(o.out / "summary.json", json.dumps({"format": "unimat-dist/crystal-table", "crystals": rows},
                                                         indent=1, allow_nan=False))
    stats = {
        "num_sampled": o.num,
        "num_decoded": n_decoded,
        "sampler": o.sampler,
        "sampling_steps": o.steps,
        "eta": o.eta,
        "noise_scale": o.noise_scale,
        "restart": list(o.restart) if o.restart else None,
        "distinct_compositions": bool(o.distinct_compositions),
        "autoguidance": gen.meta.get("autoguidance"),  # {weight, guide_step, guide_weights} or None
        "sampling_seconds": seconds,
        "facts_seconds": t_facts,
        "samples_per_s": o.num / seconds,
        "sampling_device": _device_name(),
        "params": sum(p.numel() for p in main_network(gen.diffusion.denoiser).parameters()),
        "checkpoint_step": gen.meta.get("step"),
    }
    log.info("%d of %d samples decode to crystals (%.1f samples/s)", n_decoded, o.num, stats["samples_per_s"])
    return path, stats


def _uncond():
    from unimat_dist.inference import SampleRequest

    return SampleRequest()


def evaluate_run(o: RunOptions) -> dict[str, Any]:
    """Sample, evaluate and write ``<out>/result.json`` (+ the proxy report); returns the result."""
    from unimat_dist.datasets import resolve_split
    from unimat_dist.evaluation import evaluate_energy
    from unimat_dist.evaluation.proxy import proxy_evaluation
    from unimat_dist.evaluation.structures_io import load_structures

    dataset = _canonical(o.dataset)
    samples, stats = sample_run(o)
    test = resolve_split(dataset, "test")
    train = resolve_split(dataset, "train")
    generated = load_structures(samples)
    kw: dict[str, Any] = dict(workers=o.workers, seed=o.seed, limit_reference=o.limit_reference,
                              limit_train=o.limit_train, train=str(train.path))
    if o.property_emd:
        from unimat_dist.evaluation.property_model import property_function

        kw["property_fn"], kw["property_name"] = property_function(PROTOCOL[dataset])
    t0 = time.perf_counter()
    proxy = proxy_evaluation(generated, str(test.path), dataset, **kw)
    m = proxy.metrics
    proxy_s = time.perf_counter() - t0
    # validity and COV-P over every draw: an undecodable sample is neither valid nor close to a reference
    frac = stats["num_decoded"] / stats["num_sampled"]
    for k in ("struct_validity", "comp_validity", "validity", "cov_precision"):
        if m.get(k) is not None:
            m[f"{k}_of_decoded"] = m[k]
            m[k] = m[k] * frac
    result: dict[str, Any] = {
        "label": o.label or o.out.name,
        "dataset": dataset,
        "checkpoint": o.checkpoint,
        "proxy": m,
        "sampling": stats,
        "training": training_compute(_run_dir_of(o.checkpoint)),
        "test_split": {"path": str(test.path), "official": test.official, "note": test.note},
        "train_split": {"path": str(train.path), "official": train.official, "note": train.note},
        "proxy_seconds": proxy_s,
    }
    if o.energy_samples:
        # the first valid crystals of the draw (the draw is already random): stable/metastable rates
        struct_valid = {g.id for g in proxy.generated if g.struct_valid}
        valid = [r for r in generated if r.id in struct_valid][: o.energy_samples]
        if valid:
            e = evaluate_energy(valid, steps=o.relax_steps, workers=o.workers, train=str(train.path), progress=True)
            result["energy"] = {**e.metrics, "n_relaxed": len(valid)}
        else:
            log.warning("no structurally valid sample: nothing to relax for the stable/metastable rates")
            result["energy"] = {"n_relaxed": 0, "note": "no structurally valid sample"}
    if o.conditional:
        result["conditional"] = conditional_run(o, test.path)
    if o.csp:
        result["csp"] = csp_run(o, test.path)
    (o.out / "result.json").write_text(json.dumps(result, indent=2, default=_json_default))
    log.info("wrote %s", o.out / "result.json")
    return result


def test_compositions(test_csv: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct test compositions (full cell formulas, e.g. Sr1Ti1O3), a seeded draw."""
    import numpy as np

    from unimat_dist.evaluation.structures_io import load_structures

    seen: dict[str, str] = {}
    for rec in load_structures(test_csv):
        if rec.structure is None:
            continue
        c = rec.structure.composition
        seen.setdefault(c.reduced_formula, c.formula.replace(" ", ""))
    keys = sorted(seen)
    rng = np.random.default_rng(seed)
    return [seen[keys[i]] for i in rng.permutation(len(keys))[:n]]


def csp_run(o: RunOptions, test_csv: Path) -> dict[str, Any]:
    """Crystal structure prediction as CDVAE and DiffCSP report it: one sample per test crystal with its
    exact composition, matched to that crystal (StructureMatcher stol 0.5, angle_tol 10, ltol 0.3);
    match rate and RMSE, and the structural validity of the samples."""
    from unimat_dist.evaluation.csp import evaluate_csp
    from unimat_dist.evaluation.fingerprints import analyse_record
    from unimat_dist.evaluation.structures_io import StructureRecord, load_structures
    from unimat_dist.inference import SampleRequest, load_generator

    targets = [r for r in load_structures(test_csv, limit=o.limit_csp) if r.structure is not None]
    gen = load_generator(o.checkpoint, device=None, autoguidance=o.autoguidance)
    o = with_sampling(o, gen)
    reqs = [SampleRequest(composition={str(e): int(n) for e, n in r.structure.composition.get_el_amt_dict().items()},
                          exact_counts=True) for r in targets]
    t0 = time.perf_counter()
    structs = gen.sample_requests(reqs, sampler=o.sampler, steps=o.steps, eta=o.eta, noise_scale=o.noise_scale,
                                  restart=o.restart, seed=o.seed + 2, batch_size=o.batch_size, progress=True)
    sampling_s = time.perf_counter() - t0
    records = [StructureRecord(f"csp_{r.id}", s, None if s is not None else "no atom decoded",
                               metadata={"target_id": r.id}) for r, s in zip(targets, structs)]
    m = evaluate_csp(records, targets, ks=(1,), workers=o.workers, progress=True)
    valid = [analyse_record(rec, fingerprints=False).struct_valid for rec in records]
    return {"n_targets": len(targets), "sampling_seconds": sampling_s,
            "struct_validity": sum(valid) / max(len(valid), 1), "match_rate": m.get("match_rate_at_1"),
            "rmse": m.get("rmse_at_1"), "matcher": m.get("matcher")}


def conditional_run(o: RunOptions, test_csv: Path) -> dict[str, Any]:
    """The paper's conditional protocol: for test compositions, composition-conditioned samples and
    AIRSS-like random structures (same counts), both relaxed with CHGNet; convergence rates, the
    per-composition Delta E_f (model - AIRSS) and the E_f reduction rate."""
    from unimat_dist.evaluation import evaluate_energy, generate_random_structures
    from unimat_dist.evaluation.structures_io import StructureRecord
    from unimat_dist.inference import SampleRequest, load_generator

    comps = test_compositions(test_csv, o.conditional, o.seed)
    gen = load_generator(o.checkpoint, device=None, autoguidance=o.autoguidance)
    o = with_sampling(o, gen)
    reqs = [SampleRequest(composition=c, exact_counts=True) for c in comps for _ in range(o.per_composition)]
    t0 = time.perf_counter()
    structs = gen.sample_requests(reqs, sampler=o.sampler, steps=o.steps, eta=o.eta, noise_scale=o.noise_scale,
                                  restart=o.restart, seed=o.seed + 1, batch_size=o.batch_size, progress=True)
    sampling_s = time.perf_counter() - t0
    records = []
    for i, (req, s) in enumerate(zip(reqs, structs)):
        k = i % o.per_composition
        records.append(StructureRecord(f"{req.composition}__{k}", s, None if s is not None else "no atom decoded", {},
                                       {"target": req.composition, "target_id": req.composition}))
    airss = generate_random_structures(comps, n_per_composition=o.per_composition, seed=o.seed)
    e_airss = evaluate_energy(airss, steps=o.relax_steps, workers=o.workers, novelty=False)
    e_model = evaluate_energy(records, steps=o.relax_steps, workers=o.workers, novelty=False, compare=e_airss.records,
                              compare_label="airss", compare_key="target")
    m = e_model.metrics
    return {
        "n_compositions": len(comps),
        "per_composition": o.per_composition,
        "compositions": comps,
        "relax_steps": o.relax_steps,
        "sampling_seconds": sampling_s,
        "model_convergence_rate": m.get("vs_airss_convergence_rate_a"),
        "airss_convergence_rate": m.get("vs_airss_convergence_rate_b"),
        "n_common_compositions": m.get("vs_airss_n_common_compositions"),
        "ef_reduction_rate": m.get("vs_airss_ef_reduction_rate"),
        "mean_delta_ef": m.get("vs_airss_mean_delta_ef"),
        "median_delta_ef": m.get("vs_airss_median_delta_ef"),
        "model": m,
        "airss": e_airss.metrics,
    }


def _json_default(o):
    from unimat_dist.evaluation.report import json_default

    return json_default(o)


# ---------------------------------------------------------------------------------------- the table
def _cell(v, pct: bool) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.1f}" if pct else f"{v:.3f}"


def table_rows(results: Sequence[dict]) -> list[str]:
    from unimat_dist.evaluation.published import PUBLISHED

    head = ("| data set | model | " + " | ".join(h for _, h, _ in COLUMNS)
            + " | unique % | novel % | stable % | metastable % | params | training | sampling |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    by_ds: dict[str, list[dict]] = {}
    for r in results:
        by_ds.setdefault(r["dataset"], []).append(r)
    for ds in ("perov_5", "carbon_24", "mp_20"):
        if ds not in by_ds:
            continue
        for r in sorted(by_ds[ds], key=lambda r: r["sampling"].get("params", 0)):
            m, e, t, s = r["proxy"], r.get("energy", {}), r.get("training", {}), r["sampling"]
            train = (f"{t.get('steps', '?')} steps, {t.get('device_hours', float('nan')):.2f} h {t.get('device') or ''}"
                     if t else "–")
            lines.append(
                f"| {ds} | {r['label']} | " + " | ".join(_cell(_pct(m.get(k)) if p else m.get(k), p) for k, _, p in COLUMNS)
                + f" | {_cell(_pct(m.get('unique_fraction')), True)} | {_cell(_pct(m.get('novelty')), True)}"
                + f" | {_cell(_pct(e.get('stable_fraction')), True)} | {_cell(_pct(e.get('metastable_fraction')), True)}"
                + f" | {s.get('params', 0) / 1e6:.2f}M | {train} | {_sampler_label(s)} {s['samples_per_s']:.1f}/s"
                + f" ({s['num_sampled']}) |")
        for name, vals in PUBLISHED[PROTOCOL[ds]].items():
            lines.append(f"| {ds} | {name} (published) | "
                         + " | ".join(_cell(vals.get(k), p) for k, _, p in COLUMNS) + " | – | – | – | – | – | – | – |")
    return lines


def _sampler_label(s: dict) -> str:
    """``DDIM-100``, with ``η=1`` when DDIM was stochastic, ``λ=0.3`` when the noise was scaled and ``AG=2``
    with autoguidance."""
    label = f"{str(s.get('sampler', 'ddim')).upper()}-{s.get('sampling_steps', '?')}"
    label += f" η={s['eta']:g}" if s.get("eta") else ""
    label += f" λ={s['noise_scale']:g}" if s.get("noise_scale", 1.0) != 1.0 else ""
    label += f" restart {s['restart'][0]}:{s['restart'][1]}" if s.get("restart") else ""
    return label + (f" AG={s['autoguidance']['weight']:g}" if s.get("autoguidance") else "")


def _pct(v):
    """Our metrics are fractions; the papers print percentages."""
    return None if v is None else 100.0 * v


def plot_ablation(results: Sequence[dict], path: Path) -> Path | None:
    """Validity and COV against parameter count, one line per data set (paper Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_ds: dict[str, list[dict]] = {}
    for r in results:
        by_ds.setdefault(r["dataset"], []).append(r)
    by_ds = {k: v for k, v in by_ds.items() if len({r["sampling"]["params"] for r in v}) >= 2}
    if not by_ds:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ds, rs in by_ds.items():
        rs = sorted(rs, key=lambda r: r["sampling"]["params"])
        x = [r["sampling"]["params"] for r in rs]
        for key, style in (("struct_validity", "o-"), ("comp_validity", "s--")):
            axes[0].plot(x, [_pct(r["proxy"].get(key)) for r in rs], style, label=f"{ds} {key.split('_')[0]}.")
        for key, style in (("cov_recall", "o-"), ("cov_precision", "s--")):
            axes[1].plot(x, [_pct(r["proxy"].get(key)) for r in rs], style, label=f"{ds} {key}")
        for r in rs:
            axes[0].annotate(r["label"], (r["sampling"]["params"], _pct(r["proxy"].get("struct_validity")) or 0),
                             fontsize=7, textcoords="offset points", xytext=(3, 3))
    for ax, title in zip(axes, ("validity (%)", "coverage (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("model size ablation")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_table(result_files: Sequence[str | Path], out: Path, ablation: Path | None = None) -> str:
    results = [json.loads(Path(f).read_text()) for f in result_files]
    if not results:
        raise ValueError("no result.json files given")
    lines = table_rows(results)
    cond = [r for r in results if r.get("conditional")]
    if cond:
        lines += ["", "Conditional generation against the AIRSS-like baseline (CHGNet relaxations; ΔE_f = best model "
                  "E_f − best AIRSS E_f per composition, eV/atom; reduction rate = fraction of compositions where the "
                  "model is lower):", "",
                  "| data set | model | compositions × samples | model converged % | AIRSS converged % | "
                  "common | E_f reduction % | mean ΔE_f | median ΔE_f |", "|---|---|---|---|---|---|---|---|---|"]
        for r in cond:
            c = r["conditional"]
            lines.append(f"| {r['dataset']} | {r['label']} | {c['n_compositions']} × {c['per_composition']} | "
                         f"{_cell(_pct(c['model_convergence_rate']), True)} | {_cell(_pct(c['airss_convergence_rate']), True)} | "
                         f"{c['n_common_compositions']} | {_cell(_pct(c['ef_reduction_rate']), True)} | "
                         f"{_cell(c['mean_delta_ef'], False)} | {_cell(c['median_delta_ef'], False)} |")
    csp = [r for r in results if r.get("csp")]
    if csp:
        lines += ["", "Crystal structure prediction (CDVAE/DiffCSP protocol: one exact-count sample per test crystal, "
                  "StructureMatcher stol 0.5 / angle_tol 10 / ltol 0.3):", "",
                  "| data set | model | test crystals | struct. valid % | match rate % | RMSE |", "|---|---|---|---|---|---|"]
        for r in csp:
            c = r["csp"]
            lines.append(f"| {r['dataset']} | {r['label']} | {c['n_targets']} | {_cell(_pct(c['struct_validity']), True)} | "
                         f"{_cell(_pct(c['match_rate']), True)} | {_cell(c['rmse'], False)} |")
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if ablation is not None:
        if plot_ablation(results, ablation) is None:
            log.warning("no data set has runs of two or more model sizes: no ablation plot")
    return text


__all__ = ["RunOptions", "conditional_run", "csp_run", "evaluate_run", "plot_ablation", "sample_run", "table_rows", "training_compute", "write_table"]
