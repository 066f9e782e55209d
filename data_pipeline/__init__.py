"""Ingestion: raw structure collections -> UniMat WebDataset shards + manifest (``unimat ingest``).

Module map, in the order a record flows through:

    config.py          IngestConfig (YAML: cluster/jobs/ingest_*.yaml)
    readers.py         source formats -> deterministic WorkUnits -> streams of RawRecord
    csv_index.py       row offsets of multi-line CSVs (units read disjoint byte ranges)
    zip_index.py       compact random access into huge zips (GNoME by_id.zip)
    fast_cif.py        P1 CIF reader (pymatgen-identical, ~15x faster); structure_parse.py falls back
    validate.py        physical/representability checks -> quarantine reasons (quarantine.py)
    splits.py          composition-level train/val/test assignment
    unit_worker.py     one unit end to end, with atomic commits (no Ray)
    job.py             plan, resume, run units, manifest, summary
    ray_executor.py    the Ray Data glue
    gnome_format.py    writes the GNoME layout (fixtures, synthetic benchmark data)

Docs: docs/data_pipeline.md. The training side lives in ``unimat_dist.shards``.
"""
