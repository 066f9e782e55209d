"""Sample quality measured while a model trains: is it learning crystals, not only lowering a loss?

Every ``train.quality_every`` steps the trainer hands its EMA model to ``QualityMonitor.evaluate``, which
draws ``quality_samples`` unconditional crystals (DDIM, ``quality_steps`` steps, with the release's η,
noise scale and restart pass when ``quality_eta`` / ``quality_noise_scale`` / ``quality_restart`` say so; a
fixed seed so that successive points differ only by the weights; no autoguidance: the guide is an earlier
checkpoint of a finished run) and compares them with a fixed subset of the validation
split (``quality_reference`` crystals, fingerprinted once):

    quality/struct_valid, quality/comp_valid  CDVAE validity (fractions of all draws)
    quality/cov_recall, quality/cov_precision CDVAE coverage with the data set's cut-offs, against the
                                              validation subset (a small-sample estimate: recall is capped
                                              by how many references a few dozen samples can cover)
    quality/emd_atoms, quality/emd_density    1-D Wasserstein distances of atoms per cell and density (g/cm3)
    quality/min_dist                          median shortest interatomic distance of the samples (A), next
                                              to quality/min_dist_ref of the references
    quality/seconds                           what the check cost

The numbers go to ``metrics.jsonl`` and ``plot_metrics`` draws them beside the loss, so a run that stops
learning crystals shows it while it runs. The trainer runs this on rank 0 only (Ray workers included).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def shortest_distance(structure) -> float:
    """Shortest interatomic distance (A) under periodic boundaries; the shortest lattice vector for one atom."""
    if len(structure) == 1:
        return float(min(structure.lattice.abc))
    d = structure.distance_matrix
    np.fill_diagonal(d, np.inf)
    return float(d.min())


class QualityMonitor:
    def __init__(self, val_data, spec, normalizer, scaler, dataset: str, *, samples: int = 64, steps: int = 50,
                 reference: int = 200, seed: int = 0, eta: float = 0.0, noise_scale: float = 1.0,
                 restart: tuple[int, int] | None = None) -> None:
        from unimat_dist.evaluation.coverage import COV_CUTOFFS, protocol_name
        from unimat_dist.evaluation.fingerprints import analyse_record
        from unimat_dist.evaluation.structures_io import StructureRecord
        from unimat_dist.representation import decode
        from unimat_dist.representation.codec import UniMatTensor

        self.spec, self.normalizer, self.scaler = spec, normalizer, scaler
        self.samples, self.steps, self.seed = int(samples), int(steps), int(seed)
        self.eta, self.noise_scale = float(eta), float(noise_scale)  # DDIM η and sampling temperature
        self.restart = tuple(restart) if restart else None  # (t, steps) of a second pass, as a release samples
        try:
            self.cutoffs = COV_CUTOFFS[protocol_name(dataset)]
        except ValueError:
            self.cutoffs = COV_CUTOFFS["mp20"]  # any other data set: the loosest published cut-offs
        t0 = time.perf_counter()
        n = min(int(reference), len(val_data))
        pick = np.random.default_rng(seed).choice(len(val_data), size=n, replace=False) if n else []
        self.reference = []
        for i in pick:
            s = decode(UniMatTensor(val_data.positions[i], val_data.mask[i], val_data.lattice[i]), spec)
            f = analyse_record(StructureRecord(str(val_data.ids[i]), s), niggli=True)
            if f.valid:
                self.reference.append((f, shortest_distance(s)))
        log.info("quality monitor: %d reference crystals fingerprinted in %.1fs", len(self.reference),
                 time.perf_counter() - t0)

    def evaluate(self, diffusion) -> dict[str, Any]:
        """Sample from ``diffusion`` (left in eval mode as found) and score the samples."""
        from unimat_dist.evaluation.coverage import compute_cov
        from unimat_dist.evaluation.emd import emd
        from unimat_dist.evaluation.fingerprints import analyse_record
        from unimat_dist.evaluation.structures_io import StructureRecord
        from unimat_dist.inference.generator import SampleRequest, StructureGenerator

        t0 = time.perf_counter()
        was_training = diffusion.training
        g = StructureGenerator(diffusion, self.spec, self.normalizer, self.scaler)
        try:
            structures = g.sample_requests([SampleRequest()] * self.samples, sampler="ddim", steps=self.steps,
                                           eta=self.eta, noise_scale=self.noise_scale, restart=self.restart,
                                           seed=self.seed, batch_size=self.samples)
        finally:
            diffusion.train(was_training)
        feats, dists = [], []
        for i, s in enumerate(structures):
            f = analyse_record(StructureRecord(f"q{i}", s))
            feats.append(f)
            if s is not None and f.constructed:
                dists.append(shortest_distance(s))
        ref = [f for f, _ in self.reference]
        out: dict[str, Any] = {
            "quality/struct_valid": float(np.mean([f.struct_valid for f in feats])),
            "quality/comp_valid": float(np.mean([f.comp_valid for f in feats])),
            "quality/min_dist": float(np.median(dists)) if dists else float("nan"),
            "quality/min_dist_ref": float(np.median([d for _, d in self.reference])) if ref else float("nan"),
        }
        if ref:
            valid = [f for f in feats if f.valid]
            cov = compute_cov([f.struct_fp for f in valid], [f.comp_fp for f in valid], [f.struct_fp for f in ref],
                              [f.comp_fp for f in ref], self.cutoffs["struct"], self.cutoffs["comp"],
                              num_gen=len(feats))
            out["quality/cov_recall"], out["quality/cov_precision"] = cov["cov_recall"], cov["cov_precision"]
            built = [f for f in feats if f.constructed and f.density is not None]
            e_atoms = emd([f.n_sites for f in built], [f.n_sites for f in ref]) if built else None
            e_rho = emd([f.density for f in built], [f.density for f in ref]) if built else None
            out["quality/emd_atoms"] = float("nan") if e_atoms is None else float(e_atoms)
            out["quality/emd_density"] = float("nan") if e_rho is None else float(e_rho)
        out["quality/seconds"] = time.perf_counter() - t0
        return out


def build_monitor(cfg, val_data, spec, normalizer, scaler) -> QualityMonitor | None:
    """The run's monitor, or None when ``train.quality_every`` is 0 or there is no validation data."""
    c = cfg.train
    if not c.quality_every or val_data is None or len(val_data) == 0:
        return None
    return QualityMonitor(val_data, spec, normalizer, scaler, cfg.data.dataset, samples=c.quality_samples,
                          steps=c.quality_steps, reference=c.quality_reference, seed=cfg.seed,
                          eta=c.quality_eta, noise_scale=c.quality_noise_scale, restart=c.quality_restart)


__all__ = ["QualityMonitor", "build_monitor"]
