"""``unimat ingest``: raw structures -> UniMat WebDataset shards + manifest (file://, s3://, gs://).

    unimat ingest --config cluster/jobs/ingest_mp20.yaml                       # local Ray cluster
    unimat ingest --config cluster/jobs/ingest_gnome.yaml output.uri=gs://b/gnome run.num_cpus=8
    ray job submit --working-dir . -- python -m unimat_dist ingest --config cluster/jobs/ingest_gnome.yaml
    unimat ingest --source perov_5 --format cdvae-csv --output file:///data/perov5
    unimat ingest --source gs://b/gnome_data --format gnome --output s3://b/gnome --max-atoms-per-element 24

Flags override the YAML; trailing ``section.key=value`` items override anything. Re-running the same
command resumes an interrupted job. Exit code 0 on success (quarantined records do not fail a job).
"""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("ingest", help="turn raw structures into UniMat WebDataset shards",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (cluster/jobs/ingest_*.yaml)")
    p.add_argument("--source", help="path/URI of the source, or a registry data set name (perov_5, ...)")
    p.add_argument("--format", choices=["cdvae-csv", "gnome", "structure-dir"], help="source format")
    p.add_argument("--output", help="dataset URI: file:///..., s3://bucket/prefix, gs://bucket/prefix")
    p.add_argument("--max-atoms-per-element", type=int, help="L of the UniMat spec")
    p.add_argument("--elements", nargs="+", help="reduced chemical system (e.g. C for Carbon-24)")
    p.add_argument("--coords", choices=["fractional", "cartesian"])
    p.add_argument("--split-mode", choices=["auto", "composition", "source"])
    p.add_argument("--records-per-unit", type=int, help="input records per work unit / task")
    p.add_argument("--max-shard-mb", type=float, help="shard size limit in MB")
    p.add_argument("--max-shard-samples", type=int, help="shard size limit in samples")
    p.add_argument("--limit", type=int, help="read at most N records per source file (smoke runs)")
    p.add_argument("--cif-parser", choices=["fast", "pymatgen"])
    p.add_argument("--executor", choices=["ray", "local"])
    p.add_argument("--num-cpus", type=int, help="CPUs of a new local Ray cluster")
    p.add_argument("--ray-address", help="connect to this Ray cluster (default: RAY_ADDRESS or local)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the files of an earlier ingest job at --output first (only those)")
    p.add_argument("--allow-nonempty-output", action="store_true",
                   help="write into a folder holding other files (they are never modified)")
    p.add_argument("--follow-links", action="store_true",
                   help="structure-dir: follow symlinks that leave the source folder (default: skip, counted)")
    p.add_argument("--max-record-mb", type=float, help="cap on one file/member/CSV row, decompressed (MB)")
    p.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    p.set_defaults(func=main)


def build_config(args: argparse.Namespace):
    """The typed config from --config, flags and overrides (flags and overrides win)."""
    import os

    from unimat_dist.config import load_config

    from data_pipeline.config import IngestConfig

    flags: list[str] = []

    def put(key: str, value) -> None:
        if value is not None:
            flags.append(f"{key}={value}")

    if args.source is not None:
        from unimat_dist.datasets import DATASETS

        if args.source in DATASETS and not os.path.exists(args.source):
            put("source.dataset", args.source)
            put("source.uri", "null")
        else:
            put("source.uri", args.source)
    put("source.format", args.format)
    put("source.limit", args.limit)
    put("output.uri", args.output)
    put("spec.max_atoms_per_element", args.max_atoms_per_element)
    if args.elements:
        put("spec.elements", "[" + ",".join(args.elements) + "]")
    put("spec.coords", args.coords)
    put("split.mode", args.split_mode)
    put("output.records_per_unit", args.records_per_unit)
    if args.max_shard_mb is not None:
        put("output.max_shard_bytes", int(args.max_shard_mb * 1024 * 1024))
    put("output.max_shard_samples", args.max_shard_samples)
    put("validate.cif_parser", args.cif_parser)
    put("run.executor", args.executor)
    put("run.num_cpus", args.num_cpus)
    put("run.address", args.ray_address)
    if args.overwrite:
        put("output.overwrite", "true")
    if args.allow_nonempty_output:
        put("output.allow_nonempty", "true")
    if args.follow_links:
        put("source.follow_links", "true")
    if args.max_record_mb is not None:
        put("validate.max_record_bytes", int(args.max_record_mb * 1024 * 1024))
    return load_config(IngestConfig, args.config, flags + list(args.overrides or []))


def main(args: argparse.Namespace) -> int:
    from unimat_dist.config import config_yaml

    from data_pipeline.job import run_ingest

    cfg = build_config(args)
    import logging

    logging.getLogger("unimat.ingest").info("config:\n%s", config_yaml(cfg).rstrip())
    run_ingest(cfg)
    return 0
