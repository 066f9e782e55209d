"""``unimat data``: bundled/official benchmark data sets.

    unimat data list
    unimat data download mp_20 [--splits train val test] [--base-url URL] [--force]
    unimat data verify mp_20
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
