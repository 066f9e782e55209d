"""The offline ML interatomic potential: CHGNet (``chgnet`` 0.4.x, pretrained model 0.3.0, weights
inside the wheel; matgl/MACE/MatterSim download weights at run time and fail offline).

CHGNet is trained on MPtrj's energies, which already carry the MP2020 anion and GGA/GGA+U corrections:
its energies are on the same scale as Materials Project's formation energies and are used as they are
(measured on the 1,112 bundled MP-20 rows: formation-energy MAE 0.050 eV/atom vs DFT; 0.26 eV/atom if the
corrections are applied a second time).

``relax`` moves positions and cell (ASE ``FrechetCellFilter`` + FIRE) for at most ``steps`` steps and
reports whether the largest force/stress component fell below ``fmax``.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)

MODEL_NAME = "0.3.0"
DEFAULT_STEPS = 200
DEFAULT_FMAX = 0.1  # eV/A; ASE's convergence criterion on forces (and stress via the cell filter)
# A cell denser than this has hundreds of neighbours per atom inside CHGNet's 5 A cut-off and its graph can
# take tens of GB (seen: an element prototype collapsing during a cell relaxation); such a relaxation is
# stopped and reported as diverged. Real crystals have > 5 A^3/atom.
MIN_VOLUME_PER_ATOM = 2.0  # A^3
MAX_VOLUME_GROWTH = 20.0  # final/initial volume beyond which the cell "blew up"


class _Diverged(RuntimeError):
    pass


@contextlib.contextmanager
def torch_threads():
    """Run CHGNet with ``UNIMAT_EVAL_TORCH_THREADS`` intra-op threads (default 1). The evaluator
    parallelises over structures with processes; CHGNet's small graphs gain little from more threads and,
    on a busy machine, OpenMP's spinning threads made a relaxation 2.7x (up to 10x) slower than one thread."""
    import os

    import torch

    wanted = int(os.environ.get("UNIMAT_EVAL_TORCH_THREADS", "1"))
    before = torch.get_num_threads()
    if wanted > 0 and wanted != before:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@lru_cache(maxsize=2)
def load_model(model_name: str = MODEL_NAME):
    """The pretrained CHGNet, loaded once per process (prints silenced; runs on CPU unless CUDA)."""
    from chgnet.model import CHGNet

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CHGNet.load(model_name=model_name, verbose=False)


def static_energies(structures: Sequence, batch_size: int = 16, model_name: str = MODEL_NAME) -> list[float | None]:
    """CHGNet energy per atom (eV/atom) of each structure at its given geometry.

    Structures CHGNet cannot build a graph for (e.g. isolated atoms) get None.
    """
    model = load_model(model_name)
    out: list[float | None] = []
    with torch_threads():
        _static_batches(model, structures, batch_size, out)
    return out


def _static_batches(model, structures, batch_size: int, out: list) -> None:
    for start in range(0, len(structures), batch_size):
        chunk = list(structures[start : start + batch_size])
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                preds = model.predict_structure(chunk, task="e", batch_size=batch_size)
            preds = preds if isinstance(preds, list) else [preds]
            out.extend(float(p["e"]) for p in preds)
        except Exception:  # one bad structure fails the batch: redo one by one
            for s in chunk:
                try:
                    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        out.append(float(model.predict_structure(s, task="e")["e"]))
                except Exception:
                    out.append(None)


@dataclass
class RelaxResult:
    """Outcome of one bounded relaxation. Energies are CHGNet's, per atom (eV/atom)."""

    converged: bool
    n_steps: int
    e_initial_per_atom: float | None
    e_final_per_atom: float | None
    max_force_final: float | None  # eV/A, largest atomic force at the end
    rmsd: float | None  # A, RMS displacement from the unrelaxed positions (minimum image, final cell)
    volume_ratio: float | None  # final / initial volume
    final_structure: object | None
    error: str | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("final_structure")
        return d


def displacement_rmsd(initial, final) -> float:
    """RMS atomic displacement (A) between two structures with the same site order, each difference taken
    as the nearest periodic image in fractional coordinates and measured with the final cell."""
    df = np.asarray(final.frac_coords) - np.asarray(initial.frac_coords)
    df -= np.round(df)
    cart = df @ np.asarray(final.lattice.matrix)
    return float(np.sqrt((cart**2).sum(axis=1).mean()))


def relax(structure, steps: int = DEFAULT_STEPS, fmax: float = DEFAULT_FMAX, relax_cell: bool = True,
          model_name: str = MODEL_NAME) -> RelaxResult:
    """Relax positions (+ cell) with CHGNet and FIRE for at most ``steps`` steps."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE
    from chgnet.model.dynamics import CHGNetCalculator
    from pymatgen.io.ase import AseAtomsAdaptor

    model = load_model(model_name)
    n = len(structure)
    v_min, v_max = MIN_VOLUME_PER_ATOM * n, MAX_VOLUME_GROWTH * structure.volume
    if structure.volume < v_min:
        return RelaxResult(False, 0, None, None, None, None, None, None,
                           f"cell too dense to relax ({structure.volume / n:.2f} A^3/atom < {MIN_VOLUME_PER_ATOM})")
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch_threads():
            warnings.simplefilter("ignore")
            atoms = AseAtomsAdaptor.get_atoms(structure)
            atoms.calc = CHGNetCalculator(model=model, on_isolated_atoms="ignore")
            e0 = float(atoms.get_potential_energy()) / n
            target = FrechetCellFilter(atoms) if relax_cell else atoms
            opt = FIRE(target, logfile=None)

            def guard():  # stop before CHGNet builds the graph of a collapsed or exploded cell
                v = atoms.get_volume()
                if not (v_min <= v <= v_max):
                    raise _Diverged(f"cell volume left [{v_min:.1f}, {v_max:.1f}] A^3 at step {opt.nsteps}")

            opt.attach(guard, interval=1)
            converged = bool(opt.run(fmax=fmax, steps=steps)) if steps > 0 else False
            e1 = float(atoms.get_potential_energy()) / n
            fmax_final = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
            final = AseAtomsAdaptor.get_structure(atoms)
        v0, v1 = structure.volume, final.volume
        finite = all(math.isfinite(x) for x in (e0, e1, v1))
        if not finite or v1 > MAX_VOLUME_GROWTH * v0:  # a cell that blew up is not a relaxed crystal
            return RelaxResult(False, int(opt.nsteps), e0 if math.isfinite(e0) else None, None, None, None, None,
                               None, "relaxation diverged")
        return RelaxResult(converged, int(opt.nsteps), e0, e1, fmax_final, displacement_rmsd(structure, final),
                           v1 / v0, final)
    except _Diverged as exc:
        return RelaxResult(False, int(opt.nsteps), e0, None, None, None, None, None, f"relaxation diverged: {exc}")
    except MemoryError:
        return RelaxResult(False, 0, None, None, None, None, None, None, "out of memory (worker memory limit)")
    except Exception as exc:  # CHGNet/ASE raise many types on pathological inputs
        return RelaxResult(False, 0, None, None, None, None, None, None, f"{type(exc).__name__}: {exc}")


def relax_task(args: tuple) -> RelaxResult:
    """``relax(*args)`` for process pools: (structure, steps, fmax, relax_cell)."""
    structure, steps, fmax, relax_cell = args
    return relax(structure, steps=steps, fmax=fmax, relax_cell=relax_cell)
