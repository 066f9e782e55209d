"""`unimat results`: sample a trained model, evaluate it, tabulate it beside the paper, plot the size ablation.

Two really trained (briefly) tiny models of different widths on the bundled Perov-5 data; real sampling,
real CDVAE metrics against the real test split (subsampled), real CHGNet relaxations of two samples.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ase.io import read

from unimat_dist.evaluation.published import PUBLISHED

ROOT = Path(__file__).resolve().parents[1]
UNIMAT = str(Path(sys.executable).parent / "unimat")
pytestmark = pytest.mark.slow  # the module fixture trains and evaluates two models
CONFIG = ROOT / "cluster" / "jobs" / "results" / "perov5_tiny_cpu.yaml"


def _unimat(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    p = subprocess.run([UNIMAT, "--log-level", "WARNING", *args],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("results")
    out = {}
    for label, dim in (("w16", 16), ("w32", 32)):
        run = base / f"train_{label}"
        _unimat("train", "--config", str(CONFIG), f"out_dir={run}", "train.steps=30", "train.global_batch_size=16",
                "train.log_every=10", "train.val_every=0", "train.ckpt_every=0", "train.progress=false",
                f"model.overrides={{dim: {dim}, attn_head_dim: 8}}")
        res = base / label
        _unimat("results", "evaluate", "--checkpoint", str(run / "checkpoints"), "--dataset", "perov_5",
                "--num", "32", "--steps", "10", "--batch-size", "20", "--workers", "1", "--label", label,
                "--limit-reference", "40", "--limit-train", "40", "--out", str(res),
                *(["--energy-samples", "2", "--relax-steps", "5", "--conditional", "2", "--per-composition", "2"]
                  if label == "w32" else []))
        out[label] = (run, res)
    return base, out


def test_result_records_metrics_over_all_draws_and_training_compute(runs):
    _, out = runs
    run, res = out["w32"]
    r = json.loads((res / "result.json").read_text())
    s, m, t = r["sampling"], r["proxy"], r["training"]
    assert s["num_sampled"] == 32 and 0 <= s["num_decoded"] <= 32 and s["samples_per_s"] > 0
    frames = read(res / "samples.extxyz", index=":") if s["num_decoded"] else []
    assert len(frames) == s["num_decoded"] == m["n_generated"]
    # undecodable draws count as invalid: validity is over all 32 draws
    frac = s["num_decoded"] / 32
    for k in ("struct_validity", "comp_validity", "cov_precision"):
        assert m[k] == pytest.approx(m[f"{k}_of_decoded"] * frac)
        assert 0.0 <= m[k] <= 1.0
    assert 0.0 <= m["cov_recall"] <= 1.0 and m["n_reference"] == 40
    assert t["steps"] == 30 and t["global_batch_size"] == 16 and t["device"] == "cpu"
    assert 0 < t["device_hours"] < 0.1
    assert s["params"] > 0 and s["checkpoint_step"] == 30
    assert r["train_split"]["official"] is False and "stands in" in r["train_split"]["note"]  # bundled val trains
    assert r["energy"]["n_relaxed"] <= 2
    c = r["conditional"]  # conditional protocol: 2 test compositions x 2, model vs AIRSS, same counts
    assert c["n_compositions"] == 2 and c["per_composition"] == 2 and len(set(c["compositions"])) == 2
    assert c["model"]["n_structures"] == c["airss"]["n_structures"] == 4
    for k in ("model_convergence_rate", "airss_convergence_rate"):
        assert c[k] is None or 0.0 <= c[k] <= 1.0


def test_table_sits_beside_the_published_numbers_and_ablation_is_plotted(runs):
    base, out = runs
    table, png = base / "table.md", base / "ablation.png"
    _unimat("results", "table", *(str(res / "result.json") for _, res in out.values()), "--out", str(table),
            "--ablation", str(png))
    text = table.read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| perov_5 |")]
    assert [ln.split("|")[2].strip() for ln in rows[:2]] == ["w16", "w32"]  # ours, by parameter count
    unimat = PUBLISHED["perovskite"]["UniMat (Yang et al. 2023)"]
    pub = next(ln for ln in rows if "UniMat" in ln)
    assert f"{unimat['cov_recall']:.1f}" in pub and f"{unimat['emd_density']:.3f}" in pub
    r32 = json.loads((out["w32"][1] / "result.json").read_text())
    assert f"{100 * r32['proxy']['struct_validity']:.1f}" in rows[1]
    assert png.stat().st_size > 10_000
    assert "| perov_5 | w32 | 2 × 2 |" in text  # the conditional-protocol table


def test_unknown_dataset_is_refused_with_a_clear_message(runs):
    _, out = runs
    run, _ = out["w16"]
    p = subprocess.run([UNIMAT, "results", "evaluate", "--checkpoint",
                        str(run / "checkpoints"), "--dataset", "qm9", "--num", "4", "--out", str(run / "x")],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode != 0 and "qm9" in (p.stderr + p.stdout)
