"""Crystal-structure-prediction metrics (match rate / RMSE at k samples) on real MP-20 test structures."""
import json

import pytest

from unimat_dist.evaluation.csp import evaluate_csp
from unimat_dist.evaluation.structures_io import StructureRecord, load_structures, write_cifs


@pytest.fixture(scope="module")
def targets(bundled):
    return load_structures(bundled["mp_20_subset"]["test"], limit=8)


def _samples(targets):
    """Target i: sample 0 is a slightly perturbed copy for even i and a wrong structure for odd i;
    sample 1 is always the copy."""
    out = []
    for i, t in enumerate(targets):
        copy = t.structure.copy()
        copy.perturb(0.05, seed=i)
        copy.scale_lattice(copy.volume * 1.03)
        wrong = t.structure.copy()
        wrong.scale_lattice(wrong.volume * 2.5)  # StructureMatcher rescales volumes ...
        wrong.apply_strain([0.6, -0.3, 0.0])  # ... but not a 60%/-30% shear of the cell shape
        first = copy if i % 2 == 0 else wrong
        out.append(StructureRecord(f"{t.id}__0", first, metadata={"target_id": t.id}))
        out.append(StructureRecord(f"{t.id}__1", copy, metadata={"target_id": t.id}))
    return out


def test_match_rate_and_rmse(targets):
    samples = _samples(targets)
    m = evaluate_csp(samples, targets, ks=(1, 2), workers=1, progress=False)
    assert m["n_reference"] == 8 and m["n_targets_with_samples"] == 8
    assert m["match_rate_at_1"] == pytest.approx(4 / 8)  # only the even targets' first samples match
    assert m["match_rate_at_2"] == 1.0
    assert 0 < m["rmse_at_1"] < 0.1 and 0 < m["rmse_at_2"] < 0.1
    # a target without samples counts as unmatched
    m = evaluate_csp(samples[:4], targets, ks=(1, 2), workers=1, progress=False)
    assert m["match_rate_at_2"] == pytest.approx(2 / 8)


def test_cli_csp_on_cif_folder(targets, tmp_path):
    from unimat_dist.cli import main

    samples = _samples(targets)
    write_cifs([(s.id, s.structure) for s in samples], tmp_path / "csp")
    ref = tmp_path / "ref"
    write_cifs([(t.id, t.structure) for t in targets], ref)
    out = tmp_path / "csp.json"
    assert main(["evaluate", "csp", "--generated", str(tmp_path / "csp"), "--reference", str(ref), "--k", "1", "2",
                 "--workers", "1", "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["match_rate_at_1"] == pytest.approx(0.5) and m["match_rate_at_2"] == 1.0
