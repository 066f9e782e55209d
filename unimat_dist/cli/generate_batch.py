"""``unimat generate-batch``: a resumable Ray Data job generating crystals for a list of requests.

    unimat generate-batch --config cluster/jobs/generate_tiny_cpu.yaml
    unimat generate-batch --config cluster/jobs/generate_mp20_gpu.yaml output.uri=s3://bucket/gen run.actors=8
    ray job submit --working-dir . -- python -m unimat_dist generate-batch --config cluster/jobs/generate_mp20_gpu.yaml

Trailing ``section.key=value`` items override the YAML. Rerunning the same command resumes an
interrupted job (committed requests are not redone). Writes shards, per-unit commit records and
``manifest.json`` (written last) under ``output.uri``; logs a summary with validity rates.
"""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("generate-batch", help="generate crystals for a list of requests (Ray Data job)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (cluster/jobs/generate_*.yaml)")
    p.add_argument("--checkpoint", help="override model.checkpoint")
    p.add_argument("--output", help="override output.uri")
    p.add_argument("--executor", choices=["ray", "local"], help="override run.executor")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the files of an earlier generate-batch job at --output first (only those)")
    p.add_argument("--allow-nonempty-output", action="store_true",
                   help="write into a folder holding other files (they are never modified)")
    p.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from unimat_dist.batch_generation import load_batch_config, run_generate_batch

    flags = []
    for key, value in (("model.checkpoint", args.checkpoint), ("output.uri", args.output),
                       ("run.executor", args.executor)):
        if value is not None:
            flags.append(f"{key}={value}")
    if args.overwrite:
        flags.append("output.overwrite=true")
    if args.allow_nonempty_output:
        flags.append("output.allow_nonempty=true")
    run_generate_batch(load_batch_config(args.config, flags + list(args.overrides)))
    return 0
