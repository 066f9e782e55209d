"""``unimat data``: bundled/official benchmark data sets.

    unimat data list
    unimat data download mp_20 [--splits train val test] [--base-url URL] [--force]
    unimat data verify mp_20
    unimat data synth-gnome 2200000 /data/gnome_synth [--seed 0] [--stats-from stable_materials_summary.csv]
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="list, download and verify benchmark data sets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    ls = dsub.add_parser("list", help="known data sets, where their splits come from, and the released checkpoints")
    ls.set_defaults(func=_list)

    dl = dsub.add_parser("download", help="fetch the full official CSV splits (needs internet)")
    dl.add_argument("name", help="mp_20, perov_5, carbon_24 or mpts_52")
    dl.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    dl.add_argument("--dest", default=None, help="root folder (default $UNIMAT_CACHE/data or ~/.cache/unimat/data)")
    dl.add_argument("--base-url", default=None, help="mirror serving {split}.csv instead of the public source")
    dl.add_argument("--timeout", type=float, default=60.0, help="seconds per connection attempt")
    dl.add_argument("--force", action="store_true", help="download again even if present")
    dl.set_defaults(func=_download)

    vf = dsub.add_parser("verify", help="re-hash downloaded files against their recorded sha256")
    vf.add_argument("name")
    vf.add_argument("--dest", default=None)
    vf.set_defaults(func=_verify)

    sg = dsub.add_parser("synth-gnome", help="write a synthetic GNoME-format release of N structures (scale tests)",
                         description="A GNoME-layout release (summary CSV + by_id/by_composition/by_reduced_formula "
                                     "zips) drawn from and perturbed around the bundled real crystals, held to a "
                                     "target distribution of elements per structure and atoms per cell "
                                     "(data_pipeline/synth_gnome.py). Streaming, fixed seed, byte-reproducible.")
    sg.add_argument("n", type=int, help="number of structures (summary rows)")
    sg.add_argument("out", help="output folder (new or empty, or an earlier synthetic release with --overwrite)")
    sg.add_argument("--seed", type=int, default=0)
    sg.add_argument("--stats-from", default=None,
                    help="a real stable_materials_summary.csv: follow its element-count and atoms-per-cell histograms")
    sg.add_argument("--overwrite", action="store_true", help="replace an earlier synthetic release in OUT")
    sg.set_defaults(func=_synth_gnome)


def _list(args) -> int:
    from unimat_dist.datasets.registry import DATASETS, SPLITS, resolve_split

    for name, info in DATASETS.items():
        print(f"{name}: {info.description}")
        for split in SPLITS:
            try:
                r = resolve_split(name, split, allow_substitute=False)
                print(f"  {split:5s} {r.note}")
            except FileNotFoundError:
                print(f"  {split:5s} not available (unimat data download {name})")
    from unimat_dist.bundled import released_checkpoints

    print("released checkpoints (unimat sample --checkpoint NAME):")
    for name, path in released_checkpoints().items():
        print(f"  {name}: {path}")
    return 0


def _download(args) -> int:
    from pathlib import Path

    from unimat_dist.datasets.download import DownloadError, download

    try:
        ledger = download(
            args.name, splits=args.splits, dest_root=Path(args.dest) if args.dest else None,
            base_url=args.base_url, timeout=args.timeout, force=args.force,
        )
    except DownloadError as exc:
        print(f"unimat data download: error: {exc}")
        return 1
    for split, rec in ledger.items():
        print(f"{args.name}/{split}: {rec['rows']} rows sha256={rec['sha256']} md5_verified={rec['md5_verified']}")
    return 0


def _verify(args) -> int:
    from pathlib import Path

    from unimat_dist.datasets.download import verify

    result = verify(args.name, Path(args.dest) if args.dest else None)
    for split, ok in result.items():
        print(f"{args.name}/{split}: {'ok' if ok else 'MISMATCH'}")
    return 0 if all(result.values()) else 1


def _synth_gnome(args) -> int:
    from data_pipeline.synth_gnome import stats_from_summary, write_synthetic_release

    if args.n < 1:
        print("unimat data synth-gnome: error: N must be >= 1")
        return 2
    stats = stats_from_summary(args.stats_from) if args.stats_from else None
    try:
        write_synthetic_release(args.out, args.n, seed=args.seed, stats=stats, overwrite=args.overwrite)
    except FileExistsError as exc:
        print(f"unimat data synth-gnome: error: {exc}")
        return 1
    return 0
