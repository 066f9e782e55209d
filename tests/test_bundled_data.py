"""The bundled CSVs are the files their provenance record describes (md5 of the uncompressed bytes, row counts)."""
import gzip
import hashlib

import pytest

from unimat_dist.datasets import count_rows, get_info
from unimat_dist.datasets.registry import bundled_path

FILES = [(n, s) for n in ("perov_5", "carbon_24", "mp_20_subset") for s in get_info(n).bundled_splits]


@pytest.mark.parametrize("name,split", FILES, ids=[f"{n}/{s}" for n, s in FILES])
def test_bundled_file_integrity(name, split):
    info = get_info(name)
    path = bundled_path(name, split)
    with gzip.open(path, "rb") as fh:
        assert hashlib.md5(fh.read()).hexdigest() == info.md5[split]
    assert count_rows(path) == info.official_sizes[split]
